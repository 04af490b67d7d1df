"""The precheck: every item passes, warns and fails on real mongods (an --auth replica set with users
that lack a role, a standalone, the session's source and destination). Items are called as the plain
functions they are; the flow, its table artifact, the CLI and "nothing written" are tested at the end."""
from __future__ import annotations

import datetime as dt
import json
import socket
import time
from types import SimpleNamespace

import pytest
from bson import Code
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from mongo_migrate.blocks.mongo import close_clients
from mongo_migrate.blocks.spec import SpecError, parse_spec
from mongo_migrate.flows.cli import format_precheck
from mongo_migrate.flows.migrate import PrecheckFailed, migrate, precheck
from mongo_migrate.sandbox.mongod import Mongod, free_port
from mongo_migrate.tasks import precheck as pc
from mongo_migrate.tasks.connect import EndpointInfo, check_connectivity
from mongo_migrate.tasks.namespaces import plan_namespaces
from tests.conftest import MAX_BSON, insert_large, make_spec, sized

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A replica set with --auth, data, and users that each lack something."""
    m = Mongod(tmp_path_factory.mktemp("auth"), replset="authrs", auth=True).start()
    with m.client() as c:
        c.shop.orders.insert_many([{"_id": i, "n": i} for i in range(200)])
        c.shop.create_collection("metrics", timeseries={"timeField": "t", "metaField": "m"})
        c.shop.metrics.insert_many([{"t": dt.datetime(2024, 1, 1), "m": 1, "v": i} for i in range(20)])
        c.crm.leads.insert_one({"x": 1})
        c.admin.command("createRole", "shopBucketsReader", roles=[], privileges=[
            {"resource": {"db": "shop", "system_buckets": ""}, "actions": ["find"]}])
        c.admin.command("createRole", "shopCopyBucketsWriter", roles=[], privileges=[
            {"resource": {"db": "shop_copy", "system_buckets": ""},
             "actions": ["find", "insert", "bypassDocumentValidation"]}])
        users = {
            # least privilege for a full migration of shop (time-series included)
            "reader": [{"role": "read", "db": "shop"}, "shopBucketsReader"],
            # ... and for an incremental one: the sync's change stream spans the deployment
            "reader_incremental": ["readAnyDatabase", {"role": "read", "db": "local"}],
            "reader_no_buckets": [{"role": "read", "db": "shop"}],
            "writer": [{"role": "readWrite", "db": "shop_copy"}, {"role": "dbAdmin", "db": "shop_copy"},
                       "shopCopyBucketsWriter", {"role": "readWrite", "db": "mongo_migrate_meta"}],
            "writer_no_bypass": [{"role": "readWrite", "db": "shop_copy"}, "shopCopyBucketsWriter",
                                 {"role": "readWrite", "db": "mongo_migrate_meta"}],
            "writer_no_meta": [{"role": "readWrite", "db": "shop_copy"}, {"role": "dbAdmin", "db": "shop_copy"},
                               "shopCopyBucketsWriter"],
        }
        for user, roles in users.items():
            c.admin.command("createUser", user, pwd=PASSWORD, roles=roles)
    yield m
    close_clients()
    m.destroy()


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    m = Mongod(tmp_path_factory.mktemp("standalone")).start()
    with m.client() as c:
        c.shop.orders.insert_many([{"_id": i} for i in range(10)])
    yield m
    close_clients()
    m.destroy()


def auth_spec(auth_server, source_user="reader", dest_user="writer", **fields):
    data = {
        "source": {"uri": auth_server.uri(source_user, PASSWORD)},
        "destination": {"uri": auth_server.uri(dest_user, PASSWORD)},
        "objects": [{"database": "shop"}],
        "name_mapping": {"shop": "shop_copy"},
    }
    data.update(fields)
    return parse_spec(data)


def gather(spec):
    """What the precheck flow hands its items: both endpoints, the plan, the source inventory."""
    source = check_connectivity(spec.source, "source")
    destination = check_connectivity(spec.destination, "destination")
    plan = plan_namespaces(spec)
    return SimpleNamespace(source=source, destination=destination, plan=plan,
                           inventory=pc.read_source_inventory(spec, plan))


# -- 1/2 connectivity -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def silent_port():
    """A port that accepts connections and never answers, like a black-holing firewall."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("case", ["refused", "dns", "timeout", "auth", "tls", "destination refused"])
