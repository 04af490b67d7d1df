"""Full migrations from old MongoDB sources (4.2.6, 4.4.2, 5.0.4; a 4.2.6 standalone too) to the 6.0.5
destination, through the real `mongo-migrate run` and `verify` commands.

Each source holds many BSON types, every index kind its version builds, a capped collection, a
validator, a default collation, views and (5.0) a time-series collection; the destination must hold the
same documents byte for byte and the same indexes, options and views. The old mongods come from
sandbox.servers (downloaded into the server cache on first use) and are shared by the session."""
from __future__ import annotations

import datetime
import uuid

import bson
import pytest
import yaml
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.dbref import DBRef
from bson.raw_bson import RawBSONDocument

from mongo_migrate.tasks.common import RAW
from tests.conftest import (assert_same_documents, collection_options, index_specs, insert_raw, load_bson,
                            raw_documents, user_collections)

DB = "legacy"
BASE_TIME = datetime.datetime(2026, 1, 1)  # after "now" minus the TTLs below, so nothing expires
TEN_YEARS_S = 10 * 365 * 86400


def _version(v: str) -> tuple[int, int]:
    major, minor, _ = v.split(".")
    return int(major), int(minor)


def raw(doc: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc))


def typed_documents(n: int) -> list[RawBSONDocument]:
    """n documents whose values cycle through the BSON types (field order left as written)."""
    makers = [
        lambda i: i, lambda i: Int64(2**40 + i), lambda i: i / 7, lambda i: Decimal128(f"{i}.10"),
        lambda i: f"é{i}日本", lambda i: Binary(bytes([i % 256]) * 5, i % 9),
        lambda i: Binary(uuid.UUID(int=i).bytes, 4), lambda i: ObjectId(i.to_bytes(12, "big")),
        lambda i: i % 2 == 0, lambda i: BASE_TIME + datetime.timedelta(seconds=i), lambda i: None,
        lambda i: Regex(f"^x{i}", "im"), lambda i: Code(f"return {i}"), lambda i: Code("x + y", {"y": i}),
        lambda i: Timestamp(1_600_000_000 + i, i), lambda i: MinKey(), lambda i: MaxKey(),
        lambda i: [i, {"a": [i, "s"]}, []], lambda i: {"z": i, "a": {"b": -0.0}},
        lambda i: DBRef("other", i, "db2"), lambda i: float("nan"),
    ]
    return [raw({"_id": i, "v": makers[i % len(makers)](i), "w": makers[(i * 7) % len(makers)](i), "i": i})
            for i in range(n)]


def load_source(client, version: str) -> dict[str, list[str]]:
    """Varied data on the source; returns which collections, views and time-series it made.

    Index kinds left out: geoHaystack (4.2, 4.4) is gone from 5.0, so a 6.0 destination cannot build
    it; a time-series collection's own indexes are the 5.0 case's `meta_time`."""
    v = _version(version)
    db = client[DB]
    insert_raw(client, f"{DB}.types", typed_documents(300))
    # deprecated types too (undefined, DBPointer, symbol), written as the file holds them
    insert_raw(client, f"{DB}.types", load_bson("mongo-tools/bsondump/all_types.bson"))

    # one collection for the index kinds
    docs = [{"_id": i, "n": i, "a": i % 10, "u": f"u{i}", "p": i % 40, "txt": f"the quick fox {i} jumps",
             "body": "naïve café" if i % 2 else "lorem ipsum", "loc": {"type": "Point",
             "coordinates": [-170 + i % 340, -80 + i % 160]}, "xy": [i % 180, i % 90], "h": f"h{i % 50}",
             "attrs": {"c": i % 3, "d": {"e": str(i)}}, "name": ("Émile", "emile", "Zoé")[i % 3], "v1": i,
             "created": BASE_TIME + datetime.timedelta(minutes=i), "hid": i % 5}
            for i in range(300)]
    for d in docs[::3]:
        d["s"] = d["n"]  # sparse: a third of the documents have the field
    db.indexed.insert_many(docs)
    ix = db.indexed
    ix.create_index("n", name="single")
    ix.create_index([("a", 1), ("n", -1)], name="compound")
    ix.create_index("u", unique=True, name="unique")
    ix.create_index("p", partialFilterExpression={"p": {"$gt": 10}}, name="partial")
    ix.create_index("s", sparse=True, name="sparse")
    ix.create_index("created", expireAfterSeconds=TEN_YEARS_S, name="ttl")
    ix.create_index([("txt", "text"), ("body", "text")], weights={"txt": 3}, default_language="english",
                    language_override="lang", name="text")
    ix.create_index([("loc", "2dsphere")], name="geo_2dsphere")
    ix.create_index([("xy", "2d")], min=-200, max=200, bits=20, name="geo_2d")
    ix.create_index([("h", "hashed")], name="hashed")
    ix.create_index([("attrs.$**", 1)], name="wildcard_path")
    ix.create_index([("name", 1)], collation={"locale": "fr", "strength": 2}, name="collation_fr")
    ix.create_index([("v1", 1)], v=1, name="version_1")
    if v >= (4, 4):
        ix.create_index([("hid", 1)], hidden=True, name="hidden")
        ix.create_index([("h", "hashed"), ("a", 1)], name="compound_hashed")
    # a whole-document wildcard index with a projection (one such index per collection)
    db.wild.insert_many([{"_id": i, "k": {"x": i}, "skip": i} for i in range(50)])
    db.wild.create_index([("$**", 1)], wildcardProjection={"skip": 0}, name="wildcard_all")

    # a capped collection that has wrapped around: its insertion order is part of its data
    db.create_collection("capped", capped=True, size=64 * 1024, max=200)
    db.capped.insert_many([{"_id": i, "x": "c" * (i % 30)} for i in range(300)])

    db.create_collection("validated", validator={"$jsonSchema": {
        "bsonType": "object", "required": ["name"], "properties": {"name": {"bsonType": "string"}}}},
        validationLevel="moderate", validationAction="error")
    db.validated.insert_many([{"_id": i, "name": f"n{i}"} for i in range(100)])

    # a default collation: indexes without their own take it; a text index must say "simple"
    db.create_collection("french", collation={"locale": "fr", "strength": 1})
    db.french.insert_many([{"_id": i, "name": ("Émile", "emile", "Zoé")[i % 3], "t": "à la"} for i in range(60)])
    db.french.create_index("name", name="by_name")
    db.french.create_index([("t", "text")], collation={"locale": "simple"}, name="text_simple")

    db.create_collection("recent", viewOn="indexed",
                         pipeline=[{"$match": {"n": {"$gte": 200}}}, {"$project": {"n": 1, "name": 1}}])
    db.create_collection("french_view", viewOn="french", pipeline=[{"$sort": {"name": 1}}],
                         collation={"locale": "fr", "strength": 1})
    made = {"collections": ["capped", "french", "indexed", "types", "validated", "wild"],
            "views": ["french_view", "recent"], "timeseries": []}

    if v >= (5, 0):
        db.create_collection("metrics", timeseries={"timeField": "t", "metaField": "m", "granularity": "minutes"},
                             expireAfterSeconds=TEN_YEARS_S)
        db.metrics.insert_many([{"t": BASE_TIME + datetime.timedelta(minutes=17 * i), "m": {"sensor": i % 4},
                                 "value": i * 1.5} for i in range(300)])
        db.metrics.create_index([("m.sensor", 1), ("t", -1)], name="meta_time")
        made["timeseries"].append("metrics")
    return made


