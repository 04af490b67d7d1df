"""Benchmark of the incremental sync (not a test): delay under a stepped write load, catch-up rate
after a backlog, peak RSS of the syncing process.

    .venv/bin/python bench/incremental.py                      # 60 s per step, 60 s backlog
    .venv/bin/python bench/incremental.py --step-seconds 10 --backlog-seconds 10

Two local mongods (source and destination replica sets, as in the tests) on this machine; the sync
(tasks/changes.py `ChangeSync`, as the incremental-sync flow runs it) in a process of its own, which
reports its delay every 0.25 s; the load generator in this process: threads doing single-document
inserts (1 KB), updates ($set + $inc) and deletes at a fixed total rate, 40/40/20. Each step runs the
load at one rate; the last step runs it unthrottled (the generator's own ceiling on this machine).
A step "kept up" when the sync is caught up (delay 0) within 2 s of the load stopping.
Then the sync is stopped, the load runs unthrottled for the backlog time, and the sync is started
again from its checkpoint: catch-up rate = backlog changes / time to apply them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import rss_mb  # noqa: E402  (bench/ is the script's directory)

DOC_PAD = "x" * 900


# -- the sync, in its own process --------------------------------------------------------------------
def sync_worker(spec_json: str) -> None:
    from blocks.spec import parse_spec
    from tasks.changes import ChangeSync

    spec = parse_spec(json.loads(spec_json))
    sync = ChangeSync(spec)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker = threading.Thread(target=sync.run, daemon=True)
    print(json.dumps({"started": time.time()}), flush=True)
    worker.start()
    while not stop.wait(0.25):
        if sync.error is not None:
            print(json.dumps({"error": str(sync.error)}), flush=True)
            return
        print(json.dumps({"t": time.time(), "delay": sync.delay_s, "events": sync.events_applied,
                          "caught_up": sync.caught_up}), flush=True)
    sync.stop()
    worker.join(60)
    print(json.dumps({"stopped": True, "events": sync.events_applied}), flush=True)


class SyncProcess:
    def __init__(self, spec: dict) -> None:
        self.samples: list[dict] = []
        self.peak_rss_mb = 0.0
        self.proc = subprocess.Popen([sys.executable, __file__, "--sync-worker", json.dumps(spec)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            sample = json.loads(line)
            if "error" in sample:
                print("sync failed:", sample["error"], file=sys.stderr)
            self.samples.append(sample)
            self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.proc.pid, "VmHWM"))

    def last(self) -> dict:
        return self.samples[-1] if self.samples else {}

    def wait_caught_up(self, timeout: float) -> float | None:
        """Seconds until the sync reports delay 0, or None."""
        start = time.monotonic()
        seen = len(self.samples)
        while time.monotonic() - start < timeout:
            if len(self.samples) > seen and self.last().get("caught_up"):
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.proc.pid, "VmHWM"))
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self._reader.join(10)


# -- the load ---------------------------------------------------------------------------------------
class Load:
    """Single-document writes from `threads` threads at a total of `rate` ops/s (None: unthrottled)."""

    def __init__(self, client, next_id: int, threads: int = 4) -> None:
        self.coll = client.bench.docs
        self.next_id = next_id
        self.lock = threading.Lock()
        self.threads = threads
        self.ops = 0

    def _new_id(self) -> int:
        with self.lock:
            self.next_id += 1
            return self.next_id

    def run(self, rate: float | None, seconds: float) -> float:
        """Returns the rate achieved (ops/s)."""
        ops_before = self.ops
        end = time.monotonic() + seconds
        per_thread = None if rate is None else rate / self.threads

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            n = 0
            started = time.monotonic()
            while True:
                now = time.monotonic()
                if now >= end:
                    return
                if per_thread is not None:
                    due = started + n / per_thread
                    if due > now:
                        time.sleep(min(due - now, end - now))
                        continue
                pick = rng.random()
                top = self.next_id
                if pick < 0.4:
                    self.coll.insert_one({"_id": self._new_id(), "n": n, "pad": DOC_PAD, "tags": ["a", "b"]})
                elif pick < 0.8:
                    self.coll.update_one({"_id": rng.randrange(top)},
                                         {"$set": {"s": rng.random(), "nested.k": n}, "$inc": {"n": 1}})
                else:
                    self.coll.delete_one({"_id": rng.randrange(top)})
                n += 1
                with self.lock:
                    self.ops += 1

        started = time.monotonic()
        ts = [threading.Thread(target=worker, args=(i + int(started * 1000),)) for i in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return (self.ops - ops_before) / (time.monotonic() - started)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="500,1000,2000,max",
                    help="load steps in ops/s; 'max' runs the generator unthrottled")
    ap.add_argument("--step-seconds", type=float, default=60.0)
    ap.add_argument("--backlog-seconds", type=float, default=60.0)
    ap.add_argument("--docs", type=int, default=50_000, help="documents on the source before the load")
    ap.add_argument("--threads", type=int, default=4, help="load generator threads")
    ap.add_argument("--workers", type=int, default=4, help="the sync's apply workers")
    args = ap.parse_args()

    from pymongo import MongoClient

    from sandbox.mongod import Mongod

    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    source = Mongod(work / "source", replset="src").start()
    dest = Mongod(work / "dest", replset="dst").start()
    try:
        src = MongoClient(source.uri())
        src.bench.docs.insert_many(
            [{"_id": i, "n": i, "pad": DOC_PAD, "tags": ["a", "b"]} for i in range(args.docs)])
        # the destination starts as the full copy would leave it
        dst = MongoClient(dest.uri())
        dst.bench.docs.insert_many(
            [{"_id": i, "n": i, "pad": DOC_PAD, "tags": ["a", "b"]} for i in range(args.docs)])
        spec = {"source": {"uri": source.uri()}, "destination": {"uri": dest.uri()},
                "migration_types": ["full", "incremental"], "objects": [{"database": "bench"}],
                "incremental_options": {"apply_workers": args.workers}}
        from blocks.spec import parse_spec
        from tasks.changes import save_start_point

        save_start_point(parse_spec(spec), resumed=False)
        load = Load(src, args.docs, threads=args.threads)
        sync = SyncProcess(spec)
        sync.wait_caught_up(60)
        print(f"source and destination: MongoDB 6.0.5 replica sets on this machine ({os.cpu_count()} CPUs); "
              f"{args.docs:,} documents of ~1 KB; load {args.threads} threads, 40% insert / 40% update / "
              f"20% delete, single-document writes; sync {args.workers} apply workers\n")
        print(f"{'target ops/s':>12} {'achieved':>9} {'delay p50':>10} {'delay p99':>10} {'max':>7} "
              f"{'drain':>7}  kept up")
        top_rate = 0.0
        for step in args.rates.split(","):
            rate = None if step.strip() == "max" else float(step)
            first = len(sync.samples)
            achieved = load.run(rate, args.step_seconds)
            delays = [s["delay"] for s in sync.samples[first:] if s.get("delay") is not None]
            drain = sync.wait_caught_up(max(30.0, args.step_seconds))
            kept_up = drain is not None and drain <= 2.0
            top_rate = max(top_rate, achieved)
            print(f"{step:>12} {achieved:>9,.0f} {percentile(delays, 50):>9.2f}s {percentile(delays, 99):>9.2f}s "
                  f"{max(delays, default=float('nan')):>6.2f}s "
                  f"{('%.1fs' % drain) if drain is not None else '>30s':>7}  {'yes' if kept_up else 'NO'}",
                  flush=True)

        # catch-up after a backlog: the sync is down while the load runs unthrottled
        sync.stop()
        events_before = sync.last().get("events", 0)
        backlog_ops_before = load.ops
        backlog_rate = load.run(None, args.backlog_seconds)
        backlog = load.ops - backlog_ops_before
        peak = sync.peak_rss_mb
        sync = SyncProcess(spec)
        took = sync.wait_caught_up(600)
        sync.stop()
        # the rate from the sync's own samples: from its first report (process started, stream
        # opened) to the first report of delay 0
        sync_started = next(s["started"] for s in sync.samples if "started" in s)
        running = [s for s in sync.samples if "t" in s]
        done = next((s for s in running if s["caught_up"]), running[-1])
        applied = done["events"] - events_before
        apply_s = max(done["t"] - sync_started, 1e-3)
        peak = max(peak, sync.peak_rss_mb)
        print(f"\nbacklog: {backlog:,} writes in {args.backlog_seconds:.0f}s ({backlog_rate:,.0f} ops/s) "
              f"with the sync stopped: {applied:,} change events (a delete or update of a document "
              f"already deleted writes nothing)")
        if took is not None:
            rate = applied / apply_s
            print(f"catch-up: {applied:,} changes applied in {apply_s:.1f}s from the sync's start "
                  f"({took:.1f}s with the process start): {rate:,.0f} changes/s = "
                  f"{rate / top_rate:.1f}x the generator's top rate of {top_rate:,.0f} ops/s")
        else:
            print("catch-up: not caught up within 600 s")
        print(f"peak RSS of the sync process: {peak:.0f} MB")
        same = src.bench.docs.count_documents({}) == dst.bench.docs.count_documents({})
        print(f"counts equal after the run: {same}")
    finally:
        source.destroy()
        dest.destroy()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--sync-worker":
        sync_worker(sys.argv[2])
    else:
        main()