def test_connectivity_fails_with_its_cause(case, auth_server, source_server, silent_port):
    uri = {
        "refused": f"mongodb://127.0.0.1:{free_port()}/",
        "destination refused": f"mongodb://127.0.0.1:{free_port()}/",
        "dns": "mongodb://no-such-host.invalid:27017/",
        "timeout": f"mongodb://127.0.0.1:{silent_port}/",
        "auth": auth_server.uri("reader", "wrong-password"),
        "tls": source_server.uri(tls="true", tlsAllowInvalidCertificates="true"),
    }[case]
    role = "destination" if case.startswith("destination") else "source"
    row = pc.check_endpoint(check_connectivity(parse_spec(
        {"source": {"uri": uri, "timeout_s": 1}, "destination": {"uri": uri}}).source, role))
    expected = {
        "refused": ("connection refused", "start mongod"),
        "destination refused": ("connection refused", "start mongod"),
        "dns": ("does not resolve", "host name"),
        "timeout": ("no answer within the connect timeout", "firewalls"),
        "auth": ("authentication failed", "username/password"),
        "tls": ("TLS", "tls_ca_file"),
    }[case]
    assert (row.name, row.status) == (f"{role} connectivity", "failed")
    assert expected[0] in row.detail and expected[1] in row.remedy
    assert "wrong-password" not in row.detail


def test_connectivity_passes_with_version_and_topology(auth_server):
    spec = auth_spec(auth_server)
    row = pc.check_endpoint(check_connectivity(spec.destination, "destination"))
    assert row.status == "passed"
    assert "MongoDB 6.0.5, replica_set" in row.detail and PASSWORD not in row.detail


# -- 3 source version and topology ------------------------------------------------------------

def test_source_version_and_topology(source_server, standalone):
    rs = parse_spec({"source": {"uri": source_server.uri()}, "destination": {"uri": source_server.uri()}})
    row = pc.check_source_version(rs, check_connectivity(rs.source, "source"))
    assert (row.status, row.detail) == ("passed", "MongoDB 6.0.5, replica set: full migration")

    alone = parse_spec({"source": {"uri": standalone.uri()}, "destination": {"uri": source_server.uri()}})
    row = pc.check_source_version(alone, check_connectivity(alone.source, "source"))
    assert (row.status, row.detail) == ("passed", "MongoDB 6.0.5, standalone: full migration")

    # one member reached directly: a failover would stop the migration
    direct = parse_spec({"source": {"uri": f"mongodb://{source_server.host}/?directConnection=true"},
                         "destination": {"uri": source_server.uri()}})
    row = pc.check_source_version(direct, check_connectivity(direct.source, "source"))
    assert row.status == "warning" and "directConnection" in row.detail and "replicaSet" in row.remedy

    # the version rule on version strings (real 4.2-5.0 servers: tests/test_versions.py)
    assert pc.classify_source_version("4.4.0", "sharded").status == "passed"
    old = pc.classify_source_version("3.4.24", "replica_set")
    assert old.status == "failed" and "older than 3.6" in old.detail
    assert "3.6 or later" in old.remedy and "mongodump and mongorestore" in old.remedy
    untested = pc.classify_source_version("4.0.28", "replica_set")
    assert untested.status == "warning" and "untested on 4.0" in untested.detail
    no_sync = pc.classify_source_version("4.0.28", "replica_set", incremental=True)
    assert no_sync.status == "failed" and "incremental migration needs 4.2" in no_sync.detail
    assert "migration_types: [full]" in no_sync.remedy
    row = pc.classify_source_version("4.2.6", "replica_set", incremental=True)
    assert row.status == "passed" and "read from the source's oplog (MongoDB 4.2 streams none)" in row.detail
    row = pc.classify_source_version("6.0.5", "replica_set", incremental=True)
    assert row.detail.endswith("every change, DDL included (expanded events)")
    row = pc.classify_source_version("4.2.6", "standalone", incremental=True)
    assert row.detail == "MongoDB 4.2.6, standalone: full migration (a standalone has no change stream: " \
                         "see incremental prerequisites)"


# -- 4 destination compatibility --------------------------------------------------------------

