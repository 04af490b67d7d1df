"""Every write a migration makes on the destination is acknowledged by a majority of its members, whatever
the deployment's default write concern says (blocks/mongo.py WRITE_CONCERN): a 4.4 replica set's default,
and an arbiter's since 5.0, is w:1, whose acknowledged writes a failover can roll back after a checkpoint
has moved past them.

The first test's destination is a replica set whose default write concern is set to w:1; it logs every
operation with the write concern it ran with and where that came from ("clientSupplied", or
"customDefault" for the deployment's w:1), which is what the test reads back after a whole full +
incremental run by the real CLI: the copy, index builds (a unique one deferred to the cutover), a view,
the sync with document changes and DDL, the cutover, and the state records. Then what a user sees when
no majority confirms: the run's last line, and the precheck of a primary-secondary-arbiter set whose
secondary is down."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from pymongo import MongoClient

from mongo_migrate.blocks.mongo import DRIVER_NAME
from mongo_migrate.flows.approval import approve_cutover
from mongo_migrate.sandbox.mongod import Mongod
from tests.conftest import add_member, assert_same_documents, index_specs
from tests.test_faults import start_cli, wait_for, write_spec
from tests.test_incremental import waiting_since

WRITE_COMMANDS = {"insert", "update", "delete", "findAndModify", "create", "createIndexes", "collMod",
                  "renameCollection", "drop", "dropIndexes", "dropDatabase"}


@pytest.fixture
def w1_dest(tmp_path):
    m = Mongod(tmp_path / "dest", replset="dw1", extra_args=["--setParameter", "enableTestCommands=1"]).start()
    with m.client() as c:
        c.admin.command("setDefaultRWConcern", defaultWriteConcern={"w": 1})
        c.admin.command("profile", 0, slowms=-1)  # every operation to the log, with its write concern
    yield m
    m.destroy()


def logged_writes(m: Mongod) -> list[tuple[str, str, dict | None]]:
    """(command, namespace, write concern) of each write command mongo-migrate's clients sent, as the
    destination logged it."""
    writes = []
    for line in (m.dbpath / "mongod.log").read_text(errors="replace").splitlines():
        entry = json.loads(line)
        attr = entry.get("attr", {})
        name = next(iter(attr.get("command", {})), None)
        if entry.get("msg") == "Slow query" and attr.get("appName") == DRIVER_NAME and name in WRITE_COMMANDS:
            writes.append((name, attr.get("ns", ""), attr.get("writeConcern")))
    return writes


def test_every_write_on_a_destination_whose_default_is_w1_waits_for_a_majority(
        source, src_client, w1_dest, prefect_api, tmp_path):
    shop = src_client.shop
    shop.orders.insert_many([{"_id": i, "n": i, "sku": f"s{i}"} for i in range(3000)])
    shop.orders.create_index("n")
    shop.orders.create_index("sku", unique=True)  # built without `unique`, made unique at the cutover
    shop.create_collection("recent", viewOn="orders", pipeline=[{"$match": {"n": {"$gte": 2990}}}])
    spec_file = write_spec(tmp_path / "spec.json", source, w1_dest, migration_types=["full", "incremental"],
                           objects=[{"database": "shop"}], name_mapping={"shop": "shop_v2"},
                           copy_options={"range_docs": 1000, "parallel_workers": 2})
    started = datetime.now(timezone.utc)
    proc = start_cli(prefect_api, "run", str(spec_file), "--json")
    try:
        run = wait_for(lambda: waiting_since(started), 180, "the run to wait for approval", proc)[-1]
        # changes the sync applies: documents, and DDL (an index made and dropped, options, a rename)
        shop.orders.insert_one({"_id": 5000, "n": 5000, "sku": "new"})
        shop.orders.update_one({"_id": 1}, {"$set": {"n": -1}})
        shop.orders.delete_one({"_id": 2})
        shop.orders.create_index("x")
        shop.command("collMod", "orders", validator={"n": {"$exists": True}})
        shop.orders.drop_index("x_1")
        shop.tmp.insert_many([{"_id": j} for j in range(5)])
        shop.tmp.rename("kept")
        with w1_dest.client() as dst:
            wait_for(lambda: dst.shop_v2.kept.count_documents({}) == 5
                     and dst.shop_v2.orders.find_one({"_id": 5000}) is not None, 60, "the changes", proc)
        approve_cutover(str(run.id), note="write concern test")
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["sync"]["status"] == "cut_over"

    with w1_dest.client() as dst:
        for name in ("orders", "kept"):
            assert_same_documents(src_client, dst, f"shop.{name}", f"shop_v2.{name}")
        assert index_specs(dst, "shop_v2.orders")["sku_1"]["unique"] is True
    writes = logged_writes(w1_dest)
    by_command = {name for name, _, _ in writes}
    # the run's writes of every kind were seen: copy, state, DDL of the full copy and of the sync
    assert {"insert", "update", "delete", "create", "createIndexes", "collMod", "renameCollection",
            "dropIndexes"} <= by_command, by_command
    assert any(ns.startswith("shop_v2.") for name, ns, _ in writes if name == "insert")
    weaker = [(name, ns, wc) for name, ns, wc in writes
              if not wc or wc.get("w") != "majority" or wc.get("provenance") != "clientSupplied"]
    assert not weaker, weaker[:10]
    # and the deployment's own default is still w:1: nothing was changed on it
    with MongoClient(w1_dest.admin_uri()) as c:
        assert c.admin.command("getDefaultRWConcern")["defaultWriteConcern"]["w"] == 1


def test_a_write_no_majority_confirms_fails_the_run_saying_so(source, src_client, w1_dest, run_cli, tmp_path):
    src_client.shop.orders.insert_many([{"_id": i} for i in range(100)])
    spec_file = write_spec(tmp_path / "spec.json", source, w1_dest, objects=[{"database": "shop"}])
    with w1_dest.client() as c:
        # what a primary-secondary-arbiter set answers with its secondary down, once the timeout has
        # passed: the write is made on the primary, and no majority confirms it
        c.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": ["insert", "update", "delete"], "appName": DRIVER_NAME,
            "writeConcernError": {"code": 64, "codeName": "WriteConcernFailed",
                                  "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": True}}})
    result = run_cli("run", str(spec_file))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    # pymongo's name for it (WTimeoutError), then what to do
    assert last.startswith("mongo-migrate: error: migration failed: ") and last.endswith(
        "Error: a majority of the destination's members did not confirm a write in time (every write is made "
        "with write concern majority): check that its secondaries are up and keeping up, then run the spec "
        "again"), last
    with w1_dest.client() as dst:
        assert dst.shop.orders.count_documents({}) == 0  # the run stopped before its copy


@pytest.fixture
def psa_dest(tmp_path):
    """A primary-secondary-arbiter destination (its default write concern set to w:1 first, which 5.0+ asks
    for before an arbiter joins) with a fourth member that has no vote, its secondary stopped: the primary
    stays primary (with the arbiter's vote), and a majority write waits for the secondary (the member
    without a vote, up, confirms nothing toward a majority)."""
    primary = Mongod(tmp_path / "p", replset="psa").start()
    secondary = Mongod(tmp_path / "s", replset="psa")
    arbiter = Mongod(tmp_path / "a", replset="psa")
    without_vote = Mongod(tmp_path / "n", replset="psa")
    with primary.client() as c:
        c.admin.command("setDefaultRWConcern", defaultWriteConcern={"w": 1})
    add_member(primary, secondary, priority=0)
    add_member(primary, arbiter, arbiterOnly=True)
    add_member(primary, without_vote, priority=0, votes=0)
    with primary.client() as c:
        def states() -> dict[str, int]:  # a member's state, 0 when the primary cannot reach it
            return {m["name"]: m["health"] * m["state"] for m in c.admin.command("replSetGetStatus")["members"]}

        # a member joins without a vote ("newlyAdded") until the primary has seen it a secondary: until then
        # a majority write needs the primary alone (writeMajorityCount 1)
        wait_for(lambda: c.admin.command("replSetGetStatus")["writeMajorityCount"] == 2
                 and states()[without_vote.host] == 2, 60, "the secondary to vote, the member without a vote up")
        secondary.proc.kill()
        secondary.proc.wait(10)
        wait_for(lambda: states()[secondary.host] == 0, 60, "the primary to see its secondary down")
    yield primary, secondary
    for m in (without_vote, arbiter, primary):
        m.proc.kill()
        m.proc.wait(10)


def test_a_destination_whose_majority_is_down_fails_the_precheck(source, src_client, psa_dest, run_cli, tmp_path):
    primary, secondary = psa_dest
    src_client.shop.orders.insert_many([{"_id": i} for i in range(10)])
    spec_file = write_spec(tmp_path / "spec.json", source, primary, objects=[{"database": "shop"}])
    result = run_cli("precheck", str(spec_file))
    with primary.client() as c:
        members = [(m["name"], m["health"], m["stateStr"]) for m in c.admin.command("replSetGetStatus")["members"]]
    assert result.returncode == 2, f"{members}\n{result.stdout}"
    row = next(line for line in result.stdout.splitlines() if "destination compatibility" in line)
    assert row.startswith("FAIL") and row.endswith(
        f"writes cannot be confirmed by a majority: 1 of the 2 voting data-bearing members a majority write needs "
        f"are up (down: {secondary.host})"), row
    with primary.client() as dst:
        assert "mongo_migrate_meta" not in dst.list_database_names()  # the precheck wrote nothing
