"""Twenty SIGKILLs in a row lose nothing: one migration (full + incremental, a write load with updates,
deletes, transactions and DDL) is killed at 20 random moments spread over the precheck, the collection
creation, the copy, the index builds, the sync and the cutover, and the same spec is run again each
time; after the last approval the destination equals the source byte for byte and `verify` exits 0.

The moments are seeded: the seed is printed, and MONGO_MIGRATE_KILL_SEED=<seed> replays them."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest

from mongo_migrate.flows.approval import approve_cutover, waiting_for_approval
from tests.conftest import META_DATABASE, ROOT, assert_same_documents, index_specs, insert_raw, user_collections
from tests.load import SourceLoad, seed
from tests.test_faults import write_spec

# (phase, the log text that says it has begun, longest random wait after it before the kill)
PHASES = {
    "precheck": ("check_connectivity", 1.0),
    "collections": ("start_run", 0.3),
    "copy": ("copy_collection_range", 1.5),
    "indexes": ("build_indexes", 0.4),
    "sync": ("for flow 'incremental-sync'", 2.0),
    "cutover": ("cutover approved", 0.8),
}
SCHEDULE = ["precheck"] * 3 + ["collections"] * 3 + ["copy"] * 4 + ["indexes"] * 2 + ["sync"] * 5 + ["cutover"] * 3


class Run:
    """`mongo-migrate run SPEC` in the background, its output read line by line as it comes."""

    def __init__(self, prefect_api: str, spec_path: str, log_path=None, env: dict | None = None) -> None:
        self.log = open(log_path, "w") if log_path else None
        self.started = datetime.now(timezone.utc)
        self.t0 = time.monotonic()
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mongo_migrate.flows.cli", "--verbose", "run", spec_path], cwd=ROOT, text=True,
            env={**os.environ, "PREFECT_API_URL": prefect_api, **(env or {})}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if self.log:
                self.log.write(f"{time.monotonic() - self.t0:7.2f} {line}")
                self.log.flush()

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def waiting(self) -> list:
        return [r for r in waiting_for_approval() if r.created and r.created >= self.started]

    def wait_until(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        return False

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._reader.join(5)
        return self.proc.returncode

    def tail(self) -> str:
        return "\n".join(self.lines[-40:])


@pytest.mark.timeout(900)
def test_twenty_kills_in_a_row_lose_nothing(source, dest, src_client, dst_client, prefect_api, run_cli,
                                            tmp_path):
    kill_seed = int(os.environ.get("MONGO_MIGRATE_KILL_SEED") or time.time_ns() % 2**31)
    print(f"kill seed {kill_seed}: MONGO_MIGRATE_KILL_SEED={kill_seed} replays these moments")
    rng = random.Random(kill_seed)
    seed(src_client, docs=600)
    import bson
    from bson.raw_bson import RawBSONDocument

    # enough documents in small ranges and batches that the copy is killed more than once
    insert_raw(src_client, "shop.bulk", [RawBSONDocument(bson.encode({"_id": i, "pad": "x" * 200}))
                                         for i in range(40_000)])
    src_client.shop.bulk.create_index([("pad", 1), ("_id", -1)], name="pad_id")
    path = write_spec(tmp_path / "spec.json", source, dest, migration_types=["full", "incremental"],
                      objects=[{"database": "shop"}], name_mapping={"shop": "shop_v2"},
                      copy_options={"range_docs": 4000, "batch_docs": 200, "parallel_workers": 2},
                      incremental_options={"checkpoint_interval_s": 0.5})
    load = SourceLoad(src_client, pace_s=0.03, seed_docs=600, ddl_every=8).start()
    moments: list[str] = []
    try:
        for k, phase in enumerate(SCHEDULE):
            if phase == "cutover" and not load._stop.is_set():
                load.stop()  # a person stops the application's writes when they approve
            run = Run(prefect_api, str(path), tmp_path / f"run{k + 1}.log")
            marker, jitter = PHASES[phase]
            later = [PHASES[p][0] for p in list(PHASES)[list(PHASES).index(phase):]]
            if phase == "cutover":
                assert run.wait_until(run.waiting, 180), f"kill {k + 1}: no approval wait\n{run.tail()}"
                approve_cutover(str(run.waiting()[0].id), note=f"kill {k + 1}")
            if dst_client[META_DATABASE]["sync_state"].find_one():
                load.ddl.set()  # the start point is saved: from now on collections may come and go
            reached = run.wait_until(lambda: any(run.saw(m) for m in later), 180)
            wait = rng.uniform(0, jitter)
            time.sleep(wait)
            code = run.kill()
            moments.append(f"{k + 1:2d} {phase:<11} +{wait:.2f}s {'killed' if code == -9 else f'exit {code}'} "
                           f"after {time.monotonic() - run.t0:.1f}s")
            print(moments[-1], flush=True)
            assert code == -signal.SIGKILL, f"kill {k + 1} ({phase}): the run ended first (exit {code}, " \
                f"marker seen: {reached})\n{run.tail()}\nmoments so far:\n" + "\n".join(moments)
        print("\n".join(moments))
        # the last run, left alone: approved, cut over, verified
        final = Run(prefect_api, str(path))
        assert final.wait_until(final.waiting, 240), final.tail()
        approve_cutover(str(final.waiting()[0].id), note="after twenty kills")
        assert final.proc.wait(240) == 0, final.tail()
    finally:
        load._stop.set()
    names = user_collections(src_client, "shop")
    assert user_collections(dst_client, "shop_v2") == names
    for name in names:
        assert_same_documents(src_client, dst_client, f"shop.{name}", f"shop_v2.{name}")
        assert index_specs(dst_client, f"shop_v2.{name}") == index_specs(src_client, f"shop.{name}"), name
    verified = run_cli("verify", str(path))
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