def test_destination_compatibility_passes_for_every_index_kind(src_client, spec_for):
    shop = src_client.shop
    shop.places.create_index([("loc", "2dsphere")])
    shop.places.create_index([("xy", "2d")])
    shop.places.create_index([("text", "text")], weights={"text": 3}, default_language="french")
    shop.places.create_index([("$**", 1)], name="wild")
    shop.places.create_index([("h", "hashed")])
    shop.places.create_index([("at", 1)], expireAfterSeconds=3600)
    shop.places.create_index([("u", 1)], unique=True, partialFilterExpression={"u": {"$exists": True}})
    shop.create_collection("clustered", clusteredIndex={"key": {"_id": 1}, "unique": True})
    shop.create_collection("metrics", timeseries={"timeField": "t", "metaField": "m"})
    shop.metrics.create_index([("v", 1)])  # a measurement field: needs FCV 6.0
    spec = spec_for(objects=[{"database": "shop"}])
    g = gather(spec)
    row = pc.check_destination_compatibility(g.source, g.destination, g.inventory)
    assert row.status == "passed", row
    assert "MongoDB 6.0.5 (FCV 6.0), wiredTiger" in row.detail


def test_destination_at_a_lower_fcv_warns_and_fails_on_what_it_cannot_build(auth_server, src_client, source_server):
    src_client.shop.create_collection("clustered", clusteredIndex={"key": {"_id": 1}, "unique": True})
    src_client.shop.create_collection("metrics", timeseries={"timeField": "t", "metaField": "m"})
    src_client.shop.metrics.create_index([("v", 1)], name="v_1")
    src_client.crm.plain.insert_one({"a": 1})
    admin = auth_server.client()
    admin.admin.command("setFeatureCompatibilityVersion", "5.0")
    try:
        def spec(db):
            return parse_spec({"source": {"uri": source_server.uri()},
                               "destination": {"uri": auth_server.admin_uri()}, "objects": [{"database": db}]})
        g = gather(spec("crm"))
        row = pc.check_destination_compatibility(g.source, g.destination, g.inventory)
        assert row.status == "warning"
        assert "feature compatibility 5.0 is lower than the source's 6.0" in row.detail
        assert "setFeatureCompatibilityVersion: '6.0'" in row.remedy

        g = gather(spec("shop"))
        row = pc.check_destination_compatibility(g.source, g.destination, g.inventory)
        assert row.status == "failed"
        assert "shop.clustered: clustered collections need feature compatibility 5.3" in row.detail
        assert "shop.metrics: index v_1: indexes on time-series measurement fields (v)" in row.detail
        # the server agrees: that is what it refuses at FCV 5.0
        with pytest.raises(Exception, match="clusteredIndex"):
            admin.scratch.create_collection("c", clusteredIndex={"key": {"_id": 1}, "unique": True})
    finally:
        admin.admin.command("setFeatureCompatibilityVersion", "6.0")
        admin.close()


def test_destination_account_without_cluster_monitor_warns(auth_server):
    spec = auth_spec(auth_server)
    g = gather(spec)
    assert g.destination.fcv is None and g.destination.storage_engine is None
    row = pc.check_destination_compatibility(g.source, g.destination, g.inventory)
    assert row.status == "warning"
    assert "storage engine could not be read" in row.detail and "clusterMonitor" in row.remedy


def test_index_classifier_on_specs_a_60_server_cannot_hold():
    # geoHaystack cannot be created on 6.0, so its spec is given as a 4.4 source lists it
    haystack = {"v": 2, "key": {"pos": "geoHaystack", "type": 1}, "name": "pos_geoHaystack_type_1",
                "bucketSize": 1.0}
    assert "removed in MongoDB 5.0" in pc.index_problem(haystack, "collection", {}, (6, 0))
    assert pc.index_problem(haystack, "collection", {}, (4, 4)) is None
    compound_wildcard = {"key": {"a": 1, "$**": 1}, "name": "cw"}
    assert "7.0" in pc.index_problem(compound_wildcard, "collection", {}, (6, 0))
    assert pc.collection_problem("timeseries", {"timeseries": {"timeField": "t"}}, (4, 4))
    older = EndpointInfo(role="destination", display="d", reachable=True, version="5.0.3",
                         storage_engine="wiredTiger", fcv="5.0")
    newer = EndpointInfo(role="source", display="s", reachable=True, version="6.0.5", fcv="6.0")
    row = pc.classify_destination(newer, older, pc.SourceInventory())
    assert row.status == "warning" and "older than the source's 6.0.5" in row.detail


