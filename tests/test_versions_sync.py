"""Full + incremental migration from the MongoDB versions people run (4.2, 4.4, 5.0; 6.0 is the rest of
the suite) to 6.0.5: a write load during the copy and the sync, and every kind of DDL during the sync
(before 6.0 create, index and collMod changes come from the oplog: tasks/sync/sources.py), approved,
then the destination equal to the source byte for byte."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from mongo_migrate.flows.approval import approve_cutover
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.tasks.state import read_sync_state
from tests.conftest import (MAX_BSON, assert_same_documents, collection_options, index_specs, insert_large, make_spec, padding,
                            sized, user_collections, write_large)
from tests.load import SourceLoad, seed
from tests.test_incremental import wait_for, waiting_since


def once_no_index_build_runs(command) -> None:
    """`command()`, asked again while the source answers that an index build is still running on the
    collection (code 12587): 4.4 and 5.0 can still be finishing a build that create_index returned
    from, or one the write load started. That is the source's own answer, not the sync's."""
    for attempt in range(50):
        try:
            command()
            return
        except OperationFailure as exc:
            if exc.code != 12587 or attempt == 49:
                raise
            time.sleep(0.1)


def ddl_during_the_sync(c: MongoClient) -> None:
    """Each DDL the sync must carry, on a source that keeps writing documents around it."""
    shop = c.shop
    shop.create_collection("log", capped=True, size=65536, max=50)  # options only a create carries
    shop.log.insert_many([{"_id": i, "line": f"l{i}"} for i in range(80)])  # the cap drops the first 30
    shop.create_collection("checked", validator={"qty": {"$gte": 0}}, validationLevel="moderate")
    shop.checked.insert_one({"_id": 1, "qty": 3})
    shop.orders.create_index([("total", -1), ("n", 1)], name="total_n", sparse=True)
    shop.orders.create_index([("customer.name", 1)], name="name_ci", collation={"locale": "fr", "strength": 2})
    once_no_index_build_runs(lambda: shop.orders.drop_index("n_1"))
    shop.command("collMod", "checked", validator={"qty": {"$gte": 1}}, validationLevel="strict")
    if tuple(c.server_info()["versionArray"][:2]) >= (4, 4):  # hidden indexes are 4.4+
        hide_index = {"keyPattern": {"total": -1, "n": 1}, "hidden": True}
        once_no_index_build_runs(lambda: shop.command("collMod", "orders", index=hide_index))
    shop.staging.insert_many([{"_id": i} for i in range(5)])
    shop.staging.create_index([("x", 1)], name="x_1")
    shop.staging.rename("promoted")
    shop.create_collection("scratch")
    shop.drop_collection("scratch")
    c.gone.things.insert_one({"_id": 2})
    c.drop_database("gone")
    shop.create_collection("recent", viewOn="orders", pipeline=[{"$match": {"n": {"$gte": 900}}}])


@pytest.mark.parametrize("version", ["4.2.6", "4.4.2", "5.0.4"])
def test_full_and_incremental_with_ddl_during_the_sync(version, old_source, dest, dst_client):
    source = old_source(version)
    started = datetime.now(timezone.utc)
    with source.client() as src:
        seed(src, docs=400)
        src.gone.things.insert_one({"_id": 1})  # a selected database, dropped during the sync
        spec = make_spec(source, dest, objects=[{"database": "shop"}, {"database": "gone"}],
                         name_mapping={"shop": "shop_v2"}, migration_types=["full", "incremental"],
                         incremental_options={"checkpoint_interval_s": 0.5})
        load = SourceLoad(src, pace_s=0.05, seed_docs=400).start()
        result: dict = {}

        def run() -> None:
            try:
                result["summary"] = migrate(spec)
            except BaseException as exc:  # noqa: BLE001 - raised below
                result["error"] = exc

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        run_ = None
        try:
            wait_for(lambda: read_sync_state(spec) or "error" in result, timeout=120, what="the start point")
            load.ddl.set()
            run_ = wait_for(lambda: waiting_since(started) or "error" in result, timeout=180,
                            what="the run to wait for approval")
            assert "error" not in result, result.get("error")
            ddl_during_the_sync(src)
            # the largest documents a server stores: their events go through (tasks/precheck/data.py)
            big = src.shop.big
            insert_large(big, sized(1, MAX_BSON))
            write_large(big, lambda: big.update_one({"_id": 1}, {"$set": {"p": "z" * padding(1, MAX_BSON)}}))
            write_large(big, lambda: big.replace_one({"_id": 1}, sized(1, MAX_BSON - 10)))
            rounds = load.rounds
            wait_for(lambda: load.rounds > rounds + 10 or load.errors, what="more load")
            load.stop()
            approve_cutover(str(run_[0].id), note=f"from {version}")
            runner.join(240)
        finally:
            load._stop.set()
            if runner.is_alive() and isinstance(run_, list):
                # the test failed before its approval: end that run's sync, or it would go on writing
                # into the destination the next version's run starts on
                approve_cutover(str(run_[0].id), approve=False, note="the test failed")
                runner.join(60)
        assert "error" not in result, result.get("error")
        summary = result["summary"]
        assert summary.sync.status == "cut_over" and summary.counts_match
        assert summary.sync.ddl_applied >= 10, summary.sync

        names = user_collections(src, "shop")
        assert {"log", "checked", "promoted", "recent", "orders", "big"} <= set(names)
        assert "scratch" not in names and "gone" not in dst_client.list_database_names()
        assert user_collections(dst_client, "shop_v2") == names
        for name in names:
            if name == "recent":
                continue
            assert_same_documents(src, dst_client, f"shop.{name}", f"shop_v2.{name}")
            assert index_specs(dst_client, f"shop_v2.{name}") == index_specs(src, f"shop.{name}"), name
            assert collection_options(dst_client, f"shop_v2.{name}") == collection_options(src, f"shop.{name}"), name
        assert collection_options(dst_client, "shop_v2.recent") == collection_options(src, "shop.recent")
        assert dst_client.shop_v2.log.count_documents({}) == 50
