"""The destination mongod SIGKILLed and restarted (journal recovery, same dbpath) at five moments of one
full + incremental migration run by the real CLI under a write load: during the copy, during the index
builds, twice during the sync and during the cutover. A run that exits because of a kill is run again,
as a user would; after the last approval the destination equals the source byte for byte and
`mongo-migrate verify` passes.

The moments' jitter comes from random.Random(seed): the seed is printed, and DEST_KILL_SEED=<n> replays it.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Crashed
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from mongo_migrate.blocks.spec import META_DATABASE
from mongo_migrate.flows.approval import approve_cutover
from mongo_migrate.sandbox.mongod import Mongod
from mongo_migrate.tasks.state import COPY_UNITS, SYNC_STATE
from tests.conftest import ROOT, assert_same_documents, index_specs, user_collections
from tests.load import SourceLoad, seed
from tests.test_faults import write_spec
from tests.test_incremental import waiting_since

DOCS = 6000  # shop.orders: 6 copy ranges of 1000, shop.items: 2
SEED = int(os.environ.get("DEST_KILL_SEED") or random.SystemRandom().randrange(1_000_000))


class Runs:
    """The `mongo-migrate run SPEC` processes of the test, one at a time: a run that ended with an error
    is started again (that is what a user does)."""

    def __init__(self, prefect_api: str, spec_path: Path, logs: Path) -> None:
        self.prefect_api, self.spec_path, self.logs = prefect_api, spec_path, logs
        self.procs: list[subprocess.Popen] = []
        self.exits: list[int] = []
        self.start()

    def start(self) -> None:
        n = len(self.procs) + 1
        out = open(self.logs / f"run{n}.out", "w")
        err = open(self.logs / f"run{n}.log", "w")
        self.procs.append(subprocess.Popen(
            [sys.executable, "-m", "mongo_migrate.flows.cli", "--verbose", "run", str(self.spec_path), "--json"],
            cwd=ROOT,
            env={**os.environ, "PREFECT_API_URL": self.prefect_api}, stdout=out, stderr=err, text=True))

    @property
    def current(self) -> subprocess.Popen:
        return self.procs[-1]

    def log(self) -> str:
        return (self.logs / f"run{len(self.procs)}.log").read_text(errors="replace")

    def keep_running(self) -> None:
        code = self.current.poll()
        if code is None:
            return
        assert code == 1, f"the run ended with {code} before its cutover was approved:\n{self.log()[-3000:]}"
        self.exits.append(code)
        print(f"run {len(self.procs)} exited {code}: {self.log().strip().splitlines()[-1:]}; running it again")
        assert len(self.procs) < 6, "the spec was run 6 times without success"
        self.start()

    def wait_for(self, condition, what: str, timeout: float = 120):
        """Poll `condition` (errors from a destination that is coming back count as not yet), running
        the spec again whenever the current run has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
            except PyMongoError:
                value = None
            if value:
                return value
            self.keep_running()
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what} (seed {SEED}):\n{self.log()[-3000:]}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def crash_waiting_runs(started: datetime) -> None:
    """A run left paused by a failed test (its process killed) is marked crashed, so that the next
    tests do not find it waiting for approval."""
    for run in waiting_since(started):
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Crashed(message="the test that ran it ended"), force=True)


@pytest.fixture
def own_dest(tmp_path):
    """A destination of the test's own (the shared one is not killed). enableTestCommands: a failpoint
    holds the index builds so that one is killed while in progress."""
    m = Mongod(tmp_path / "dest", replset="dstk", extra_args=["--setParameter", "enableTestCommands=1"]).start()
    yield m
    m.destroy()


