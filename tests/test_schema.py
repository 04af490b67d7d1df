"""Indexes of every kind, collection options and views arrive as they are on the source.

Specs are compared as encoded BSON, so a key given as 1.0 must not come back as 1, nor options in
another order. Each test runs the real `migrate` flow between the session's mongods."""
from __future__ import annotations

import datetime
import json

import bson
from bson import Decimal128, Int64, Regex, json_util

from mongo_migrate.flows.cli import format_summary
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.tasks.common import RAW
from mongo_migrate.tasks.copy import CopyRange, copy_collection_range
from mongo_migrate.tasks.namespaces import CollectionPlan
from mongo_migrate.tasks.schema import build_indexes, create_target_collection
from tests.conftest import DATA, assert_same_documents, collection_options, insert_raw, load_bson, raw_documents

TOOLS = DATA / "mongo-tools" / "mongorestore"


def encoded_indexes(client, ns: str) -> dict[str, bytes]:
    db, _, coll = ns.partition(".")
    return {ix["name"]: bson.encode({k: v for k, v in ix.items() if k != "ns"})
            for ix in client[db][coll].list_indexes()}


def encoded_options(client, ns: str) -> bytes:
    return bson.encode(collection_options(client, ns))


def dump_metadata(name: str) -> dict:
    return json_util.loads((TOOLS / f"{name}.metadata.json").read_text())


def create_indexes_from_dump(client, ns: str, metadata: dict) -> None:
    """Create a mongodump's indexes on the source, as mongorestore would."""
    db, _, coll = ns.partition(".")
    specs = [{k: v for k, v in ix.items() if k != "ns"} for ix in metadata["indexes"] if ix["name"] != "_id_"]
    client[db].command("createIndexes", coll, indexes=specs)


INDEXES = [
    {"key": {"sku": 1}, "name": "sku_unique", "unique": True},
    {"key": {"a": 1, "b": -1, "c.d": 1}, "name": "compound"},
    {"key": {"opt": 1}, "name": "opt_sparse", "sparse": True},
    {"key": {"p": 1}, "name": "p_partial", "unique": True,
     "partialFilterExpression": {"p": {"$gt": 5}, "kind": {"$exists": True}}},
    {"key": {"created": 1}, "name": "ttl", "expireAfterSeconds": 10**9},
    {"key": {"name": 1}, "name": "name_de", "collation": {"locale": "de", "strength": 1}},
    {"key": {"title": "text", "body": "text", "n": 1}, "name": "fulltext",
     "weights": {"title": 10, "body": 2}, "default_language": "french", "language_override": "lang"},
    {"key": {"loc": "2dsphere"}, "name": "loc_sphere", "2dsphereIndexVersion": 3},
    {"key": {"grid": "2d"}, "name": "grid_2d", "bits": 20, "min": -500.0, "max": 500.0},
    {"key": {"h": "hashed"}, "name": "h_hashed"},
    {"key": {"hid": 1}, "name": "hid_hidden", "hidden": True},
    {"key": {"$**": 1}, "name": "wildcard", "wildcardProjection": {"attrs": 1, "meta.tags": 1}},
    {"key": {"attrs.$**": 1}, "name": "wildcard_path"},
    {"key": {"legacy": 1}, "name": "legacy_v1", "v": 1},
    {"key": {"f": 1.0, "g": Int64(-1)}, "name": "typed_key"},
]


def thing(i: int) -> dict:
    return {
        "_id": i, "sku": f"sku-{i}", "a": i % 7, "b": i % 3, "c": {"d": i}, "p": i,
        "kind": "k" if i % 2 else None, "created": datetime.datetime(2100, 1, 1),
        "name": ["Müller", "Mueller", "muller"][i % 3], "title": f"le titre {i}", "body": "des mots",
        "lang": "english" if i % 5 == 0 else "french", "loc": {"type": "Point", "coordinates": [i % 90, i % 45]},
        "grid": [i % 400 - 200, i % 300 - 150], "h": i * 13, "hid": i,
        "attrs": {"color": "red", "size": i}, "meta": {"tags": ["x"]}, "f": i, "g": -i,
        **({"opt": i} if i % 4 == 0 else {}),
    }