# -- 5/6 permissions --------------------------------------------------------------------------

def test_source_permissions(auth_server):
    row = pc.check_source_permissions(auth_spec(auth_server), plan_namespaces(auth_spec(auth_server)))
    assert row.status == "passed" and "reader@admin" in row.detail

    # time-series data lives in system.buckets.*, which the read role does not cover
    spec = auth_spec(auth_server, source_user="reader_no_buckets")
    row = pc.check_source_permissions(spec, plan_namespaces(spec))
    assert row.status == "failed"
    assert "shop.system.buckets.metrics: find" in row.detail
    assert "{resource: {db: 'shop', system_buckets: ''}, actions: ['find']}" in row.remedy

    # incremental also needs change streams and the oplog
    spec = auth_spec(auth_server, migration_types=["full", "incremental"])
    row = pc.check_source_permissions(spec, plan_namespaces(spec))
    assert row.status == "failed"
    assert row.detail.endswith("lacks every database: changeStream, find; local.oplog.rs: find, collStats")
    assert "grantRolesToUser('reader', ['readAnyDatabase', {role: 'read', db: 'local'}])" in row.remedy
    assert pc.check_incremental_prerequisites(spec, check_connectivity(spec.source, "source"),
                                              None).status == "failed"
    spec = auth_spec(auth_server, source_user="reader_incremental", migration_types=["full", "incremental"])
    row = pc.check_source_permissions(spec, plan_namespaces(spec))
    assert row.status == "passed" and "a change stream over the deployment" in row.detail
    assert pc.check_incremental_prerequisites(spec, check_connectivity(spec.source, "source"),
                                              None).status == "passed"

    # every database asked for, but the account can list only its own
    spec = auth_spec(auth_server, objects=[], name_mapping={})
    row = pc.check_source_permissions(spec, plan_namespaces(spec))
    assert row.status == "warning" and "cannot list every database" in row.detail


def test_source_permissions_without_access_control(source_server, src_client):
    src_client.shop.orders.insert_one({})
    spec = make_spec(source_server, source_server)
    row = pc.check_source_permissions(spec, plan_namespaces(spec))
    assert row.status == "passed" and "does not enforce access control" in row.detail


def test_destination_permissions(auth_server):
    spec = auth_spec(auth_server)
    row = pc.check_destination_permissions(spec, plan_namespaces(spec))
    assert row.status == "passed" and "writer@admin" in row.detail

    spec = auth_spec(auth_server, dest_user="writer_no_bypass")
    row = pc.check_destination_permissions(spec, plan_namespaces(spec))
    assert row.status == "failed" and row.detail.endswith("lacks shop_copy: bypassDocumentValidation")
    assert "{role: 'dbAdmin', db: 'shop_copy'}" in row.remedy

    spec = auth_spec(auth_server, dest_user="writer_no_meta")
    row = pc.check_destination_permissions(spec, plan_namespaces(spec))
    assert row.status == "failed"
    assert "mongo_migrate_meta: find, insert, update, remove, createCollection, createIndex" in row.detail
    assert "{role: 'readWrite', db: 'mongo_migrate_meta'}" in row.remedy

    # a source account as destination: it may write nothing
    spec = auth_spec(auth_server, dest_user="reader")
    row = pc.check_destination_permissions(spec, plan_namespaces(spec))
    assert row.status == "failed" and "shop_copy: insert, update, remove" in row.detail
    assert "shop_copy.system.buckets.metrics: insert, bypassDocumentValidation, find" in row.detail


def test_least_privilege_accounts_migrate_for_real(auth_server):
    """The roles the permission items ask for are enough: a full migration with them succeeds."""
    spec = auth_spec(auth_server)
    summary = migrate(spec)
    assert summary.counts_match
    with auth_server.client() as c:
        assert c.shop_copy.orders.count_documents({}) == 200
        assert c.shop_copy.metrics.count_documents({}) == 20
        c.drop_database("shop_copy")
        c.drop_database("mongo_migrate_meta")


# -- 7 incremental prerequisites ---------------------------------------------------------------

