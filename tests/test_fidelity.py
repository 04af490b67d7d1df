"""Documents arrive byte for byte: every BSON type, odd field names, size and depth limits, mixed
`_id` types across copy ranges, non-ASCII and dotted names. Each test runs the real `migrate` flow."""
from __future__ import annotations

import struct
import uuid

import bson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

import mongo_migrate.tasks.copy
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.tasks.common import from_ejson
from mongo_migrate.tasks.copy import split_collection
from mongo_migrate.tasks.namespaces import plan_namespaces
from tests.conftest import MAX_BSON, assert_same_documents, insert_raw, load_bson, raw_documents, sized


def raw(doc: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc))


def raw_int32_fields(*pairs: tuple[str, int]) -> RawBSONDocument:
    """A document written field by field: lets a test build what a dict cannot (repeated names)."""
    body = b"".join(b"\x10" + k.encode() + b"\x00" + struct.pack("<i", v) for k, v in pairs)
    return RawBSONDocument(struct.pack("<i", len(body) + 5) + body + b"\x00")


def nested(depth: int) -> dict:
    """A document whose innermost value sits `depth` subdocuments below the top."""
    doc: dict = {"leaf": 1}
    for _ in range(depth - 1):
        doc = {"s": doc}
    return doc


def deepest_accepted(coll) -> int:
    """The deepest nesting this server stores, found by trying inserts (binary search)."""
    lo, hi = 1, 400  # 1 is accepted; 400 is beyond any MongoDB's limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            coll.insert_one(raw({"_id": mid, "d": nested(mid)}))
            lo = mid
        except OperationFailure:
            hi = mid
    return lo


ODD_SHAPES = [
    # field order differs from any sorted order
    raw({"_id": "order", "z": 1, "a": 2, "m": {"y": 1, "b": 2, "_id": 3}}),
    # $-prefixed and dotted names: top level (6.0 stores them) and nested, inside arrays too
    raw({"_id": "dollar-top", "$set": 1, "$$x": {"$inc": 2}, "$": 3}),
    raw({"_id": "dots-top", "a.b": 1, ".": 2, "a..b": 3, ".lead": 4, "trail.": 5}),
    raw({"_id": "nested", "n": {"$gt": 1, "x.y": 2, "arr": [{"$k": 1, "k.k": 2}, {"": 3}]}}),
    raw({"_id": "empty-name", "": 1}),
    raw_int32_fields(("_id", 7), ("a", 1), ("a", 2)),  # the same field name twice
    raw({"_id": "numbers", "neg0": -0.0, "nan": float("nan"), "inf": float("-inf"),
         "dnan": Decimal128("NaN"), "dneg0": Decimal128("-0"), "i64": Int64(2**63 - 1),
         "i32": -(2**31), "dec": Decimal128("1.000")}),
    raw({"_id": "dates", "far": DatetimeMS(253402300800000 + 1), "early": DatetimeMS(-62135596800001)}),
    raw({"_id": "binaries", **{f"b{st}": Binary(b"\x00\xff" * 3, st) for st in (0, 1, 2, 3, 5, 6, 7, 0x80)},
         "uuid": Binary(uuid.UUID(int=7).bytes, 4)}),
    raw({"_id": "code", "scope": Code("x + y", {"y": {"z": [1]}}), "re": Regex("^a.b$", "imsux")}),
    raw({"_id": "text", "s": "naïve café 日本語 🚀 \u0000 inside", "utf8-name-ü": 1}),
]


