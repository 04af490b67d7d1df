"""Before 6.0 the sync reads create, index and collMod changes from the oplog: each oplog entry
becomes the expanded event 6.0 would have sent, and the planner treats both alike (no server here;
real 4.2/4.4/5.0 sources: tests/test_versions.py)."""
from __future__ import annotations

import uuid
from datetime import datetime

from bson.timestamp import Timestamp

from mongo_migrate.blocks.spec import parse_spec
from mongo_migrate.tasks.namespaces import NamespaceMapper
from mongo_migrate.tasks.sync.events import CreateCollection, CreateIndexes, DropIndexes, ModifyCollection, plan_change
from mongo_migrate.tasks.sync.sources import ddl_events_of, stream_has_ddl

TS = Timestamp(1700000000, 3)
WALL = datetime(2026, 12, 2, 6, 0)


def entry(o: dict, ns: str = "shop.$cmd", **extra) -> dict:
    return {"op": "c", "ns": ns, "o": o, "ts": TS, "wall": WALL, **extra}


def mapper(**fields) -> NamespaceMapper:
    return NamespaceMapper(parse_spec({"source": {"uri": "mongodb://a"}, "destination": {"uri": "mongodb://b"},
                                       **fields}))


def test_which_servers_stream_ddl():
    assert [stream_has_ddl(v) for v in ("4.2.6", "4.4.2", "5.0.4", "6.0.5", "7.0.1")] == [
        False, False, False, True, True]


def test_create_with_options_and_a_view():
    [event] = ddl_events_of(entry({"create": "log", "capped": True, "size": 4096,
                                   "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}))
    assert event == {"operationType": "create", "ns": {"db": "shop", "coll": "log"},
                     "operationDescription": {"capped": True, "size": 4096}, "clusterTime": TS,
                     "wallTime": WALL, "fromOplog": True}
    [action] = plan_change({**event, "_id": None}, mapper(name_mapping={"shop": "shop_v2"}))
    assert isinstance(action, CreateCollection)
    assert (action.plan.target_ns, action.plan.kind, action.plan.options) == (
        "shop_v2.log", "collection", {"capped": True, "size": 4096})

    [view] = ddl_events_of(entry({"create": "big", "viewOn": "orders", "pipeline": [{"$match": {"n": 1}}]}))
    [action] = plan_change(view, mapper())
    assert action.plan.kind == "view" and action.plan.options["viewOn"] == "orders"


def test_index_builds_of_each_generation():
    # 4.2 (and 4.4+ on an empty collection): one createIndexes entry per index, with "ns" on 4.2
    [event] = ddl_events_of(entry({"createIndexes": "orders", "v": 2, "key": {"a": 1}, "name": "a_1",
                                   "ns": "shop.orders", "unique": True}))
    [action] = plan_change(event, mapper())
    assert isinstance(action, CreateIndexes)
    assert action.indexes == [{"v": 2, "key": {"a": 1}, "name": "a_1", "unique": True}]
    # 4.4+ replica sets: start, then commit with every index of the build; only the commit counts
    build = uuid.uuid4()
    assert list(ddl_events_of(entry({"startIndexBuild": "orders", "indexBuildUUID": build,
                                     "indexes": [{"v": 2, "key": {"b": 1}, "name": "b_1"}]}))) == []
    [event] = ddl_events_of(entry({"commitIndexBuild": "orders", "indexBuildUUID": build,
                                   "indexes": [{"v": 2, "key": {"b": 1}, "name": "b_1"},
                                               {"v": 2, "key": {"c": -1}, "name": "c_-1"}]}))
    [action] = plan_change(event, mapper())
    assert [ix["name"] for ix in action.indexes] == ["b_1", "c_-1"]


def test_drop_index_and_collmod_map_to_the_target():
    [event] = ddl_events_of(entry({"dropIndexes": "orders", "index": "a_1"}, o2={"v": 2, "key": {"a": 1}}))
    [action] = plan_change(event, mapper(name_mapping={"shop.orders": "sales.orders"}))
    assert isinstance(action, DropIndexes) and (action.target, action.names) == (("sales", "orders"), ["a_1"])
    [event] = ddl_events_of(entry({"collMod": "orders", "validator": {"n": {"$gte": 0}},
                                   "validationLevel": "strict"}))
    [action] = plan_change(event, mapper())
    assert isinstance(action, ModifyCollection)
    assert action.changes == {"validator": {"n": {"$gte": 0}}, "validationLevel": "strict"}


def test_what_the_change_stream_carries_itself_is_not_read_twice():
    for o in ({"drop": "orders"}, {"renameCollection": "shop.a", "to": "shop.b"}, {"dropDatabase": 1},
              {"abortIndexBuild": "orders", "indexBuildUUID": uuid.uuid4()}):
        assert list(ddl_events_of(entry(o))) == []
    assert list(ddl_events_of({"op": "i", "ns": "shop.orders", "o": {"_id": 1}, "ts": TS})) == []


def test_ddl_inside_a_transaction_is_found():
    txn = entry({"applyOps": [
        {"op": "c", "ns": "shop.$cmd", "o": {"create": "fresh"}},
        {"op": "i", "ns": "shop.fresh", "o": {"_id": 1}},
        {"op": "c", "ns": "shop.$cmd", "o": {"createIndexes": "fresh", "v": 2, "key": {"k": 1}, "name": "k_1"}},
    ]}, ns="admin.$cmd")
    events = list(ddl_events_of(txn))
    assert [(e["operationType"], e["ns"]["coll"], e["clusterTime"]) for e in events] == [
        ("create", "fresh", TS), ("createIndexes", "fresh", TS)]