def test_standalone_source_with_incremental_fails_with_the_steps(standalone, source_server):
    spec = parse_spec({"source": {"uri": standalone.uri()}, "destination": {"uri": source_server.uri()},
                       "migration_types": ["full", "incremental"]})
    source = check_connectivity(spec.source, "source")
    row = pc.check_incremental_prerequisites(spec, source, plan_namespaces(spec))
    assert row.status == "failed" and "standalone" in row.detail
    assert "--replSet rs0" in row.remedy
    assert f"rs.initiate({{_id: 'rs0', members: [{{_id: 0, host: '{standalone.host}'}}]}})" in row.remedy
    assert "replicaSet=rs0" in row.remedy
    assert pc.check_oplog_window(spec, source, pc.SourceInventory()).status == "failed"

    full_only = parse_spec({"source": {"uri": standalone.uri()}, "destination": {"uri": source_server.uri()}})
    row = pc.check_incremental_prerequisites(full_only, source, None)
    assert (row.status, row.detail) == ("passed", "not needed: full migration only")


def test_replica_set_source_with_incremental_passes(src_client, spec_for):
    src_client.shop.orders.insert_one({"a": 1})
    spec = spec_for(migration_types=["full", "incremental"])
    row = pc.check_incremental_prerequisites(spec, check_connectivity(spec.source, "source"),
                                             plan_namespaces(spec))
    assert row.status == "passed" and "change streams can be opened" in row.detail


# -- 8 oplog window ----------------------------------------------------------------------------

def test_oplog_window_read_end_to_end(src_client, spec_for):
    src_client.shop.orders.insert_many([{"pad": "x" * 1000} for _ in range(2000)])
    spec = spec_for(migration_types=["full", "incremental"])
    g = gather(spec)
    window = pc.read_oplog_window(spec.source.resolve())
    assert window.first <= window.last and window.size_bytes > 2_000_000 and window.max_bytes > 0
    rate = pc.measure_copy_rate(spec, g.inventory)
    assert rate > 0
    row = pc.check_oplog_window(spec, g.source, g.inventory)
    assert row.status == "passed" and "margin" in row.detail and "measured" in row.detail
    assert pc.check_oplog_window(spec_for(), g.source, g.inventory).detail == "not needed: full migration only"


def test_oplog_window_classifier():
    # a full oplog holding 2 hours; 10 GB to copy
    first = dt.datetime(2024, 1, 1)
    window = pc.OplogWindow(first=first, last=first + dt.timedelta(hours=2), size_bytes=10**9,
                            max_bytes=10**9)
    ten_gb = 10 * 10**9
    fast, medium, slow = ten_gb / 600, ten_gb / 3600, ten_gb / (4 * 3600)  # 10 min, 1 h, 4 h
    assert pc.classify_oplog_window(window, ten_gb, fast).status == "passed"
    row = pc.classify_oplog_window(window, ten_gb, medium)
    assert row.status == "warning" and "2.00x" in row.detail and "replSetResizeOplog" in row.remedy
    row = pc.classify_oplog_window(window, ten_gb, slow)
    assert row.status == "failed" and "0.50x" in row.detail
    # 3 x 4 h at 0.5 GB/h: a 6 GB oplog
    assert "at least 6,000 MB" in row.remedy
    # an oplog not yet full is projected to its configured size at the current write rate
    young = window.model_copy(update={"size_bytes": 10**8})
    assert young.hours == pytest.approx(20.0)
    # a fresh replica set: every entry in the same second, 1 MB of a 1 GB oplog used so far
    fresh = pc.OplogWindow(first=first, last=first, size_bytes=10**6, max_bytes=10**9)
    assert fresh.hours == pytest.approx(1000 / 3600)
    row = pc.classify_oplog_window(fresh, 10**6, 10**6 / 10)  # a 10 s copy
    assert row.status == "passed" and "not full yet" in row.detail


# -- 9 destination storage ---------------------------------------------------------------------