def test_every_bson_type_field_shape_and_name_is_copied_byte_for_byte(src_client, dst_client, spec_for):
    insert_raw(src_client, "fidelity.all_types", load_bson("mongo-tools/bsondump/all_types.bson"))
    insert_raw(src_client, "fidelity.sample", load_bson("mongo-tools/bsondump/sample.bson"))
    # no _id in the file: the server adds one in front, and that stored document is what must travel
    insert_raw(src_client, "fidelity.all_in_one", load_bson("mongo-tools/bsondump/all_in_one_doc.bson"))
    insert_raw(src_client, "fidelity.shapes", ODD_SHAPES)
    # stored JavaScript is data too
    src_client.fidelity["system.js"].insert_one({"_id": "add", "value": Code("function (a, b) { return a + b; }")})
    # two documents of the largest size the server takes: a batch can't hold both
    big = [sized("big-max", MAX_BSON), sized("big-less", MAX_BSON - 1000)]
    insert_raw(src_client, "fidelity.big", big)
    with pytest.raises(OperationFailure):
        insert_raw(src_client, "fidelity.big", [sized("too-big", MAX_BSON + 1)])
    depth = deepest_accepted(src_client.fidelity.get_collection("deep"))
    assert depth >= 100  # MongoDB documents 100 levels; 6.0 stores a little more
    # non-ASCII database and collection names, dots in collection names, renamed on the way
    insert_raw(src_client, "données_δ.cafés", load_bson("mongo-tools/mongorestore/cafés.bson"))
    insert_raw(src_client, "données_δ.café.ünï.コード", [raw({"_id": i, "v": "é" * i}) for i in range(50)])
    insert_raw(src_client, "données_δ.a.b.c", [raw({"_id": "only"})])

    summary = migrate(spec_for(objects=[{"database": "fidelity"}, {"database": "données_δ"}],
                               name_mapping={"données_δ": "dönnées_2", "données_δ.a.b.c": "ziel_ß.x.y"}))

    assert summary.counts_match
    for coll in ("all_types", "sample", "all_in_one", "shapes", "big", "deep", "system.js"):
        assert_same_documents(src_client, dst_client, f"fidelity.{coll}")
    # the exact bytes we wrote are what the destination holds (the source did not normalise them)
    shapes = set(raw_documents(dst_client, "fidelity", "shapes"))
    assert {bytes(d.raw) for d in ODD_SHAPES} <= shapes
    assert {bytes(d.raw) for d in big} == set(raw_documents(dst_client, "fidelity", "big"))
    types = {bytes(d.raw) for d in load_bson("mongo-tools/bsondump/all_types.bson")}
    assert types == set(raw_documents(dst_client, "fidelity", "all_types"))
    deepest = dst_client.fidelity.deep.find_one({"_id": depth})
    assert deepest is not None and bson.encode(deepest) == bson.encode({"_id": depth, "d": nested(depth)})
    assert_same_documents(src_client, dst_client, "données_δ.cafés", "dönnées_2.cafés")
    assert_same_documents(src_client, dst_client, "données_δ.café.ünï.コード", "dönnées_2.café.ünï.コード")
    assert_same_documents(src_client, dst_client, "données_δ.a.b.c", "ziel_ß.x.y")
    assert sorted(dst_client["dönnées_2"].list_collection_names()) == ["café.ünï.コード", "cafés"]


def mixed_ids(n_per_type: int) -> list[dict]:
    """Documents whose _id take every type an _id may have, spread so that ranges cut across types."""
    makers = [
        lambda i: i,                                        # int32
        lambda i: Int64(10**12 + i),                        # int64
        lambda i: 0.5 + i * 1e6,                            # double
        lambda i: Decimal128(f"-{i}.25"),                   # decimal
        lambda i: f"s{i:05d}-ü",                            # string
        lambda i: {"k": i, "a": "x"} if i % 2 else {"a": "x", "k": i},  # subdocument, field order varies
        lambda i: Binary(uuid.UUID(int=i).bytes, 4),        # UUID
        lambda i: Binary(i.to_bytes(4, "big"), 0),          # generic binary
        lambda i: ObjectId(i.to_bytes(12, "big")),
        # dates: in datetime's range, past year 9999, before year 1
        lambda i: DatetimeMS((i - 1) * 86_400_000 if i % 3 == 0 else
                             (-1) ** i * (253_402_300_800_000 + i * 86_400_000)),
        lambda i: Timestamp(i + 1, i % 7),
    ]
    docs = [{"_id": make(i), "t": t, "i": i} for t, make in enumerate(makers) for i in range(n_per_type)]
    docs += [{"_id": MinKey()}, {"_id": MaxKey()}, {"_id": None}, {"_id": True}, {"_id": False},
             {"_id": DatetimeMS(-(10**14))}]
    return docs


def test_mixed_id_types_across_copy_ranges(src_client, dst_client, spec_for, monkeypatch):
    # a checkpoint after every batch: the last _id of batches inside each type is saved and read back
    monkeypatch.setattr(mongo_migrate.tasks.copy, "CHECKPOINT_EVERY_S", 0.0)
    docs = mixed_ids(300)
    insert_raw(src_client, "ids.mixed", [raw(d) for d in docs])
    spec = spec_for(objects=[{"database": "ids"}], copy_options={"range_docs": 1000, "batch_docs": 250})

    plan = plan_namespaces(spec).data_plans[0]
    ranges = split_collection(spec, plan)
    assert len(ranges) >= 3
    # the cuts fall between documents of different BSON types (the type byte of each bound)
    bound_types = {bson.encode(from_ejson(r.lower_ejson))[4] for r in ranges[1:]}
    assert len(bound_types) >= 2, bound_types

    summary = migrate(spec)

    assert summary.counts_match
    assert summary.collections[0].copied_docs == len(docs)
    assert_same_documents(src_client, dst_client, "ids.mixed")


