"""The precheck's version row and incremental prerequisites on real old sources."""
from __future__ import annotations

from mongo_migrate.flows.migrate import precheck
from tests.conftest import make_spec


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