def test_destination_storage(src_client, spec_for):
    src_client.shop.orders.insert_many([{"pad": "x" * 10_000} for _ in range(300)])  # ~3 MB
    spec = spec_for(objects=[{"database": "shop"}])
    g = gather(spec)
    row = pc.check_destination_storage(spec, g.plan, g.inventory)
    assert row.status == "passed" and "free on disk" in row.detail

    small = spec_for(objects=[{"database": "shop"}], destination={"uri": spec.destination.uri, "storage_gb": 0.002})
    row = pc.check_destination_storage(small, g.plan, g.inventory)
    assert row.status == "failed" and "declared capacity 0.002 GB" in row.detail
    assert "grow the destination's storage" in row.remedy

    free = pc.DestinationSpace(free_bytes=1_000_000)
    assert pc.classify_storage(3_300_000, free, None).status == "failed"


def test_inventory_of_a_live_source_skips_a_collection_dropped_after_listing(src_client, spec_for):
    """A live source drops collections while the precheck reads it (a rerun of an incremental
    migration prechecks while the business writes): one gone between listing and sizing is skipped."""
    src_client.shop.orders.insert_many([{"_id": i} for i in range(10)])
    src_client.shop.tmp.insert_one({"_id": 1})
    src_client.shop.create_collection("swapped")
    spec = spec_for(objects=[{"database": "shop"}])
    plan = plan_namespaces(spec)
    src_client.shop.drop_collection("tmp")
    src_client.shop.drop_collection("swapped")
    src_client.shop.command("create", "swapped", viewOn="orders", pipeline=[])
    inventory = pc.read_source_inventory(spec, plan)
    assert inventory.error is None
    assert [(c.plan.source_name, c.docs) for c in inventory.collections] == [("orders", 10)]

def test_destination_storage_unknown_free_space_warns(auth_server):
    with auth_server.client() as c:
        c.drop_database("mongo_migrate_meta")
    spec = auth_spec(auth_server)
    g = gather(spec)
    row = pc.check_destination_storage(spec, g.plan, g.inventory)
    assert row.status == "warning" and "free space could not be read" in row.detail
    declared = auth_spec(auth_server, destination={"uri": auth_server.uri("writer", PASSWORD), "storage_gb": 10})
    assert pc.check_destination_storage(declared, g.plan, g.inventory).status == "passed"


# -- 10 objects --------------------------------------------------------------------------------

def test_objects(src_client, spec_for):
    src_client.shop.orders.insert_one({})
    src_client.shop["system.js"].insert_one({"_id": "f", "value": Code("function () { return 1 }")})
    spec = spec_for(objects=[{"database": "shop"}])
    [row] = pc.check_objects(spec, plan_namespaces(spec))
    assert row.status == "passed" and "system collections skipped: shop.system.js" in row.detail

    spec = spec_for(objects=[{"database": "shop", "collections": ["orders", "nope"]}, {"database": "gone"}])
    [row] = pc.check_objects(spec, plan_namespaces(spec))
    assert row.status == "failed" and "gone" in row.detail and "shop.nope" in row.detail

    src_client.config.app_settings.insert_one({"k": 1})
    spec = spec_for(objects=[{"database": "shop"}, {"database": "config"}])
    rows = pc.check_objects(spec, plan_namespaces(spec))
    assert [r.status for r in rows] == ["passed", "warning"] and rows[1].name == "config database"
    src_client.config.drop_collection("app_settings")

    for bad in ({"objects": [{"database": "admin"}]}, {"objects": [{"database": "local"}]}):
        with pytest.raises(SpecError, match="cannot be migrated"):
            parse_spec({"source": {"uri": "mongodb://a"}, "destination": {"uri": "mongodb://b"}, **bad})


# -- 11 name mapping ---------------------------------------------------------------------------

def test_name_mapping(src_client, dst_client, spec_for):
    src_client.shop.orders.insert_one({})
    src_client.crm.orders.insert_one({})
    spec = spec_for(name_mapping={"shop": "sales"})
    row = pc.check_name_mapping(spec, plan_namespaces(spec))
    assert row.status == "passed" and "(2 renamed)" not in row.detail and "(1 renamed)" in row.detail

    # a database rename onto another selected database: two sources, one target
    spec = spec_for(name_mapping={"crm": "shop"})
    row = pc.check_name_mapping(spec, plan_namespaces(spec))
    assert row.status == "failed" and "crm.orders and shop.orders -> shop.orders" in row.detail.replace(
        "shop.orders and crm.orders", "crm.orders and shop.orders")

    # names the destination refuses: too long, and a case-only difference from an existing database
    dst_client.Sales.keep.insert_one({})
    spec = spec_for(name_mapping={"shop": "sales", "crm.orders": "crm." + "o" * 260})
    row = pc.check_name_mapping(spec, plan_namespaces(spec))
    assert row.status == "failed"
    assert "longer than 255 bytes" in row.detail
    assert "differs only in case from the destination's existing Sales" in row.detail


