"""tasks/copy.py copy_units: the copy's tasks. Small collections share tasks once there are many of them."""
from __future__ import annotations

from mongo_migrate.blocks.spec import parse_spec
from mongo_migrate.tasks.copy import SMALL_UNITS_PER_WORKER, CopyRange, copy_units
from mongo_migrate.tasks.namespaces import CollectionPlan

SPEC = parse_spec({"source": {"uri": "mongodb://127.0.0.1:1"}, "destination": {"uri": "mongodb://127.0.0.1:2"},
                   "copy_options": {"parallel_workers": 2, "range_docs": 10_000}})


def whole(name: str, docs: int) -> CopyRange:
    return CopyRange(plan=CollectionPlan(source_db="db", source_name=name, target_db="db", target_name=name,
                                         kind="collection"), estimated_docs=docs)


def test_few_collections_keep_a_task_each_biggest_first():
    ranges = [whole(f"c{i}", 100 * i) for i in range(SMALL_UNITS_PER_WORKER * 2)]
    assert copy_units(ranges, SPEC) == [[r] for r in sorted(ranges, key=lambda r: -r.estimated_docs)]


def test_many_small_collections_share_tasks_of_about_equal_size_and_big_ones_stay_alone():
    big = [whole("big", 9_000)] + [CopyRange(plan=whole("cut", 0).plan, index=i, total=3, estimated_docs=5_000,
                                             lower_ejson=None if i == 0 else f'{{"_id": {i}}}',
                                             upper_ejson=None if i == 2 else f'{{"_id": {i + 1}}}')
                                   for i in range(3)]
    small = [whole(f"s{i}", 10 + i % 7) for i in range(200)]  # at most range_docs / 10 each
    units = copy_units(big + small, SPEC)
    shared = [u for u in units if len(u) > 1]
    assert [u for u in units if len(u) == 1] == [[big[0]], *[[r] for r in big[1:]]]  # biggest first
    assert len(shared) == SMALL_UNITS_PER_WORKER * 2
    assert sorted(r.plan.source_name for u in shared for r in u) == sorted(r.plan.source_name for r in small)
    sizes = [sum(r.estimated_docs for r in u) for u in shared]
    assert max(sizes) - min(sizes) <= 16, sizes
