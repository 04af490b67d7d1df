"""The migration's state on the destination has a versioned layout: older state is upgraded as a run
starts, newer state stops the run in one line before anything is written. A run's process that has
stopped saying it is alive is told apart from one at work (the killed process: tests/test_faults.py)."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mongo_migrate.blocks.errors import BadInput
from mongo_migrate.blocks.spec import META_DATABASE
from mongo_migrate.tasks.namespaces import plan_namespaces
from mongo_migrate.tasks.state import (RUNS, SCHEMA, STATE_VERSION, StateTooNew, alive_every_s, process_silent_s,
                                        start_run)


def test_state_of_an_older_version_is_upgraded_and_of_a_newer_one_refused(src_client, dst_client, spec_for):
    src_client.shop.orders.insert_one({"_id": 1})
    spec = spec_for(objects=[{"database": "shop"}])
    plan = plan_namespaces(spec)
    meta = dst_client[META_DATABASE]
    # state from before the layout had a version: a run record, no `schema` document
    meta[RUNS].insert_one({"_id": "an-earlier-spec", "finished": True})
    assert start_run(spec, plan, None).resumed is False
    assert meta[SCHEMA].find_one({"_id": "layout"})["version"] == STATE_VERSION
    assert meta[RUNS].find_one({"_id": "an-earlier-spec"}) == {"_id": "an-earlier-spec", "finished": True}

    meta[SCHEMA].update_one({"_id": "layout"}, {"$set": {"version": STATE_VERSION + 1}})
    meta[RUNS].delete_one({"_id": spec.digest()})
    with pytest.raises(StateTooNew) as exc:
        start_run(spec, plan, None)
    assert str(exc.value) == (
        f"the migration state on the destination ({META_DATABASE}) was written by a newer mongo-migrate "
        f"(state version {STATE_VERSION + 1}, this one knows {STATE_VERSION}): run the newer mongo-migrate, "
        f"or drop the {META_DATABASE} database to start every migration over")
    assert exc.value.exit_code == 2
    assert meta[RUNS].find_one({"_id": spec.digest()}) is None  # nothing written


def test_a_run_is_silent_after_three_of_its_alive_intervals_and_never_when_it_never_said():
    said = datetime(2026, 12, 4, 12, 0, 0)
    run = {"alive": said, "alive_every_s": 30.0}
    assert process_silent_s(run, said + timedelta(seconds=90)) is None
    assert process_silent_s(run, said + timedelta(seconds=91)) == 91
    # a run of a mongo-migrate from before RunAlive: nothing is known, nothing is claimed
    assert process_silent_s({"finished": False}, said + timedelta(days=1)) is None


@pytest.mark.parametrize("given", ["soon", "0", "-5"])
def test_an_alive_interval_that_is_not_seconds_is_refused_naming_the_variable(monkeypatch, given):
    monkeypatch.setenv("MONGO_MIGRATE_ALIVE_EVERY_S", given)
    with pytest.raises(BadInput) as exc:
        alive_every_s()
    assert str(exc.value) == (f"MONGO_MIGRATE_ALIVE_EVERY_S={given!r}: give seconds between 0 and 3600, "
                              "such as 30 (or unset it)")