def test_a_collection_of_mixed_id_types_splits_into_even_ranges(src_client, spec_for):
    """ObjectId, int, string and UUID _ids, 2,500 of each: ten ranges of about 1,000 documents each
    (the cuts come from a random sample: no range strays far from the mean)."""
    from mongo_migrate.tasks.verify import count_range_ids

    kinds = [lambda i: ObjectId(), lambda i: i, lambda i: f"user-{i:06d}", lambda i: Binary(uuid.uuid4().bytes, 4)]
    src_client.ids.mixed.insert_many([{"_id": make(i), "n": i} for make in kinds for i in range(2500)])
    spec = spec_for(objects=[{"database": "ids"}], copy_options={"range_docs": 1000})
    ranges = split_collection(spec, plan_namespaces(spec).data_plans[0], remember=False)
    counts = [count_range_ids(spec, r) for r in ranges]
    print(f"range sizes: {counts}")
    assert len(ranges) == 10 and sum(counts) == 10_000
    mean = sum(counts) / len(counts)
    assert 0.4 * mean <= min(counts) and max(counts) <= 2.0 * mean, counts


def test_selection_and_name_mapping(src_client, spec_for):
    from mongo_migrate.blocks.spec import SpecError, parse_spec

    for ns in ("shop.orders", "shop.carts", "crm.customers", "crm.leads", "other.x", "config.app_settings",
               "mongo_migrate_meta.runs"):
        db, _, coll = ns.partition(".")
        src_client[db][coll].insert_one({"_id": 1})
    src_client.shop.create_collection("open_carts", viewOn="carts", pipeline=[])
    try:
        def targets(**fields) -> dict[str, str]:
            return {p.source_ns: p.target_ns for p in plan_namespaces(spec_for(**fields)).collections}

        # nothing named: every database but admin, local, config and the migration's own
        assert targets() == {n: n for n in ("crm.customers", "crm.leads", "other.x", "shop.carts",
                                            "shop.open_carts", "shop.orders")}
        # a database rename and a collection moved to another database, at once; some collections only
        assert targets(objects=[{"database": "shop"}, {"database": "crm", "collections": ["customers"]}],
                       name_mapping={"shop": "shop_v2", "shop.orders": "archive.orders_2024",
                                     "crm.customers": "sales.clients"}) == {
            "shop.orders": "archive.orders_2024", "shop.carts": "shop_v2.carts",
            "shop.open_carts": "shop_v2.open_carts", "crm.customers": "sales.clients"}
        # config only when named, and never the collections the server keeps there
        whole_config = plan_namespaces(spec_for(objects=[{"database": "config"}]))
        assert [p.source_ns for p in whole_config.collections] == ["config.app_settings"]
        assert whole_config.config_selected and not whole_config.missing
        internal = plan_namespaces(spec_for(objects=[{"database": "config",
                                                      "collections": ["app_settings", "transactions"]}]))
        assert [p.source_ns for p in internal.collections] == ["config.app_settings"]
        assert internal.missing == ["config.transactions (managed by the server, never migrated)"]
        # names that are not on the source are reported, not skipped silently
        assert plan_namespaces(spec_for(objects=[{"database": "nosuch"}, {"database": "crm",
                               "collections": ["customers", "gone"]}])).missing == ["nosuch", "crm.gone"]
    finally:
        src_client.config.drop_collection("app_settings")
        src_client.drop_database("mongo_migrate_meta")

    # the spec refuses admin and local, and mapping into a reserved database, naming the key
    base = {"source": {"uri": "mongodb://h:1"}, "destination": {"uri": "mongodb://h:2"}}
    for fields, key, words in (
        ({"objects": [{"database": "admin"}]}, "objects.0.database", "admin database cannot be migrated"),
        ({"objects": [{"database": "local"}]}, "objects.0.database", "local database cannot be migrated"),
        ({"name_mapping": {"shop": "config"}}, "name_mapping", "reserved database 'config'"),
        ({"name_mapping": {"shop.a": "local.a"}}, "name_mapping", "reserved database 'local'"),
    ):
        with pytest.raises(SpecError) as err:
            parse_spec({**base, **fields})
        assert f"spec: {key}: " in str(err.value) and words in str(err.value)
