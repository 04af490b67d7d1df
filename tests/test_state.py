"""The migration's state on the destination has a versioned layout: older state is upgraded as a run
starts, newer state stops the run in one line before anything is written."""
from __future__ import annotations

import pytest

from mongo_migrate.blocks.spec import META_DATABASE
from mongo_migrate.tasks.namespaces import plan_namespaces
from mongo_migrate.tasks.state import RUNS, SCHEMA, STATE_VERSION, StateTooNew, start_run


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
