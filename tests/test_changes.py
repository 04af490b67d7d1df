"""The incremental sync's parts: change event -> destination write (pure, no server), and the sync
engine against the real replica sets (no Prefect flow)."""
from __future__ import annotations

import logging
import threading
import time

import bson
import pytest
from bson import Int64, ObjectId
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import DeleteOne, ReplaceOne

from mongo_migrate.blocks.errors import OplogWindowExceeded
from mongo_migrate.blocks.mongo import close_clients
from mongo_migrate.blocks.spec import META_DATABASE, parse_spec
from mongo_migrate.sandbox.mongod import Mongod
from mongo_migrate.tasks.common import RAW
from mongo_migrate.tasks.namespaces import NamespaceMapper, plan_namespaces
from mongo_migrate.tasks.state import abandon_run, read_sync_state, resumable_run, start_run, sync_state_collection
from mongo_migrate.tasks.sync.engine import ChangeSync
from mongo_migrate.tasks.sync.events import (Batch, CreateCollection, CreateIndexes, DocWrite, DropCollection,
                                             DropDatabase, DropIndexes, ModifyCollection, RecopyCollection,
                                             RenameCollection, change_stream_pipeline, format_delay, partition_writes,
                                             plan_change, token_time, transaction_of)
from mongo_migrate.tasks.sync.position import save_start_point, source_cluster_time
from tests.conftest import (MAX_BSON, assert_same_documents, index_specs, insert_large, make_spec, padding, sized,
                            user_collections, write_large)

SPEC = {"source": {"uri": "mongodb://127.0.0.1:1/"}, "destination": {"uri": "mongodb://127.0.0.1:2/"},
        "migration_types": ["full", "incremental"]}


def mapper(**fields) -> NamespaceMapper:
    return NamespaceMapper(parse_spec({**SPEC, **fields}))


def raw(doc: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc), RAW)


def event(op: str, db: str, coll: str | None = None, **fields) -> RawBSONDocument:
    ns = {"db": db} if coll is None else {"db": db, "coll": coll}
    return raw({"_id": {"_data": "82000000010000000100"}, "operationType": op,
                "clusterTime": Timestamp(100, 1), "ns": ns, **fields})


# -- pure: documents ---------------------------------------------------------------------------------
SELECT = {"objects": [{"database": "shop"}, {"database": "crm", "collections": ["customers"]}],
          "name_mapping": {"shop": "shop_v2", "crm.customers": "sales.clients"}}


def test_insert_replace_and_looked_up_update_become_whole_document_upserts_of_the_raw_bytes():
    m = mapper(**SELECT)
    doc = {"_id": 1, "b": {"a.b": 1, "$x": [1, Int64(2)]}, "a": 1.0}
    for op in ("insert", "replace", "update"):
        e = event(op, "crm", "customers", documentKey={"_id": 1}, fullDocument=doc)
        w = plan_change(e, m)
        assert isinstance(w, DocWrite)
        assert w.source == ("crm", "customers") and w.target == ("sales", "clients")
        assert w.doc.raw == bson.encode(doc) and w.key.raw == bson.encode({"_id": 1})
        assert w.operation() == ReplaceOne(raw({"_id": 1}), raw(doc), upsert=True)


def test_delete_deletes_and_an_update_whose_document_is_gone_writes_nothing():
    m = mapper(**SELECT)
    w = plan_change(event("delete", "shop", "orders", documentKey={"_id": "k"}), m)
    assert w.doc is None and w.target == ("shop_v2", "orders")
    assert w.operation() == DeleteOne(raw({"_id": "k"}))
    # fullDocument null: deleted (or dropped) by lookup time; the delete or drop follows in the stream
    assert plan_change(event("update", "shop", "orders", documentKey={"_id": 1}, fullDocument=None), m) is None


def test_changes_outside_the_selection_are_ignored():
    m = mapper(**SELECT)
    for db, coll in (("crm", "leads"), ("other", "x"), ("shop", "system.views")):
        assert plan_change(event("insert", db, coll, documentKey={"_id": 1}, fullDocument={"_id": 1}), m) is None
        assert plan_change(event("drop", db, coll), m) is None
    assert plan_change(event("dropDatabase", "other"), m) is None


# -- pure: DDL ---------------------------------------------------------------------------------------
def rename(frm: tuple[str, str], to: tuple[str, str], at: Timestamp = Timestamp(100, 1)):
    return raw({"_id": {"_data": "82"}, "operationType": "rename", "clusterTime": at,
                "ns": {"db": frm[0], "coll": frm[1]}, "to": {"db": to[0], "coll": to[1]},
                "operationDescription": {"to": {"db": to[0], "coll": to[1]}}})


