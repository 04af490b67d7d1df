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
from datetime import datetime, timezone

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from mongo_migrate.flows.approval import approve_cutover, waiting_for_approval
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.flows.status import read_status, status_text
from mongo_migrate.tasks.state import read_sync_state
from tests.conftest import ROOT, assert_same_documents, index_specs, user_collections
from tests.endpoints import ENDPOINTS, endpoints  # noqa: F401 - the fixture, found by its name
from tests.load import SourceLoad, seed

MAPPING = {"shop": "shop_v2"}


def incremental_fields(**options) -> dict:
    return {"objects": [{"database": "shop"}], "name_mapping": MAPPING, "migration_types": ["full", "incremental"],
            "incremental_options": {"checkpoint_interval_s": 0.5, **options}}


def incremental_spec(make, **options):
    """The spec of these tests from `make(**fields)` (spec_for, or Endpoints.spec)."""
    return make(**incremental_fields(**options))


def waiting_since(started: datetime) -> list:
    """Runs waiting for approval that this test started (an earlier test's may be left paused)."""
    return [r for r in waiting_for_approval() if r.created and r.created >= started]


def wait_for(condition, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ddl_once_started(load: SourceLoad, spec) -> None:
    """Let the load create, drop and rename collections once the run has saved its start point (it
    has passed its precheck, and the full copy is about to start)."""

    def wait():
        wait_for(lambda: read_sync_state(spec), timeout=120, what="the start point")
        load.ddl.set()

    threading.Thread(target=wait, daemon=True).start()


def assert_destination_equals_source(src_client, dst_client):
    names = user_collections(src_client, "shop")
    assert user_collections(dst_client, "shop_v2") == names
    for name in names:
        assert_same_documents(src_client, dst_client, f"shop.{name}", f"shop_v2.{name}")
        assert index_specs(dst_client, f"shop_v2.{name}") == index_specs(src_client, f"shop.{name}"), name
    assert "other" not in dst_client.list_database_names()


# 6.0 only (the shared 6.0.5 source): block_source_writes_at_cutover is setUserWriteBlockMode, which
# 4.2-5.0 lack; tests/test_versions_sync.py runs the sync under load from 4.2.6, 4.4.2 and 5.0.4
def test_sync_under_load_then_cutover_approved_from_another_thread(src_client, dst_client, spec_for):
    started = datetime.now(timezone.utc)
    seed(src_client)
    spec = incremental_spec(spec_for, block_source_writes_at_cutover=True)
    load = SourceLoad(src_client, pace_s=0.05).start()  # runs during the full copy and the sync
    ddl_once_started(load, spec)
    approved: list = []

    def approver():
        run = wait_for(lambda: waiting_since(started), what="the run to wait for approval")[0]
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
        # the delay artifact was kept current in place: one artifact, its last state the cutover
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["sync-delay"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run.id for run in approved])))
        assert len(artifacts) == 1 and "cut over: sync ended" in artifacts[0].data
        # the source's writes stay blocked after cutover
        with pytest.raises(Exception, match="User writes blocked"):
            src_client.shop.orders.insert_one({"late": True})
    finally:
        if not load._stop.is_set():
            load._stop.set()
        src_client.admin.command("setUserWriteBlockMode", **{"global": False})


def spec_file(tmp_path, source, dest, **options) -> str:
    data = {"source": {"uri": source.admin_uri()}, "destination": {"uri": dest.admin_uri()},
            **incremental_fields(**options)}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return str(path)


def start_cli(prefect_api, log_path, *args, **popen):
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    stdout = popen.pop("stdout") if "stdout" in popen else open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "mongo_migrate.flows.cli", "--verbose", *args], cwd=ROOT, env=env,
                            stdout=stdout, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.parametrize("endpoints", ENDPOINTS, indirect=True)