def canonical(spec: dict) -> bytes:
    """What to compare an index spec or collection options by: exact BSON (types, nested field order)
    with the top-level fields in name order (listIndexes/listCollections order them differently across
    versions, and the order there means nothing)."""
    return bson.encode(dict(sorted(spec.items())))


def tolerated(ix: dict) -> dict:
    """An index spec as the 6.0.5 destination reports what it was given: the only differences the
    assertions tolerate are these, which the destination's version itself introduces.

    - a 2d index's `min`/`max`: 5.0+ store them as doubles whatever number they were given, where 4.2
      and 4.4 keep the type (`min: -200` on the source is `min: -200.0` on the target).
    - `ns`: 4.2 lists the namespace in each index spec, 4.4+ do not (index_specs() leaves it out).
    - the order of an index spec's top-level fields (5.0+ list a 2d index's `bits` before `min` and
      `max`): canonical() sorts them. Key patterns and every nested value keep their order.
    """
    ix = dict(ix)
    if "2d" in ix["key"].values():
        for bound in ("min", "max"):
            if isinstance(ix.get(bound), int):
                ix[bound] = float(ix[bound])
    return ix


def assert_same_indexes(src, dst, ns: str) -> None:
    a, b = index_specs(src, ns), index_specs(dst, ns)
    assert sorted(a) == sorted(b), ns
    for name in a:
        assert canonical(tolerated(b[name])) == canonical(tolerated(a[name])), (ns, a[name], b[name])


CASES = [
    pytest.param("4.2.6", False, id="4.2.6-replset"),
    pytest.param("4.4.2", False, id="4.4.2-replset"),
    pytest.param("5.0.4", False, id="5.0.4-replset"),
    pytest.param("4.2.6", True, id="4.2.6-standalone"),
]