def test_renames_follow_selection_and_mapping():
    m = mapper(objects=[{"database": "shop"}, {"database": "crm", "collections": ["customers", "vip"]}],
               name_mapping={"shop": "shop_v2", "crm.vip": "sales.vip"})
    # both selected: renamed on the destination, under the mapped names (here across databases)
    assert plan_change(rename(("crm", "customers"), ("crm", "vip")), m) == [
        RenameCollection(("crm", "customers"), ("sales", "vip"), ("crm", "vip"))]
    # into an unselected namespace: the destination drops it
    assert plan_change(rename(("crm", "customers"), ("crm", "leads")), m) == [DropCollection(("crm", "customers"))]
    # out of an unselected namespace into a selected one: copied now
    assert plan_change(rename(("crm", "leads"), ("shop", "orders")), m) == [
        RecopyCollection(("shop", "orders"), ("shop_v2", "orders"))]
    assert plan_change(rename(("crm", "leads"), ("crm", "old")), m) is None
    # during the full copy (which the rename may have cut short): copied again instead
    during = plan_change(rename(("shop", "a"), ("shop", "b"), Timestamp(100, 1)), m,
                         recopy_renames_before=Timestamp(100, 2))
    assert during == [DropCollection(("shop_v2", "a")), RecopyCollection(("shop", "b"), ("shop_v2", "b"))]


def test_create_drop_index_and_collmod_events_map_to_the_target():
    m = mapper(**SELECT)
    create = plan_change(event("create", "shop", "c", operationDescription={
        "capped": True, "size": 4096, "validator": {"n": {"$type": "long"}}}), m)
    assert isinstance(create[0], CreateCollection) and create[0].plan.target_ns == "shop_v2.c"
    assert create[0].plan.kind == "collection" and create[0].plan.options["size"] == 4096
    view = plan_change(event("create", "shop", "v", operationDescription={
        "viewOn": "orders", "pipeline": [{"$match": {"x": 1}}]}), m)[0]
    assert view.plan.kind == "view" and view.plan.options["viewOn"] == "orders"
    ts = plan_change(event("create", "shop", "metrics", operationDescription={
        "viewOn": "system.buckets.metrics", "pipeline": [{"$_internalUnpackBucket": {"timeField": "t"}}]}), m)[0]
    assert ts.plan.kind == "timeseries" and ts.plan.target_ns == "shop_v2.metrics"
    ix = {"v": 2, "key": {"a.b": 1}, "name": "ab", "unique": True, "partialFilterExpression": {"x": Int64(1)}}
    assert plan_change(event("createIndexes", "crm", "customers", operationDescription={"indexes": [ix]}), m) == [
        CreateIndexes(("crm", "customers"), ("sales", "clients"), [ix])]
    assert plan_change(event("dropIndexes", "shop", "orders", operationDescription={"indexes": [ix]}), m) == [
        DropIndexes(("shop_v2", "orders"), ["ab"])]
    assert plan_change(event("modify", "shop", "orders", operationDescription={
        "index": {"name": "ab", "hidden": True}}), m) == [
        ModifyCollection(("shop_v2", "orders"), {"index": {"name": "ab", "hidden": True}})]
    assert plan_change(event("drop", "crm", "customers"), m) == [DropCollection(("sales", "clients"))]
    assert plan_change(event("dropDatabase", "shop"), m) == [DropDatabase("shop")]
    assert plan_change(event("shardCollection", "shop", "orders"), m) is None


# -- pure: batches -----------------------------------------------------------------------------------
def write(target: str, _id, state) -> DocWrite:
    db, coll = target.split(".")
    return DocWrite((db, coll), (db, coll), raw({"_id": _id}), None if state is None else raw({"_id": _id, "s": state}))


def test_a_batch_keeps_the_last_state_of_each_document():
    b = Batch()
    for w in (write("a.x", 1, 1), write("a.x", 2, 1), write("a.x", 1, 2), write("a.y", 1, 9), write("a.x", 2, None)):
        b.add(w, {"n": b.events})
    b.add(None, {"n": b.events})  # an update whose document is gone counts as read, writes nothing
    assert b.events == 6 and b.last_event == {"n": 5}
    last = {(w.target, w.key["_id"]): (w.doc or {}).get("s") for w in b.writes.values()}
    assert last == {(("a", "x"), 1): 2, (("a", "x"), 2): None, (("a", "y"), 1): 9}


