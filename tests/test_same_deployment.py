"""A destination that is the source under another name never destroys it; drop_existing_targets says
exactly what it drops, and never more; an emptied source is never an equal copy.

Each refused spec is run as the real `mongo-migrate` command (all at once, by one fixture)."""
from __future__ import annotations

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
import yaml

from mongo_migrate.blocks.mongo import close_clients
from mongo_migrate.flows.approval import approve_cutover
from mongo_migrate.flows.migrate import flag_emptied_sources, migrate
from mongo_migrate.flows.verify import VerificationReport
from mongo_migrate.sandbox.mongod import Mongod
from mongo_migrate.tasks.connect import EndpointInfo
from mongo_migrate.tasks.precheck import same_deployment
from mongo_migrate.tasks.verify import CollectionVerification
from tests.conftest import META_DATABASE, _drop_user_databases, add_member, assert_same_documents, make_spec
from tests.test_incremental import wait_for, waiting_since

ERROR = "mongo-migrate: error: "
ORDERS = 1000


def endpoint(**fields) -> EndpointInfo:
    return EndpointInfo(role=fields.pop("role", "source"), display="x", reachable=True, **fields)


@pytest.mark.parametrize("source, destination, addresses, expected", [
    # ids read from the servers decide, whatever the URIs say
    (dict(identity="65f0c0de0000000000000001", identity_basis="replicaSetId", topology="replica_set"),
     dict(identity="65f0c0de0000000000000001", identity_basis="replicaSetId", topology="replica_set"),
     (set(), set()), True),
    (dict(identity="65f0c0de0000000000000001", identity_basis="replicaSetId", topology="replica_set", replica_set="rs0",
          addresses=["db1:27017"]),
     dict(identity="65f0c0de0000000000000002", identity_basis="replicaSetId", topology="replica_set", replica_set="rs0",
          addresses=["db9:27017"]),
     (set(), set()), False),
    # no id readable: the replica set's member names, then the addresses the URIs resolve to
    (dict(topology="replica_set", replica_set="rs0", addresses=["db1:27017", "db2:27017"]),
     dict(topology="replica_set", replica_set="rs0", addresses=["db2:27017"]), (set(), set()), True),
    (dict(topology="standalone"), dict(topology="standalone"),
     ({("127.0.0.1", 27017)}, {("127.0.0.1", 27017), ("::1", 27017)}), True),
    (dict(topology="standalone"), dict(topology="standalone"),
     ({("10.0.0.1", 27017)}, {("10.0.0.2", 27017)}), None),
    (dict(topology="standalone"), dict(topology="replica_set", replica_set="rs0"), (set(), set()), False),
])
def test_same_deployment_is_decided_by_what_the_servers_report(source, destination, addresses, expected):
    same, why = same_deployment(endpoint(**source), endpoint(role="destination", **destination), *addresses)
    assert same is expected, why
    assert why


def test_an_emptied_source_is_not_an_equal_copy():
    report = VerificationReport(collections=[
        CollectionVerification(source_ns="shop.orders", target_ns="shop.orders", kind="collection"),
        CollectionVerification(source_ns="shop.empty", target_ns="shop.empty", kind="collection"),
    ])
    assert report.equal  # both sides empty: equal, as far as verification alone can tell
    flag_emptied_sources(report, {"shop.orders": ORDERS, "shop.empty": 0})
    assert not report.equal
    assert [c.source_ns for c in report.unequal] == ["shop.orders"]
    assert "held 1,000 documents at the precheck and holds none now" in report.describe()


def start_secondary(primary: Mongod, tmp_path) -> Mongod:
    """A second member of `primary`'s replica set (priority 0, no vote), once it is SECONDARY."""
    member = Mongod(tmp_path / "secondary", replset=primary.replset)
    add_member(primary, member, priority=0, votes=0)
    from pymongo import MongoClient

    with MongoClient(member.host, directConnection=True) as c:
        wait_for(lambda: c.admin.command("hello").get("secondary"), timeout=60, what="the secondary")
    return member


@pytest.fixture(scope="module")
def refused(source_server, dest_server, run_cli, tmp_path_factory):
    """Specs whose destination is the source (or that reach the state database): run at once."""
    tmp = tmp_path_factory.mktemp("same")
    primary = Mongod(tmp / "primary", replset="two").start()
    secondary = start_secondary(primary, tmp)
    with source_server.client() as src, primary.client() as two:
        for client in (src, two):
            client.prod.orders.insert_many([{"_id": i, "total": i * 1.5} for i in range(ORDERS)])
    src_uri = source_server.admin_uri()
    alias = src_uri.replace("127.0.0.1", "localhost")

    def spec_file(name: str, source: str, destination: str, **fields) -> str:
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"source": {"uri": source}, "destination": {"uri": destination},
                                        **fields}))
        return str(path)

    drop = {"copy_options": {"drop_existing_targets": True}}
    commands = {
        "same_uri": ["run", spec_file("same_uri", src_uri, src_uri, objects=[{"database": "prod"}], **drop)],
        "alias_host": ["run", spec_file("alias", src_uri, alias, objects=[{"database": "prod"}], **drop)],
        "every_database": ["run", spec_file("every", src_uri, alias, **drop)],
        "secondary": ["run", spec_file("secondary", primary.uri(),
                                       f"mongodb://{secondary.host}/?directConnection=true",
                                       objects=[{"database": "prod"}], **drop)],
        "into_state_db": ["run", spec_file("into_state", src_uri, dest_server.admin_uri(),
                                           name_mapping={"prod": META_DATABASE})],
        "state_db_selected": ["run", spec_file("state_selected", src_uri, dest_server.admin_uri(),
                                               objects=[{"database": META_DATABASE}])],
    }
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {name: pool.submit(run_cli, *args) for name, args in commands.items()}
            outcomes = {name: f.result() for name, f in futures.items()}
        with source_server.client() as src, primary.client() as two:
            counts = {"source": src.prod.orders.count_documents({}), "two": two.prod.orders.count_documents({}),
                      "source_dbs": src.list_database_names(), "two_dbs": two.list_database_names()}
        yield outcomes, counts
    finally:
        # SIGKILL: a primary asked to shut down waits for its secondary; the data is thrown away anyway
        for member in (secondary, primary):
            member.kill()
            member.destroy()
        close_clients()
        _drop_user_databases(source_server)