def test_destination_killed_at_five_moments_of_one_migration(
        source, src_client, own_dest, prefect_api, run_cli, tmp_path):
    rng = random.Random(SEED)
    print(f"\ndestination kill seed: {SEED} (replay with DEST_KILL_SEED={SEED})")
    dest = own_dest
    dst = MongoClient(dest.admin_uri(), serverSelectionTimeoutMS=2000)
    started = datetime.now(timezone.utc)
    seed(src_client, docs=DOCS)
    for keys in ([("customer.name", 1)], [("lines.sku", 1), ("n", -1)], [("tags", 1)], [("total", -1)]):
        src_client.shop.orders.create_index(keys)
    spec_path = write_spec(tmp_path / "spec.json", source, dest, migration_types=["full", "incremental"],
                           objects=[{"database": "shop"}], name_mapping={"shop": "shop_v2"},
                           copy_options={"range_docs": 1000, "batch_docs": 20, "parallel_workers": 2},
                           incremental_options={"checkpoint_interval_s": 0.5})
    meta = dst[META_DATABASE]
    moments: list[str] = []

    def kill(moment: str) -> None:
        t = time.monotonic()
        dest.kill()
        dest.start()
        moments.append(moment)
        print(f"killed the destination {moment}; back in {time.monotonic() - t:.1f}s")

    def sync_state() -> dict:
        return meta[SYNC_STATE].find_one() or {}

    load = SourceLoad(src_client, pace_s=0.05, seed_docs=DOCS).start()
    runs = Runs(prefect_api, spec_path, tmp_path)
    try:
        # 1. the copy: after a few of its ranges are done (the start point is saved before the copy,
        # and DDL on the source starts then: the precheck is over)
        runs.wait_for(sync_state, "the start point")
        load.ddl.set()
        ranges = rng.randint(1, 4)  # of 8
        runs.wait_for(lambda: meta[COPY_UNITS].count_documents({"done": True}) >= ranges,
                      f"{ranges} copied ranges")
        # the indexes are built once the whole copy is over
        assert list(index_specs(dst, "shop_v2.orders")) == ["_id_"], "the copy was over before the kill"
        kill(f"during the copy ({ranges} ranges done)")

        # 2. an index build in progress on a target collection (held by the failpoint; a restart
        # clears it, and the interrupted build is rebuilt at startup)
        dst.admin.command("configureFailPoint", "hangAfterStartingIndexBuild", mode="alwaysOn")
        building = [{"$currentOp": {}},
                    {"$match": {"command.createIndexes": {"$exists": True}, "ns": {"$regex": "^shop_v2\\."}}}]
        runs.wait_for(lambda: list(dst.admin.aggregate(building)), "an index build", timeout=180)
        time.sleep(rng.uniform(0, 0.5))
        kill("during the index builds")

        # 3. the sync, catching up with what was written since the start point
        events = rng.randint(1, 400)
        runs.wait_for(lambda: sync_state().get("status") == "syncing"
                      and sync_state().get("events_applied", 0) >= events,
                      f"the sync to apply {events} changes", timeout=180)
        kill(f"during the sync ({sync_state().get('events_applied')} changes applied)")

        # 4. the sync again, while the run waits for approval
        runs.wait_for(lambda: waiting_since(started), "the run to wait for approval", timeout=180)
        events = sync_state()["events_applied"] + rng.randint(20, 300)
        runs.wait_for(lambda: sync_state().get("events_applied", 0) >= events,
                      f"the sync to apply {events} changes")
        kill(f"while waiting for approval ({sync_state().get('events_applied')} changes applied)")

        # 5. the cutover: approved, then killed while it drains, checks and verifies
        load.stop()
        run = runs.wait_for(lambda: waiting_since(started), "the run to wait for approval again")[-1]
        approve_cutover(str(run.id), note="under kills")
        approved = len(runs.procs)
        runs.wait_for(lambda: "cutover approved" in runs.log() or len(runs.procs) > approved,
                      "the cutover to start")
        time.sleep(rng.uniform(0, 0.6))
        # the cutover (drain, unique indexes, checks; then the migration's verification) takes a
        # second or two: the kill lands before the run is over
        assert runs.current.poll() != 0, f"the run was over before the kill (seed {SEED})"
        step = "draining and checking" if sync_state().get("status") == "syncing" else "verifying"
        kill(f"during the cutover ({step})")

        # the last run ends cut over; one that failed at the cutover is run again and approved again
        while True:
            code = runs.current.wait(180)
            if code == 0:
                break
            runs.keep_running()
            run = runs.wait_for(lambda: waiting_since(started), "the rerun to wait for approval",
                                timeout=180)[-1]
            approve_cutover(str(run.id), note="rerun after a kill")
        summary = json.loads((tmp_path / f"run{len(runs.procs)}.out").read_text())
    finally:
        load._stop.set()
        runs.stop()
        crash_waiting_runs(started)
        dst.close()
    print(f"seed {SEED}: {len(runs.procs)} run(s), exits {runs.exits}; moments: {moments}")
    assert len(moments) == 5
    assert summary["status"] == "completed" and summary["counts_match"] is True
    assert summary["sync"]["status"] == "cut_over"

    names = user_collections(src_client, "shop")
    with dest.client() as dst:
        assert user_collections(dst, "shop_v2") == names
        for name in names:
            assert_same_documents(src_client, dst, f"shop.{name}", f"shop_v2.{name}")
            assert index_specs(dst, f"shop_v2.{name}") == index_specs(src_client, f"shop.{name}"), name
        assert "other" not in dst.list_database_names()
    verify = run_cli("verify", str(spec_path))
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-3000:]