def test_partitions_keep_every_document_in_one_place():
    writes = [write(f"a.c{i % 3}", i % 50, i) for i in range(300)]
    parts = partition_writes(writes, 4)
    seen = {}
    for n, part in enumerate(parts):
        for target, group in part.items():
            for w in group:
                assert w.target == target
                assert seen.setdefault(w.ident, n) == n  # the same document always in the same partition
    assert sum(len(g) for p in parts for g in p.values()) == 300
    assert sum(1 for p in parts if p) > 1
    assert partition_writes(writes, 4) == parts  # stable


def test_transaction_identity():
    lsid = {"id": bson.Binary(b"1" * 16, 4), "uid": b"u"}
    a = raw({"lsid": lsid, "txnNumber": Int64(3)})
    assert transaction_of(a) == transaction_of(raw({"lsid": lsid, "txnNumber": Int64(3)}))
    assert transaction_of(a) != transaction_of(raw({"lsid": lsid, "txnNumber": Int64(4)}))
    assert transaction_of(raw({"x": 1})) is None


def test_token_time_and_delay_text():
    assert token_time({"_data": "826B0627D8000000142B0229296E04"}) == Timestamp(0x6B0627D8, 0x14)
    with pytest.raises(ValueError, match="resume token"):
        token_time({"_data": "0100"})
    assert format_delay(None) == "delay not measured yet"
    assert format_delay(0.0) == "not delayed"
    assert format_delay(1.24, ready_s=2) == "not delayed (1.2 s)"
    assert format_delay(3.21, ready_s=2) == "3.2 s behind"
    assert format_delay(185, ready_s=2) == "3 min 05 s behind"
    assert format_delay(7322) == "2 h 02 min behind"


def test_the_stream_filter_follows_the_selection():
    everything = change_stream_pipeline(mapper())
    assert everything[0]["$match"]["$or"][0] == {
        "ns.db": {"$exists": True, "$nin": ["admin", "local", "config", META_DATABASE]}}
    assert everything[1] == {"$project": {"updateDescription": 0}}
    some = change_stream_pipeline(mapper(**SELECT))[0]["$match"]["$or"]
    assert {"ns.db": {"$in": ["shop"]}} in some and {"to.db": {"$in": ["shop"]}} in some
    assert {"ns.db": "crm", "ns.coll": {"$in": ["customers"]}} in some
    # a database with some collections selected: its dropDatabase too (views have no drop events then)
    assert {"ns.db": "crm", "operationType": "dropDatabase"} in some


# -- the engine on the real replica sets -------------------------------------------------------------
def run_until_caught_up(spec, timeout: float = 60, **kw) -> ChangeSync:
    """Run a ChangeSync until it has applied everything written so far, then stop it."""
    goal = source_cluster_time(spec)
    sync = ChangeSync(spec, **kw)
    t = threading.Thread(target=sync.run, daemon=True)
    t.start()
    try:
        assert sync.wait_until_applied(goal, timeout_s=timeout), "the sync did not catch up"
    finally:
        sync.stop()
        t.join(30)
    return sync


def sync_spec(spec_for, **fields):
    return spec_for(migration_types=["full", "incremental"], **fields)


def test_updates_replay_byte_for_byte_whatever_their_shape(src_client, dst_client, spec_for):
    spec = sync_spec(spec_for, objects=[{"database": "shop"}])
    save_start_point(spec, resumed=False)
    c = src_client.shop.docs
    c.insert_many([{"_id": i, "a": {"b": [1, 2, {"c": 3}]}, "n": i, "arr": list(range(10))} for i in range(20)])
    c.update_one({"_id": 0}, [{"$set": {"zeta": 1}}, {"$set": {"alpha": 2}}])  # new fields, not in name order
    c.update_one({"_id": 1}, [{"$replaceWith": {"$setField": {"field": "a.b", "input": "$$ROOT", "value": 5}}}])
    c.update_one({"_id": 2}, [{"$replaceWith": {"$setField": {"field": {"$literal": "$price"}, "input": "$$ROOT",
                                                               "value": 1}}}])
    c.update_one({"_id": 3}, {"$set": {"a.b.2.c": 4, "a.b.5": "pad"}})  # array element, and past the end
    c.update_one({"_id": 4}, [{"$set": {"arr": {"$slice": ["$arr", 3]}}}])  # truncatedArrays
    c.update_one({"_id": 5}, {"$rename": {"n": "m"}, "$unset": {"a": ""}})
    c.update_one({"_id": 6}, [{"$replaceWith": {"n": "$n", "_id": "$_id", "a": "$a"}}])  # fields reordered
    c.update_one({"_id": 7}, {"$set": {"n": Int64(7)}})
    c.update_one({"_id": 7}, {"$set": {"n": 7.0}})
    c.replace_one({"_id": 8}, {"z": 1, "y": {"x": [[]]}})
    c.update_one({"_id": 9}, {"$set": {"gone": True}})
    c.delete_one({"_id": 9})
    c.delete_one({"_id": 10})
    c.insert_one({"_id": 10, "back": True})
    with src_client.start_session() as s, s.start_transaction():
        c.update_one({"_id": 11}, {"$push": {"arr": {"$each": [1, 2], "$position": 0}}}, session=s)
        c.delete_one({"_id": 12}, session=s)
        c.insert_one({"_id": 99, "in": "transaction"}, session=s)
    sync = run_until_caught_up(spec)
    assert sync.events_applied >= 20 + 16
    assert_same_documents(src_client, dst_client, "shop.docs")