def test_sync_killed_then_run_again_and_approved_from_another_process(
        endpoints, dst_client, prefect_api, run_cli, tmp_path):
    started = datetime.now(timezone.utc)
    src_client = endpoints.src_client
    seed(src_client, docs=500)
    path = str(endpoints.write(tmp_path / "spec.json", **incremental_fields()))
    spec = incremental_spec(endpoints.spec)
    load = SourceLoad(src_client, pace_s=0.05).start()
    ddl_once_started(load, spec)
    first = start_cli(prefect_api, tmp_path / "first.log", "run", path)
    try:
        killed = wait_for(lambda: waiting_since(started), timeout=180, what="the first run to wait")[0]
        # (a run may be ready, its delay small, before it has saved a position: none applied yet)
        applied = read_sync_state(spec).get("events_applied", 0)
        # while the run waits for approval, changes keep being applied and saved
        wait_for(lambda: read_sync_state(spec).get("events_applied", 0) > applied + 50, what="more changes")
        first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL
        time.sleep(1)  # the load goes on with no sync running

        second = start_cli(prefect_api, tmp_path / "second.log", "run", path)

        def second_waits() -> list:
            # a second run that ended (a precheck that failed on the live source) says why at once
            assert second.poll() is None, (tmp_path / "second.log").read_text()[-3000:]
            return [r for r in waiting_since(started) if r.id != killed.id]

        waiting = wait_for(second_waits, timeout=180, what="the second run to wait")
        # the killed run was marked crashed: only the new one waits, so `approve` needs no id
        assert [r.id for r in waiting_since(started)] == [waiting[0].id]
        load.stop()
        approved = run_cli("approve", "--note", "from another process")
        assert approved.returncode == 0, approved.stderr
        assert f"cutover approved: flow run {waiting[0].name} ({waiting[0].id})" in approved.stdout
        assert second.wait(180) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        load._stop.set()
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
    log = (tmp_path / "second.log").read_text()
    assert "sync resumes from its checkpoint" in log and "incremental sync: cut over" in log
    assert_destination_equals_source(src_client, dst_client)
    nobody = run_cli("approve")
    assert nobody.returncode == 2 and "no run is waiting for cutover approval" in nobody.stderr
    unknown = run_cli("approve", "not-a-run")
    assert unknown.returncode == 2 and "'not-a-run' is not a flow run id" in unknown.stderr
    serverless = run_cli("approve", env={"PREFECT_API_URL": ""})
    assert serverless.returncode == 2 and "no Prefect server is configured" in serverless.stderr


def test_approval_timeout_ends_cleanly_then_a_rerun_continues(src_client, dst_client, spec_for, caplog):
    started = datetime.now(timezone.utc)
    seed(src_client, docs=200)
    # the run is ready for approval only once the change stream has replied (its resume token is the
    # position saved), so even a 1 s timeout leaves a position of the sync's own
    summary = migrate(incremental_spec(spec_for, approval_timeout_s=1))
    assert summary.sync.status == "approval_timeout" and not summary.counts_match
    spec = incremental_spec(spec_for)
    state = read_sync_state(spec)
    assert state["status"] == "approval_timeout" and state["token"]
    # written while no sync runs: the rerun picks it up from the saved position
    src_client.shop.orders.update_many({"n": {"$lt": 50}}, {"$set": {"customer.address.zip": "69001"}})
    src_client.shop.orders.delete_many({"n": {"$gte": 150}})
    src_client.shop.create_collection("later")
    src_client.shop.later.insert_one({"_id": "x"})

    def approver():
        run = wait_for(lambda: waiting_since(started), what="the run to wait")[0]
        approve_cutover(str(run.id), note="rerun")

    threading.Thread(target=approver, daemon=True).start()
    assert read_status(spec).source_writes_blocked is False
    # the source's user writes blocked, as a cutover interrupted after blocking them leaves it: status
    # and the rerun say so (the application cannot write meanwhile), and it cuts over all the same
    src_client.admin.command("setUserWriteBlockMode", **{"global": True})
    try:
        status = read_status(spec)
        assert status.stage == "stopped without cutover" and status.source_writes_blocked is True
        assert ("the source refuses user writes (a cutover interrupted after blocking them leaves them so); "
                "to let the application write again: db.adminCommand({setUserWriteBlockMode: 1, global: false})"
                ) in status_text(status)
        summary = migrate(spec)
    finally:
        src_client.admin.command("setUserWriteBlockMode", **{"global": False})
    assert summary.resumed and summary.sync.status == "cut_over" and summary.counts_match
    assert_destination_equals_source(src_client, dst_client)
    warned = [r.getMessage() for r in caplog.records if "user writes on the source are blocked" in r.getMessage()]
    assert len(warned) == 1 and "setUserWriteBlockMode: 1, global: false" in warned[0], warned


def test_a_failed_cutover_check_names_the_documents_that_differ(src_client, dst_client, spec_for):
    """What the cutover's counts cannot say (which documents), the error does: the collection that
    failed its check is verified whole, and its missing and extra _ids are named."""
    started = datetime.now(timezone.utc)
    seed(src_client, docs=200)

    def approver():
        run = wait_for(lambda: waiting_since(started), what="the run to wait")[0]
        # written to the destination behind the sync's back: what the check must catch and name
        dst_client.shop_v2.orders.insert_many([{"_id": "stray-1"}, {"_id": "stray-2"}])
        dst_client.shop_v2.orders.delete_one({"_id": 7})
        approve_cutover(str(run.id), note="with strays")

    threading.Thread(target=approver, daemon=True).start()
    with pytest.raises(Exception) as failed:
        migrate(incremental_spec(spec_for))
    message = str(failed.value)
    # (the check's random sample of 100 of the 200 documents may include _id 7 and say so too)
    assert ("cutover check found differences: shop.orders -> shop_v2.orders: 200 documents on the source, "
            "201 on the destination") in message, message
    assert ': 1 missing, 2 extra (missing _id 7, extra _id "stray-1", extra _id "stray-2")' in message, message
    assert read_sync_state(incremental_spec(spec_for))["status"] != "cut_over"