def test_target_namespaces(src_client, dst_client, spec_for):
    src_client.shop.orders.insert_one({"_id": 1})
    spec = spec_for(objects=[{"database": "shop"}])
    assert pc.check_targets_empty(spec, plan_namespaces(spec)).status == "passed"
    dst_client.shop.orders.insert_one({"_id": 99})
    row = pc.check_targets_empty(spec, plan_namespaces(spec))
    assert row.status == "failed" and row.detail == "already hold data: shop.orders"
    assert "drop_existing_targets: true" in row.remedy
    dropping = spec_for(objects=[{"database": "shop"}], copy_options={"drop_existing_targets": True})
    assert pc.check_targets_empty(dropping, plan_namespaces(dropping)).status == "warning"


# -- 12 data compatibility ---------------------------------------------------------------------

def test_data_compatibility_passes_on_clean_data(src_client, spec_for):
    src_client.shop.orders.insert_many([{"_id": i, "at": dt.datetime.utcnow()} for i in range(50)])
    src_client.shop.orders.create_index("at", expireAfterSeconds=3600)
    spec = spec_for(objects=[{"database": "shop"}])
    g = gather(spec)
    [row] = pc.check_data_compatibility(spec, g.plan, g.destination, g.inventory)
    assert row.status == "passed" and "1 collections scanned" in row.detail


def test_data_compatibility_finds_what_breaks(src_client, spec_for):
    shop = src_client.shop
    shop.mixed.insert_many([{"_id": 1}, {"_id": 2.5}, {"_id": "a"}, {"_id": {"k": 1}}])
    shop.big.insert_one({"_id": 2, "small": 1})
    # near 16 MB: a change event carries one of them, not the one whose _id is 4 KB
    insert_large(shop.big, sized(1, MAX_BSON))
    insert_large(shop.big, sized("k" * 4000, MAX_BSON - 4096))
    shop.create_collection("metrics", timeseries={"timeField": "t"})
    shop.metrics.insert_one({"t": dt.datetime(2024, 1, 1)})
    shop.create_collection("orphan_view", viewOn="deleted", pipeline=[])
    src_client.admin.command("setParameter", 1, ttlMonitorEnabled=False)  # keep expired documents
    try:
        shop.sessions.create_index("seen", expireAfterSeconds=3600)
        old = dt.datetime.utcnow() - dt.timedelta(hours=2)
        shop.sessions.insert_many([{"seen": old} for _ in range(7)] + [{"seen": dt.datetime.utcnow()}])
        spec = spec_for(objects=[{"database": "shop"}], migration_types=["full", "incremental"])
        g = gather(spec)
        rows = {r.name.split(": ")[1]: r for r in pc.check_data_compatibility(spec, g.plan, g.destination, g.inventory)}
    finally:
        src_client.admin.command("setParameter", 1, ttlMonitorEnabled=True)
    assert set(rows) == {"large documents", "mixed _id types", "time-series", "views", "TTL indexes"}
    assert all(r.status == "warning" for r in rows.values())
    assert "shop.big: 1 (largest 16.0 MiB)" in rows["large documents"].detail
    assert "_id so large (over 3,072 bytes)" in rows["large documents"].detail
    assert "shop.mixed: double 1, int 1, object 1, string 1" in rows["mixed _id types"].detail
    assert "shop.metrics" in rows["time-series"].detail
    assert "shop.orphan_view reads shop.deleted, which does not exist" in rows["views"].detail
    assert "shop.sessions: 7 documents past the TTL of index seen_1 (3600 s)" in rows["TTL indexes"].detail