def error_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith(ERROR)]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0].removeprefix(ERROR)


@pytest.mark.parametrize("case", ["same_uri", "alias_host", "every_database", "secondary"])
def test_a_destination_that_is_the_source_is_refused_and_nothing_is_written(refused, case):
    outcomes, counts = refused
    out = outcomes[case]
    assert out.returncode == 2, out.stdout + out.stderr[-3000:]
    assert error_line(out) == "precheck failed; nothing was written: source is not destination"
    row = next(line for line in out.stdout.splitlines() if "source is not destination" in line)
    assert row.startswith("FAIL") and "are the same deployment (both report replicaSetId" in row, row
    # both endpoints are named, without credentials
    assert "source (mongodb://" in row and "destination (mongodb://" in row
    assert "Traceback" not in out.stderr
    # nothing dropped, nothing written: not even the state database
    assert counts["source"] == ORDERS and counts["two"] == ORDERS
    assert META_DATABASE not in counts["source_dbs"] + counts["two_dbs"]


@pytest.mark.parametrize("case, message", [
    ("into_state_db", f"into_state.yaml: name_mapping: Value error, 'prod' is mapped into the reserved database "
                      f"'{META_DATABASE}'"),
    ("state_db_selected", f"state_selected.yaml: objects.0.database: {META_DATABASE} is mongo-migrate's own "
                          "state database"),
])
def test_specs_that_reach_the_state_database_are_refused_in_one_line(refused, case, message):
    out = refused[0][case]
    assert out.returncode == 2
    assert error_line(out).replace("Value error, ", "") == message.replace("Value error, ", "")
    assert out.stdout == "" and "Traceback" not in out.stderr


def test_drop_existing_targets_names_what_it_drops_and_keeps_everything_else(src_client, dst_client, spec_for):
    src_client.shop.orders.insert_many([{"_id": i} for i in range(10)])
    src_client.shop.customers.insert_one({"_id": 1})
    dst_client.shop.orders.insert_many([{"_id": f"old-{i}"} for i in range(7)])
    dst_client.shop.legacy.insert_one({"_id": "outside the plan"})  # a target database, not a target
    dst_client.crm.people.insert_one({"_id": "another database"})
    dst_client[META_DATABASE].notes.insert_one({"_id": "state"})
    spec = spec_for(objects=[{"database": "shop"}], copy_options={"drop_existing_targets": True})
    summary = migrate(spec)
    assert summary.counts_match
    from mongo_migrate.flows.migrate import precheck

    # the precheck's row, as a rerun of the same spec shows it before anything is dropped
    assert_same_documents(src_client, dst_client, "shop.orders")
    assert dst_client.shop.legacy.count_documents({}) == 1
    assert dst_client.crm.people.count_documents({}) == 1
    assert dst_client[META_DATABASE].notes.count_documents({}) == 1
    dst_client.shop.orders.insert_many([{"_id": f"new-{i}"} for i in range(3)])
    dst_client[META_DATABASE].runs.delete_many({})  # a fresh run of the spec, not a resumed one
    row = precheck(spec).report.item("target namespaces")
    assert row.status == "warning"
    assert row.detail == ("drop_existing_targets: will drop shop.customers (1 document); shop.orders "
                          f"(13 documents) (nothing else: not {META_DATABASE}, nor any collection outside "
                          "the plan)")


def test_a_copy_inside_one_deployment_under_new_names_syncs_without_reading_its_own_writes(source, src_client):
    """shop -> shop_copy on the same replica set, full + incremental: the targets are outside the
    selection, so the sync never applies its own writes back."""
    started = datetime.now(timezone.utc)
    src_client.shop.orders.insert_many([{"_id": i, "n": 0} for i in range(200)])
    spec = make_spec(source, source, objects=[{"database": "shop"}], name_mapping={"shop": "shop_copy"},
                     migration_types=["full", "incremental"],
                     incremental_options={"checkpoint_interval_s": 0.5})
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(summary=migrate(spec)), daemon=True)
    runner.start()
    run = wait_for(lambda: waiting_since(started), what="the run to wait for approval")[0]
    src_client.shop.orders.update_many({"_id": {"$lt": 50}}, {"$inc": {"n": 1}})
    src_client.shop.orders.delete_many({"_id": {"$gte": 190}})
    src_client.shop.orders.insert_one({"_id": "late", "n": 1})
    time.sleep(1.0)
    approve_cutover(str(run.id), approve=True, note="same deployment")
    runner.join(180)
    summary = result["summary"]
    assert summary.sync.status == "cut_over"
    assert_same_documents(src_client, src_client, "shop.orders", "shop_copy.orders")
    # the sync applied the 52 source changes, not its own 52 writes to shop_copy as well
    assert summary.sync.events_applied < 100, summary.sync
    assert json.loads(json.dumps(src_client.list_database_names())).count("shop_copy") == 1