def test_every_index_kind_is_rebuilt_as_it_is(src_client, dst_client, spec_for):
    src_client.ix.things.insert_many([thing(i) for i in range(60)])
    src_client.ix.command("createIndexes", "things", indexes=INDEXES)
    # indexes from mongodump metadata: hashed on dotted paths, a TTL on a 1.0 key, a partial
    # filter of ten clauses whose order is kept
    for name, coll in (("hashedIndexes", "hashed"), ("coll_with_ttl_index", "ttl")):
        insert_raw(src_client, f"ix.{coll}", load_bson(f"mongo-tools/mongorestore/{name}.bson"))
        create_indexes_from_dump(src_client, f"ix.{coll}", dump_metadata(name))
    src_client.ix.partial.insert_many([{f"a{k}": k + 1 for k in range(10)} | {"a": 1} for _ in range(3)])
    create_indexes_from_dump(src_client, "ix.partial", dump_metadata("ordered_partial_index"))
    # a collection default collation is inherited by its indexes, unless one says "simple"
    src_client.ix.create_collection("collated", collation={"locale": "fr", "strength": 2})
    src_client.ix.collated.insert_many([{"_id": i, "w": w} for i, w in enumerate(["été", "Ete", "ETE"])])
    src_client.ix.collated.create_index("w", name="w_inherits")
    src_client.ix.collated.create_index("w", name="w_simple", collation={"locale": "simple"})
    src_client.ix.collated.create_index([("w", "text")], name="w_text", collation={"locale": "simple"})

    summary = migrate(spec_for(objects=[{"database": "ix"}]))

    assert summary.counts_match
    for coll, n_indexes in (("things", len(INDEXES) + 1), ("hashed", 4), ("ttl", 2), ("partial", 2),
                            ("collated", 4)):
        src_specs, dst_specs = encoded_indexes(src_client, f"ix.{coll}"), encoded_indexes(dst_client, f"ix.{coll}")
        assert len(src_specs) == n_indexes
        assert dst_specs == src_specs, coll
        assert_same_documents(src_client, dst_client, f"ix.{coll}")
    # the rebuilt indexes behave: text search with the weights, the hidden index is not used
    query = {"$text": {"$search": "titre"}}
    assert dst_client.ix.things.count_documents(query) == src_client.ix.things.count_documents(query) == 60
    explain = dst_client.ix.things.find({"hid": 5}).explain()["queryPlanner"]["winningPlan"]
    assert "hid_hidden" not in json.dumps(explain, default=str)


def seed_views(src_client) -> None:
    db = src_client.shop
    db.orders.insert_many([{"_id": i, "total": i * 10, "day": i % 7} for i in range(40)])
    db.create_collection("big_orders", viewOn="orders", pipeline=[{"$match": {"total": {"$gte": 200}}}])
    # sorts before its parent: created after it all the same
    db.create_collection("a_big_weekend", viewOn="big_orders", pipeline=[{"$match": {"day": {"$in": [5, 6]}}},
                                                                         {"$project": {"total": 1}}])
    db.create_collection("by_text", viewOn="orders", pipeline=[{"$sort": {"total": -1}}],
                         collation={"locale": "en", "strength": 1})
    # a pipeline that reads other collections, one of them renamed, at several depths
    db.customers.insert_many([{"_id": d, "name": f"c{d}"} for d in range(7)])
    db.create_collection("joined", viewOn="orders", pipeline=[
        {"$match": {"_id": {"$lt": 10}}},
        {"$lookup": {"from": "customers", "localField": "day", "foreignField": "_id", "as": "customer"}},
        {"$facet": {"all": [{"$unionWith": {"coll": "customers", "pipeline": [
            {"$graphLookup": {"from": "customers", "startWith": "$_id", "connectFromField": "_id",
                              "connectToField": "_id", "as": "same"}}]}}]}},
    ])


def check_views(src_client, dst_client) -> None:
    """Views, a view on a view, under a database rename and a renamed source collection."""
    assert collection_options(dst_client, "shop_v2.big_orders")["viewOn"] == "orders_2024"
    assert collection_options(dst_client, "shop_v2.a_big_weekend")["viewOn"] == "big_orders"
    for view in ("big_orders", "a_big_weekend", "by_text", "joined"):
        src_opts = collection_options(src_client, f"shop.{view}")
        dst_opts = collection_options(dst_client, f"shop_v2.{view}")
        # the same definition, but for the renamed collections it reads
        expected = json_util.dumps({k: v for k, v in src_opts.items() if k != "viewOn"}) \
            .replace('"customers"', '"clients"')
        assert json_util.dumps({k: v for k, v in dst_opts.items() if k != "viewOn"}) == expected
        assert list(dst_client.shop_v2[view].find()) == list(src_client.shop[view].find())
    assert json_util.dumps(collection_options(dst_client, "shop_v2.joined")).count('"clients"') == 3
    assert len(list(dst_client.shop_v2.a_big_weekend.find())) > 0
    assert_same_documents(src_client, dst_client, "shop.orders", "shop_v2.orders_2024")


