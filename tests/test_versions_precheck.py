"""The precheck's version row and incremental prerequisites on real old sources."""
from __future__ import annotations

from bson import Decimal128, Int64

from mongo_migrate.flows.migrate import precheck
from mongo_migrate.tasks.namespaces import plan_namespaces
from mongo_migrate.tasks.precheck.data import documents_too_large_for_an_event, fixed_size_ids
from tests.conftest import MAX_BSON, insert_large, make_spec, sized


def test_a_4_2_standalone_is_refused_for_incremental_with_the_standalone_remedy(old_source, dest):
    source = old_source("4.2.6", standalone=True)
    with source.client() as c:
        c.shop.orders.insert_many([{"_id": i} for i in range(10)])
    spec = make_spec(source, dest, objects=[{"database": "shop"}], migration_types=["full", "incremental"])
    report = precheck(spec).report
    assert [i.name for i in report.failed] == ["incremental prerequisites", "oplog window"]
    row = report.item("incremental prerequisites")
    assert row.detail.startswith("the source is a standalone mongod")
    assert row.remedy.startswith("restart the source as a single-node replica set") and "--replSet rs0" in row.remedy
    version = report.item("source version and topology")
    assert (version.status, version.detail) == ("passed", "MongoDB 4.2.6, standalone: full migration (a "
                                                "standalone has no change stream: see incremental prerequisites)")


def test_the_version_row_says_how_ddl_is_captured(old_source, dest):
    for v in ("4.4.2", "5.0.4"):
        source = old_source(v)
        with source.client() as c:
            c.shop.orders.insert_one({"_id": 1})
        report = precheck(make_spec(source, dest, objects=[{"database": "shop"}],
                                    migration_types=["full", "incremental"])).report
        assert report.passed, [i.model_dump() for i in report.failed]
        row = report.item("source version and topology")
        assert row.detail.startswith(f"MongoDB {v}, replica set: full + incremental migration")
        assert row.detail.endswith(f"read from the source's oplog (MongoDB {v[:3]} streams none)")
        assert report.item("incremental prerequisites").detail.endswith("; DDL from the oplog")


def test_documents_too_large_for_a_change_event_are_found_on_4_2_as_on_6_0(old_source, dest, source):
    # 4.2 has no $bsonSize: the _id index and then the documents are sized from their raw bytes instead
    for src in (old_source("4.2.6"), source):
        with src.client() as c:
            c.drop_database("shop")
            c.shop.ids.insert_many([{"_id": i} for i in range(10)] + [{"_id": "s" * 100}])
            c.shop.numbers.insert_many([{"_id": 1}, {"_id": Int64(2)}, {"_id": Decimal128("2.5")}, {"_id": 3.5}])
            c.shop.oids.insert_many([{} for _ in range(3)])
            insert_large(c.shop.big, sized(1, MAX_BSON))  # any size goes with a small _id
            insert_large(c.shop.big, sized("k" * 4000, MAX_BSON - 4096))
            c.shop.big.insert_one({"_id": "k" * 5000, "small": True})
            version = c.server_info()["version"]
            # one fixed-size type from end to end of the _id index: its two ends are all that is read
            assert [fixed_size_ids(c.shop[name]) for name in ("numbers", "oids", "ids", "big")] == \
                [True, True, False, False], version
        spec = make_spec(src, dest, objects=[{"database": "shop"}], migration_types=["full", "incremental"])
        found = {p.source_name: documents_too_large_for_an_event(spec, p, version)
                 for p in plan_namespaces(spec).collections}
        assert found == {"ids": (0, 0), "numbers": (0, 0), "oids": (0, 0), "big": (1, MAX_BSON - 4096)}, version