def test_changes_to_16_mb_documents_reach_the_destination(src_client, dst_client, spec_for):
    # events of the largest documents a server stores: without updateDescription (left out by the
    # stream's pipeline) an update's event carries the document once, not twice (32 MB: the stream failed)
    spec = sync_spec(spec_for, objects=[{"database": "shop"}])
    save_start_point(spec, resumed=False)
    c = src_client.shop.big
    insert_large(c, sized(1, MAX_BSON))
    insert_large(c, sized(ObjectId(), MAX_BSON - 100))
    write_large(c, lambda: c.update_one({"_id": 1}, {"$set": {"p": "y" * padding(1, MAX_BSON)}}))
    write_large(c, lambda: c.replace_one({"_id": 1}, sized(1, MAX_BSON)))
    c.insert_one({"_id": 2, "small": True})
    sync = run_until_caught_up(spec)
    assert sync.events_applied >= 5
    assert_same_documents(src_client, dst_client, "shop.big")
    assert dst_client.shop.big.count_documents({}) == 3


def test_replaying_from_the_start_point_converges_to_the_same_bytes(src_client, dst_client, spec_for):
    spec = sync_spec(spec_for, objects=[{"database": "shop"}], name_mapping={"shop.docs": "shop.docs2"})
    save_start_point(spec, resumed=False)
    c = src_client.shop.docs
    c.insert_many([{"_id": i, "v": 0} for i in range(100)])
    for k in range(1, 4):
        c.update_many({"_id": {"$lt": 50}}, {"$inc": {"v": 1}, "$set": {f"k{k}": k}})
    c.delete_many({"_id": {"$gte": 90}})
    run_until_caught_up(spec)
    assert_same_documents(src_client, dst_client, "shop.docs", "shop.docs2")
    # a killed run replays what it applied after its last checkpoint: here, everything
    sync_state_collection(spec).update_one({"_id": spec.digest()}, {"$unset": {"token": ""}})
    c.update_one({"_id": 0}, {"$set": {"late": True}})
    again = run_until_caught_up(spec)
    assert again.events_applied >= 100 + 150 + 10 + 1
    assert_same_documents(src_client, dst_client, "shop.docs", "shop.docs2")
    assert read_sync_state(spec)["events_applied"] == again.events_applied


def test_unique_keys_swapped_in_transactions_converge(src_client, dst_client, spec_for):
    spec = sync_spec(spec_for, objects=[{"database": "shop"}],
                     incremental_options={"apply_workers": 4, "batch_events": 10_000})
    items = src_client.shop.items
    items.insert_many([{"_id": i, "sku": f"s{i}"} for i in range(40)])
    items.create_index("sku", unique=True, name="sku")
    dst_client.shop.items.insert_many([{"_id": i, "sku": f"s{i}"} for i in range(40)])
    dst_client.shop.items.create_index("sku", unique=True, name="sku")
    save_start_point(spec, resumed=False)
    for k in range(30):  # rotate keys around cycles of documents, as the source's own transactions
        a, b, c = (k * 7) % 40, (k * 7 + 11) % 40, (k * 7 + 23) % 40
        with src_client.start_session() as s:
            def rotate(session):
                key_a, key_b, key_c = (items.find_one({"_id": i}, session=session)["sku"] for i in (a, b, c))
                items.update_one({"_id": a}, {"$set": {"sku": "tmp"}}, session=session)
                items.update_one({"_id": c}, {"$set": {"sku": key_a}}, session=session)
                items.update_one({"_id": b}, {"$set": {"sku": key_c}}, session=session)
                items.update_one({"_id": a}, {"$set": {"sku": key_b}}, session=session)
            s.with_transaction(rotate)
    sync = run_until_caught_up(spec)
    assert sync.unique_conflicts > 0  # the batch's last states collide with the destination's first
    assert_same_documents(src_client, dst_client, "shop.items")
    assert "parked" not in read_sync_state(spec)


