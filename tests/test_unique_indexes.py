"""Unique indexes in an incremental migration: built without `unique` after the copy of a live source
(which may hold a key twice for a moment), made unique at cutover once the sync has settled them."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
from pymongo.errors import OperationFailure

from mongo_migrate.flows.approval import approve_cutover
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.tasks.cutover import UNIQUE_PENDING
from mongo_migrate.tasks.namespaces import plan_namespaces
from mongo_migrate.tasks.schema import (UniqueConversionFailed, build_indexes, convert_to_unique,
                                        create_target_collection)
from mongo_migrate.tasks.state import read_sync_state
from tests.conftest import assert_same_documents, index_specs
from tests.test_incremental import wait_for, waiting_since

UNIQUE = {"key": {"email": 1}, "name": "email_1", "unique": True, "collation": {"locale": "en", "strength": 2}}


def users_plan(spec):
    [plan] = [p for p in plan_namespaces(spec).data_plans if p.source_ns == "crm.users"]
    return plan


def copied_mid_move(src_client, dst_client, spec):
    """The source: A moved from x to y, then B took x. The destination: what a copy that read A
    before the move and B after it holds (A(x), B(x))."""
    src_client.crm.command("createIndexes", "users", indexes=[UNIQUE, {"key": {"n": 1}, "name": "n_1"}])
    src_client.crm.users.insert_many([{"_id": "A", "email": "x", "n": 1}, {"_id": "C", "email": "z", "n": 2}])
    src_client.crm.users.update_one({"_id": "A"}, {"$set": {"email": "y"}})
    src_client.crm.users.insert_one({"_id": "B", "email": "X", "n": 3})  # equal to x under the collation
    plan = users_plan(spec)
    create_target_collection(spec, plan)
    dst_client.crm.users.insert_many([{"_id": "A", "email": "x", "n": 1}, {"_id": "C", "email": "z", "n": 2},
                                      {"_id": "B", "email": "X", "n": 3}])
    return plan


def test_unique_index_waits_for_the_sync_then_is_converted(src_client, dst_client, spec_for):
    spec = spec_for(objects=[{"database": "crm"}], migration_types=["full", "incremental"])
    plan = copied_mid_move(src_client, dst_client, spec)

    # built as is, the unique index fails the migration although the sync would settle the key
    with pytest.raises(OperationFailure, match="E11000"):
        build_indexes(spec, plan)
    result = build_indexes(spec, plan, defer_unique=True)
    assert result.deferred_unique == ["email_1"] and sorted(result.built) == ["email_1", "n_1"]
    dest_ix = index_specs(dst_client, "crm.users")["email_1"]
    assert "unique" not in dest_ix
    assert dest_ix == {k: v for k, v in index_specs(src_client, "crm.users")["email_1"].items() if k != "unique"}
    # a rerun (resumed run) builds again without conflicting with the index already there
    assert build_indexes(spec, plan, defer_unique=True).deferred_unique == ["email_1"]
    # a cutover killed between the conversion's two collMods leaves it prepareUnique: a rerun puts it
    # back as built (it failed here with "An equivalent index already exists ... different options")
    dst_client.crm.command("collMod", "users", index={"name": "email_1", "prepareUnique": True})
    assert build_indexes(spec, plan, defer_unique=True).deferred_unique == ["email_1"]
    assert index_specs(dst_client, "crm.users")["email_1"] == dest_ix

    # the sync writes A's current state; then the conversion finds nothing to refuse
    dst_client.crm.users.replace_one({"_id": "A"}, src_client.crm.users.find_one({"_id": "A"}))
    assert convert_to_unique(spec, plan) == ["email_1"]
    assert index_specs(dst_client, "crm.users") == index_specs(src_client, "crm.users")
    assert "prepareUnique" not in index_specs(dst_client, "crm.users")["email_1"]
    assert_same_documents(src_client, dst_client, "crm.users")
    with pytest.raises(OperationFailure, match="E11000"):
        dst_client.crm.users.insert_one({"_id": "D", "email": "Z"})
    # converted already: nothing more to do, and a rebuild leaves the unique index alone
    assert convert_to_unique(spec, plan) == []
    assert build_indexes(spec, plan, defer_unique=True).deferred_unique == []
    assert index_specs(dst_client, "crm.users") == index_specs(src_client, "crm.users")


def test_conversion_with_duplicates_left_names_them(src_client, dst_client, spec_for):
    spec = spec_for(objects=[{"database": "crm"}], migration_types=["full", "incremental"])
    plan = copied_mid_move(src_client, dst_client, spec)
    build_indexes(spec, plan, defer_unique=True)

    with pytest.raises(UniqueConversionFailed) as failed:
        convert_to_unique(spec, plan)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("crm.users: index email_1 cannot be made unique as on the source: "
                              "destination documents share a key (_id ")
    assert '"A"' in message and '"B"' in message and '"C"' not in message
    # the index is left as it was: not unique, not half-prepared
    ix = index_specs(dst_client, "crm.users")["email_1"]
    assert "unique" not in ix and "prepareUnique" not in ix


def test_incremental_migration_whose_load_moves_unique_keys_during_the_copy(src_client, dst_client, spec_for):
    started = datetime.now(timezone.utc)
    # the oplog-window precheck reads a replica set's oplog spanning 0 s (this test first in a fresh
    # session) as no window at all: let it span a few seconds before the data goes in
    first = src_client.local["oplog.rs"].find_one({}, sort=[("$natural", 1)])["ts"].time
    wait_for(lambda: time.time() - first >= 3, what="the oplog to span a few seconds")
    src_client.crm.command("createIndexes", "users", indexes=[UNIQUE])
    docs = 6000
    src_client.crm.users.insert_many([{"_id": i, "email": f"u{i}", "pad": "p" * 300} for i in range(docs)])
    spec = spec_for(objects=[{"database": "crm"}], migration_types=["full", "incremental"],
                    # ranges of 1000 _ids copied one after the other, lowest first (equal estimates
                    # keep their order): user i is read well before the new users with high _ids
                    copy_options={"range_docs": 1000, "parallel_workers": 1},
                    incremental_options={"checkpoint_interval_s": 0.5})
    stop = threading.Event()
    moves = {"during_copy": 0, "all": 0}

    def move_keys():
        """Once the start point is saved: user i (read early by the copy) gives its email to a new
        user with a high _id (read late), again and again."""
        wait_for(lambda: read_sync_state(spec), what="the start point")
        users = src_client.crm.users
        i = 0
        while not stop.is_set() and i < docs:
            users.update_one({"_id": i}, {"$set": {"email": f"moved{i}"}})
            users.insert_one({"_id": docs + i, "email": f"u{i}", "pad": "q"})
            i += 1
            moves["all"] = i
            if (read_sync_state(spec) or {}).get("status") != "syncing":
                moves["during_copy"] = i  # the copy (or the index build) has not ended yet

    def approver():
        run = wait_for(lambda: waiting_since(started), what="the run to wait for approval")[0]
        stop.set()
        approve_cutover(str(run.id), note="keys moved")

    threads = [threading.Thread(target=f, daemon=True) for f in (move_keys, approver)]
    for t in threads:
        t.start()
    try:
        summary = migrate(spec)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert moves["during_copy"] > 0, "no key moved while the copy ran"
    assert summary.sync.status == "cut_over" and summary.counts_match
    assert_same_documents(src_client, dst_client, "crm.users")
    assert index_specs(dst_client, "crm.users") == index_specs(src_client, "crm.users")
    assert index_specs(dst_client, "crm.users")["email_1"]["unique"] is True
    assert UNIQUE_PENDING not in read_sync_state(spec)
