"""Incremental migration end to end: a write load during the full copy and the sync, approval from
another thread or process, cutover, and a SIGKILL of the process running the sync."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from flows.incremental import ApprovalError, approve_cutover, waiting_for_approval
from flows.migrate import migrate
from tasks.changes import read_sync_state
from tests.conftest import ROOT, assert_same_documents, index_specs, user_collections
from tests.load import SourceLoad, seed

MAPPING = {"shop": "shop_v2"}


def incremental_spec(spec_for, **options):
    return spec_for(objects=[{"database": "shop"}], name_mapping=MAPPING,
                    migration_types=["full", "incremental"],
                    incremental_options={"checkpoint_interval_s": 0.5, **options})


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def assert_destination_equals_source(src_client, dst_client):
    names = user_collections(src_client, "shop")
    assert user_collections(dst_client, "shop_v2") == names
    for name in names:
        assert_same_documents(src_client, dst_client, f"shop.{name}", f"shop_v2.{name}")
        assert index_specs(dst_client, f"shop_v2.{name}") == index_specs(src_client, f"shop.{name}"), name
    assert "other" not in dst_client.list_database_names()


def test_sync_under_load_then_cutover_approved_from_another_thread(src_client, dst_client, spec_for):
    seed(src_client)
    spec = incremental_spec(spec_for, block_source_writes_at_cutover=True)
    load = SourceLoad(src_client, pace_s=0.05).start()  # runs during the full copy and the sync
    approved: list = []

    def approver():
        run = wait_for(lambda: waiting_for_approval(), what="the run to wait for approval")[0]
        rounds = load.rounds
        # changes keep flowing while the run waits
        wait_for(lambda: load.rounds > rounds + 20 or load.errors, what="more load")
        load.stop()
        approved.append(approve_cutover(str(run.id), note="from a thread"))

    t = threading.Thread(target=approver, daemon=True)
    t.start()
    try:
        summary = migrate(spec)
        t.join(10)
        sync = summary.sync
        assert approved and sync.status == "cut_over" and sync.note == "from a thread"
        assert sync.writes_blocked
        assert load.rounds > 30 and sync.events_applied > 30 * 10 and sync.ddl_applied > 5
        assert summary.counts_match
        assert_destination_equals_source(src_client, dst_client)
        assert read_sync_state(spec)["status"] == "cut_over"
        # the source's writes stay blocked after cutover
        with pytest.raises(Exception, match="User writes blocked"):
            src_client.shop.orders.insert_one({"late": True})
    finally:
        if not load._stop.is_set():
            load._stop.set()
        src_client.admin.command("setUserWriteBlockMode", **{"global": False})