def test_documents_parked_by_a_killed_run_are_written_back(src_client, dst_client, spec_for):
    spec = sync_spec(spec_for, objects=[{"database": "shop"}])
    src_client.shop.items.insert_many([{"_id": i, "sku": f"s{i}"} for i in range(3)])
    dst_client.shop.items.insert_many([{"_id": i, "sku": f"s{i}"} for i in range(2)])  # _id 2 was parked
    save_start_point(spec, resumed=False)
    sync_state_collection(spec).update_one({"_id": spec.digest()}, {"$set": {"parked": [
        {"source": ["shop", "items"], "target": ["shop", "items"], "key": {"_id": 2}}]}})
    run_until_caught_up(spec)
    assert_same_documents(src_client, dst_client, "shop.items")
    assert "parked" not in read_sync_state(spec)


def test_writes_answered_with_a_write_concern_error_are_made_again(source, src_client, tmp_path, caplog):
    """A write concern error (the destination applied the writes but a majority may not have them:
    a failover can roll them back) is not a success: the batch is made again, and the checkpoint
    moves only after that. Real server fault: failCommand's writeConcernError."""
    with Mongod(tmp_path / "dst", replset="wce", extra_args=["--setParameter", "enableTestCommands=1"]) as dest, \
            dest.client() as dst_client:
        spec = make_spec(source, dest, migration_types=["full", "incremental"], objects=[{"database": "shop"}])
        # the collection exists on both sides before the start point: no create event, whose
        # checkpoint (an update too) would take the fault first
        src_client.shop.docs.insert_one({"_id": -1})
        dst_client.shop.docs.insert_one({"_id": -1})
        save_start_point(spec, resumed=False)
        src_client.shop.docs.insert_many([{"_id": i, "v": i} for i in range(50)])
        src_client.shop.docs.delete_many({"_id": {"$lt": 10}})
        for command in ("update", "delete"):  # the sync's upserts, then its deletes
            dst_client.admin.command("configureFailPoint", "failCommand", mode={"times": 1}, data={
                "failCommands": [command], "appName": "mongo-migrate",
                "writeConcernError": {"code": 64, "codeName": "WriteConcernFailed",
                                      "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": True}}})
            with caplog.at_level(logging.WARNING, logger="mongo_migrate.changes"):
                run_until_caught_up(spec)
            retried = [r.getMessage() for r in caplog.records if "while applying changes" in r.getMessage()]
            assert retried and "BulkWriteError" in retried[-1], command
            caplog.clear()
            src_client.shop.docs.update_one({"_id": 20}, {"$set": {"again": command}})
            src_client.shop.docs.delete_one({"_id": 30 if command == "update" else 31})
        run_until_caught_up(spec)
        assert_same_documents(src_client, dst_client, "shop.docs")
        close_clients()


def test_ddl_follows_selection_and_mapping(src_client, dst_client, spec_for):
    spec = sync_spec(spec_for, objects=[{"database": "shop", "collections": ["a", "b", "c", "v"]}],
                     name_mapping={"shop.a": "archive.a2"})
    save_start_point(spec, resumed=False)
    shop = src_client.shop
    shop.a.insert_many([{"_id": i, "x": i} for i in range(10)])
    shop.a.create_index([("x", -1)], name="x_desc", partialFilterExpression={"x": {"$gt": 2}})
    shop.command("collMod", "a", index={"name": "x_desc", "hidden": True})
    shop.create_collection("b", validator={"x": {"$type": "int"}}, validationLevel="moderate")
    shop.b.insert_one({"_id": 1, "x": 1})
    shop.create_collection("v", viewOn="b", pipeline=[{"$match": {"x": 1}}])
    shop.outside.insert_many([{"_id": i} for i in range(5)])
    shop.outside.create_index("q")
    shop.outside.rename("c")  # into the selection: copied with its index
    shop.b.rename("gone")  # out of the selection: dropped on the destination
    run_until_caught_up(spec)
    assert_same_documents(src_client, dst_client, "shop.a", "archive.a2")
    assert_same_documents(src_client, dst_client, "shop.c")
    assert index_specs(dst_client, "archive.a2") == index_specs(src_client, "shop.a")
    assert index_specs(dst_client, "archive.a2")["x_desc"]["hidden"] is True
    assert index_specs(dst_client, "shop.c") == index_specs(src_client, "shop.c")
    assert user_collections(dst_client, "shop") == ["c", "v"]
    info = next(dst_client.shop.list_collections(filter={"name": "v"}))
    assert info["options"]["viewOn"] == "b"
    assert "outside" not in dst_client.shop.list_collection_names()
    shop.c.drop_index("q_1")
    src_client.drop_database("shop")
    run_until_caught_up(spec)
    assert user_collections(dst_client, "shop") == [] and user_collections(dst_client, "archive") == []