def test_collection_options_and_views_are_recreated(src_client, dst_client, spec_for):
    seed_views(src_client)
    db = src_client.opt
    # capped: insertion order is the data's order, and older documents were evicted
    db.create_collection("capped", capped=True, size=64 * 1024, max=100)
    db.capped.insert_many([{"_id": (i * 37) % 150, "i": i} for i in range(150)])
    db.create_collection("collated", collation={"locale": "fr", "strength": 2, "numericOrdering": True})
    db.collated.insert_many([{"v": v} for v in ("côte", "cote", "10", "9")])
    validator = {"$and": [
        {"$jsonSchema": {"bsonType": "object", "required": ["code"],
                         "properties": {"code": {"bsonType": "string"}, "qty": {"bsonType": "long"}}}},
        {"code": {"$regex": Regex("^[A-Z]", "i")}},
        {"price": {"$gte": Decimal128("0.00")}},
    ]}
    db.create_collection("strict", validator=validator, validationLevel="strict", validationAction="error")
    db.strict.insert_one({"code": "A1", "qty": Int64(3), "price": Decimal128("1.50")})
    # a document the validator refuses, written past it: the copy must carry it as it is
    db.strict.insert_one({"code": 42}, bypass_document_validation=True)
    db.create_collection("lenient", validator={"n": {"$type": "int"}}, validationLevel="moderate",
                         validationAction="warn")
    db.lenient.insert_many([{"n": 1}, {"n": "not an int"}])
    db.create_collection("clustered", clusteredIndex={"key": {"_id": 1}, "unique": True, "name": "by_id"},
                         expireAfterSeconds=10**9)
    db.clustered.insert_many([{"_id": v} for v in (datetime.datetime(2030, 1, 1), 5, "s", {"x": 1})])
    db.create_collection("weather", timeseries={"timeField": "ts", "metaField": "meta", "granularity": "hours"},
                         expireAfterSeconds=10**9)
    start = datetime.datetime(2099, 1, 1)
    db.weather.insert_many([{"ts": start + datetime.timedelta(minutes=17 * i), "meta": {"station": i % 3},
                             "temp": 20.5 + i % 7} for i in range(300)])
    db.weather.create_index([("meta.station", 1), ("ts", -1)], name="station_time")
    db.create_collection("audited", changeStreamPreAndPostImages={"enabled": True})
    db.audited.insert_one({"x": 1})
    # mongodump's time-series sample: real buckets restored as mongorestore does, with its indexes
    ts_meta = dump_metadata("foo_ts")
    db.create_collection("foo_ts", timeseries={k: v for k, v in ts_meta["options"]["timeseries"].items()
                                               if k != "bucketMaxSpanSeconds"})
    insert_raw(src_client, "opt.system.buckets.foo_ts",
               load_bson("mongo-tools/mongorestore/system.buckets.foo_ts.bson"))
    create_indexes_from_dump(src_client, "opt.foo_ts", ts_meta)

    summary = migrate(spec_for(objects=[{"database": "opt"}, {"database": "shop"}],
                               name_mapping={"shop": "shop_v2", "shop.orders": "shop_v2.orders_2024",
                                             "shop.customers": "shop_v2.clients"}))

    assert summary.counts_match
    # the summary counts time-series data as the buckets that travel, and says so
    weather_row = next(line for line in format_summary(summary).splitlines() if line.startswith("opt.weather"))
    assert weather_row.endswith("(buckets)")
    assert not next(line for line in format_summary(summary).splitlines()
                    if line.startswith("opt.capped")).endswith("(buckets)")
    names = ["capped", "collated", "strict", "lenient", "clustered", "weather", "audited", "foo_ts"]
    for name in names:
        assert encoded_options(dst_client, f"opt.{name}") == encoded_options(src_client, f"opt.{name}"), name
        assert encoded_indexes(dst_client, f"opt.{name}") == encoded_indexes(src_client, f"opt.{name}"), name
    for name in ("capped", "collated", "strict", "lenient", "clustered", "audited"):
        assert_same_documents(src_client, dst_client, f"opt.{name}")
    assert collection_options(dst_client, "opt.capped") == {"capped": True, "size": 65536, "max": 100}
    # natural order of the capped collection is the source's insertion order
    natural = [bytes(d.raw) for d in dst_client.opt.get_collection("capped", codec_options=RAW).find()]
    assert natural == [bytes(d.raw) for d in db.get_collection("capped", codec_options=RAW).find()]
    assert len(natural) == 100
    # time series: the same buckets, and the same measurements read through the view
    for name in ("weather", "foo_ts"):
        assert_same_documents(src_client, dst_client, f"opt.system.buckets.{name}")
        assert_same_documents(src_client, dst_client, f"opt.{name}")
    assert dst_client.opt.foo_ts.count_documents({}) == src_client.opt.foo_ts.count_documents({}) > 0
    # the validator still holds on the destination
    assert raw_documents(dst_client, "opt", "strict") and dst_client.opt.strict.count_documents({"code": 42}) == 1
    check_views(src_client, dst_client)


def test_autoindexid_false_from_an_old_source_is_left_out(src_client, dst_client, spec_for):
    """A pre-4.0 source lists `autoIndexId: false` (mongo-tools' test_auto_idx dump); 6.0 refuses it
    outside `local`, so the target collection gets the standard _id index and the same documents."""
    metadata = dump_metadata("test_auto_idx")
    assert metadata["options"] == {"autoIndexId": False}
    insert_raw(src_client, "old.auto_idx", load_bson("mongo-tools/mongorestore/test_auto_idx.bson"))
    spec = spec_for(objects=[{"database": "old"}])
    plan = CollectionPlan(source_db="old", source_name="auto_idx", target_db="old", target_name="auto_idx",
                          kind="collection", options_ejson=json_util.dumps(metadata["options"]))

    assert create_target_collection(spec, plan) == "created"
    assert copy_collection_range(spec, CopyRange(plan=plan)).docs == 2
    build_indexes(spec, plan)

    assert_same_documents(src_client, dst_client, "old.auto_idx")
    assert list(encoded_indexes(dst_client, "old.auto_idx")) == ["_id_"]