@pytest.mark.parametrize("version, standalone", CASES)
def test_full_migration_from_an_old_source(version, standalone, old_source, dest, run_cli, tmp_path):
    src_server = old_source(version, standalone)
    with src_server.client() as src, dest.client() as dst:
        assert src.server_info()["version"] == version
        assert dst.server_info()["version"] == "6.0.5"
        made = load_source(src, version)
        spec = tmp_path / "spec.yaml"
        spec.write_text(yaml.safe_dump({
            "source": {"uri": src_server.admin_uri()}, "destination": {"uri": dest.admin_uri()},
            "objects": [{"database": DB}], "migration_types": ["full"],
        }))

        out = run_cli("run", str(spec))
        assert out.returncode == 0, out.stdout + out.stderr[-3000:]
        assert "counts match" in out.stdout, out.stdout

        # documents, byte for byte (time-series: their buckets, as the copy moves them)
        expected = sorted(made["collections"] + made["views"] + made["timeseries"])
        assert user_collections(dst, DB) == expected
        for name in made["collections"]:
            assert_same_documents(src, dst, f"{DB}.{name}")
        for name in made["timeseries"]:
            assert_same_documents(src, dst, f"{DB}.system.buckets.{name}")
            buckets = f"{DB}.system.buckets.{name}"
            assert canonical(collection_options(dst, buckets)) == canonical(collection_options(src, buckets))
            assert_same_indexes(src, dst, buckets)
            # and the measurements the server unpacks from them
            unpacked = [[bson.encode(d) for d in c[DB][name].find(sort=[("value", 1)])] for c in (src, dst)]
            assert unpacked[0] == unpacked[1] and len(unpacked[0]) == 300
        # a capped collection's natural (insertion) order is kept
        natural = [[bytes(d.raw) for d in c[DB].get_collection("capped", codec_options=RAW).find()]
                   for c in (src, dst)]
        assert natural[0] == natural[1] and [bson.decode(d)["_id"] for d in natural[1]] == list(range(100, 300))

        # indexes and options
        for name in made["collections"] + made["timeseries"]:
            ns = f"{DB}.{name}"
            assert_same_indexes(src, dst, ns)
            assert canonical(collection_options(dst, ns)) == canonical(collection_options(src, ns)), ns
        kinds = 15 if _version(version) >= (4, 4) else 13  # + hidden, compound hashed
        assert len(index_specs(dst, f"{DB}.indexed")) == kinds + 1  # and _id
        assert index_specs(dst, f"{DB}.indexed")["version_1"]["v"] == 1

        # views: same definition, same results
        for name in made["views"]:
            ns = f"{DB}.{name}"
            assert canonical(collection_options(dst, ns)) == canonical(collection_options(src, ns)), ns
            # (as sets: the order of equal sort keys is not part of a view's definition)
            assert sorted(bson.encode(d) for d in dst[DB][name].find()) == \
                   sorted(bson.encode(d) for d in src[DB][name].find()), ns

        verified = run_cli("verify", str(spec))
        assert verified.returncode == 0, verified.stdout + verified.stderr[-3000:]


@pytest.mark.parametrize("version", ["5.0.4", "6.0.5"])
def test_time_series_copy_resumes_from_its_checkpoint(version, old_source, request, dest):
    """A time-series collection is read from its buckets without an _id hint (5.0's list no _id
    index); an attempt that stopped part way resumes from its checkpoint."""
    from mongo_migrate.blocks.spec import META_DATABASE
    from mongo_migrate.tasks.common import to_ejson
    from mongo_migrate.tasks.copy import CopyRange, copy_collection_range
    from mongo_migrate.tasks.namespaces import plan_namespaces
    from mongo_migrate.tasks.schema import create_target_collection
    from mongo_migrate.tasks.state import COPY_UNITS
    from tests.conftest import make_spec

    server = request.getfixturevalue("source") if version == "6.0.5" else old_source(version)
    with server.client() as src, dest.client() as dst:
        src.ts.create_collection("m", timeseries={"timeField": "t", "metaField": "k", "granularity": "hours"})
        # buckets are made out of _id order (a bucket's _id starts with its first measurement's time)
        src.ts.m.insert_many([{"t": BASE_TIME - datetime.timedelta(days=(i * 37) % 400), "k": i % 7, "v": i}
                              for i in range(400)])
        spec = make_spec(server, dest, objects=[{"database": "ts"}], copy_options={"batch_docs": 25})
        [plan] = plan_namespaces(spec).data_plans
        assert plan.kind == "timeseries"
        create_target_collection(spec, plan)
        buckets = raw_documents(src, "ts", "system.buckets.m")  # in _id order
        assert len(buckets) > 100
        # an earlier attempt wrote the first half (all but one bucket), and checkpointed its last _id
        half = len(buckets) // 2
        written = [RawBSONDocument(b, RAW) for b in buckets[:half]]
        insert_raw(dst, "ts.system.buckets.m", written[:3] + written[4:])
        unit = CopyRange(plan=plan)
        dst[META_DATABASE][COPY_UNITS].insert_one({
            "_id": f"{spec.digest()}:{unit.unit_id}", "docs": half - 1, "bytes": 0,
            "resume_from": to_ejson({"_id": written[-1]["_id"]})})

        stats = copy_collection_range(spec, unit)

        # every bucket from the checkpoint on, once; the one left out before it stays out (no restart)
        assert raw_documents(dst, "ts", "system.buckets.m") == buckets[:3] + buckets[4:]
        assert stats.docs == len(buckets) - 1
        # and a fresh copy reads the whole collection
        dst.ts["system.buckets.m"].delete_many({})
        dst[META_DATABASE][COPY_UNITS].delete_many({})
        copy_collection_range(spec, unit)
        assert_same_documents(src, dst, "ts.system.buckets.m")