def test_a_position_no_longer_in_the_oplog_fails_with_what_to_do(src_client, dst_client, spec_for):
    spec = sync_spec(spec_for, objects=[{"database": "shop"}])
    save_start_point(spec, resumed=False)
    src_client.shop.docs.insert_one({"_id": 1})
    sync = run_until_caught_up(spec)
    assert sync.events_applied == 2  # create, insert
    # a token the oplog does not hold (what a truncated oplog leaves): an event that never happened
    state = read_sync_state(spec)
    data = state["token"]["_data"]
    uuid_at = data.index("5A1004") + 6
    lost = data[:uuid_at] + ("00" if data[uuid_at:uuid_at + 2] != "00" else "11") + data[uuid_at + 2:]
    sync_state_collection(spec).update_one({"_id": spec.digest()}, {"$set": {"token": {"_data": lost}}})
    with pytest.raises(OplogWindowExceeded) as err:
        ChangeSync(spec).run()
    assert "oplog window was exceeded" in str(err.value) and "run the full migration again" in str(err.value)
    # the incremental-sync flow then marks the run over: the next run of the spec starts afresh
    start_run(spec, plan_namespaces(spec), None)
    assert resumable_run(spec) is not None
    abandon_run(spec, str(err.value))
    assert resumable_run(spec) is None and read_sync_state(spec)["status"] == "abandoned"


def test_delay_is_measured_against_the_source_clock(src_client, dst_client, spec_for):
    spec = sync_spec(spec_for, objects=[{"database": "shop"}])
    # a write outside the selection first: the start point of an idle source is its last write, which
    # its periodic no-op (every 10 s) may have made up to 10 s ago
    src_client.other.clock.insert_one({"at": "start"})
    save_start_point(spec, resumed=False)
    time.sleep(1.5)
    sync = ChangeSync(spec)
    sync._resume_point()
    # nothing applied yet: behind by the time since the start point (whole seconds of cluster time)
    assert 0.5 <= sync.delay_s <= 10
    src_client.shop.docs.insert_one({"_id": 1})
    t = threading.Thread(target=sync.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while not sync.caught_up and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sync.caught_up and sync.delay_s == 0.0 and sync.events_applied == 2  # create, insert
    finally:
        sync.stop()
        t.join(30)


def test_a_time_series_collection_is_copied_again_whole(src_client, dst_client, spec_for):
    """Time-series collections have no change events: the cutover copies them again (buckets)."""
    from datetime import datetime, timedelta

    from mongo_migrate.tasks.sync.ddl import recopy_collection

    spec = sync_spec(spec_for, objects=[{"database": "shop"}], name_mapping={"shop": "shop_v2"})
    src_client.shop.create_collection("metrics", timeseries={"timeField": "t", "metaField": "m",
                                                             "granularity": "minutes"})
    start = datetime(2024, 1, 1)
    src_client.shop.metrics.insert_many([{"t": start + timedelta(minutes=i), "m": i % 3, "v": i} for i in range(300)])
    dst_client.shop_v2.create_collection("metrics", timeseries={"timeField": "t", "metaField": "m"})
    dst_client.shop_v2.metrics.insert_one({"t": start, "m": 9, "v": "stale"})
    assert recopy_collection(spec, ("shop", "metrics"), ("shop_v2", "metrics")) > 0
    assert_same_documents(src_client, dst_client, "shop.system.buckets.metrics", "shop_v2.system.buckets.metrics")
    options = next(dst_client.shop_v2.list_collections(filter={"name": "metrics"}))["options"]["timeseries"]
    assert options["granularity"] == "minutes" and options["metaField"] == "m"