def test_field_names_an_older_destination_refuses(src_client, spec_for):
    # '$'-prefixed and dotted names, stored by 6.0; a 4.4 destination refuses them
    src_client.shop.odd.insert_many([
        {"_id": 1, "a.b": 1}, {"_id": 2, "sub": {"$price": 3}}, {"_id": 3, "ref": {"$ref": "x", "$id": 1}},
        {"_id": 4, "list": [{"ok": 1}, {"x.y": 2}]},
    ])
    spec = spec_for(objects=[{"database": "shop"}])
    g = gather(spec)
    odd = g.plan.collections[0]
    count, names = pc.rejected_field_names(spec, odd, "4.4.29")
    assert (count, names) == (3, ["a.b", "sub.$price", "list.x.y"])
    assert pc.rejected_field_names(spec, odd, "6.0.5") == (0, [])
    older = g.destination.model_copy(update={"version": "4.4.29"})
    rows = pc.check_data_compatibility(spec, g.plan, older, g.inventory)
    [bad] = [r for r in rows if r.name == "data compatibility: field names"]
    assert bad.status == "failed" and "shop.odd: 3 documents" in bad.detail


# -- the flow: table artifact, CLI, nothing written ---------------------------------------------

def test_precheck_flow_table_artifact_and_nothing_written(src_client, dst_client, spec_for):
    src_client.shop.orders.insert_many([{"_id": i} for i in range(20)])
    dst_client.shop.orders.insert_one({"_id": "theirs"})
    before = sorted(dst_client.list_database_names())
    spec = spec_for(objects=[{"database": "shop"}])
    state = precheck(spec, return_state=True)
    report = state.result().report
    assert not report.passed and [i.name for i in report.failed] == ["target namespaces"]
    names = [i.name for i in report.items]
    for item in ("source connectivity", "destination connectivity", "source is not destination",
                 "source version and topology",
                 "destination compatibility", "source permissions", "destination permissions",
                 "incremental prerequisites", "oplog window", "destination storage", "selected objects",
                 "name mapping", "target namespaces", "data compatibility"):
        assert item in names
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["precheck"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [r["name"] for r in table] == names and table[names.index("target namespaces")]["status"] == "failed"

    with pytest.raises(PrecheckFailed):
        migrate(spec)
    assert sorted(dst_client.list_database_names()) == before
    assert list(dst_client.shop.orders.find()) == [{"_id": "theirs"}]


def test_cli_precheck_json_and_unreachable_destination(run_cli, src_client, source_server, tmp_path):
    src_client.shop.orders.insert_one({})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({
        "source": {"uri": source_server.uri()},
        "destination": {"uri": f"mongodb://127.0.0.1:{free_port()}/", "timeout_s": 1},
    }))
    out = run_cli("precheck", str(spec_file), "--json")
    assert out.returncode == 2, out.stderr
    result = json.loads(out.stdout)
    assert result["passed"] is False
    failed = {i["name"]: i for i in result["items"] if i["status"] == "failed"}
    assert set(failed) == {"destination connectivity", "other items"}
    assert "connection refused" in failed["destination connectivity"]["detail"]

    assert "Traceback" not in out.stdout + out.stderr
    # without --json the same report is printed as a table
    table = format_precheck(pc.PrecheckReport.model_validate(result))
    assert "FAIL  destination connectivity" in table and table.endswith("precheck FAILED")


def test_items_run_side_by_side_in_the_calling_context(spec_for, monkeypatch):
    """run_prechecks runs the items in threads of its one task: each item sees the context it was
    called in (the task run, for its log lines; the command's Prefect settings, whose API URL the Dask
    item reads), and the rows come back in ITEMS order whatever order the threads end in."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    seen: list = []

    def slow(spec):
        time.sleep(0.2)
        seen.append(get_current_settings().api.url)
        return pc.passed("slow item", "ran")

    def quick(spec):
        seen.append(get_current_settings().api.url)
        return pc.passed("quick item", "ran")

    monkeypatch.setattr(pc, "ITEMS", [pc.item(slow, "spec", needs=()), pc.item(quick, "spec", needs=())])
    down = [EndpointInfo(role=role, display=role, reachable=False, problem="refused") for role in ("source", "destination")]
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        report = pc.run_prechecks(spec_for(), *down, plan=None)
    assert seen == ["http://127.0.0.1:9/api"] * 2
    names = [i.name for i in report.items]
    assert names.index("slow item") < names.index("quick item")
    assert report.item("slow item").status == "passed"
    assert not report.passed  # the endpoints were down: their rows fail, and the others say not checked
