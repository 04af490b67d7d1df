"""Benchmark of the incremental sync (not a test): delay under a stepped write load, catch-up rate
after a backlog, peak RSS of the syncing process.

    .venv/bin/python bench/incremental.py                      # 60 s per step, 60 s backlog
    .venv/bin/python bench/incremental.py --step-seconds 10 --backlog-seconds 10
    .venv/bin/python bench/incremental.py --source-version 4.2.6 --source-version 6.0.5
    .venv/bin/python bench/incremental.py --endpoints both --step-seconds 20 --backlog-seconds 20

Two local mongods (source and destination replica sets, as in the tests) on this machine; the sync
(tasks/sync/engine.py `ChangeSync`, as the incremental-sync flow runs it) in a process of its own, which
reports its delay every 0.25 s; the load generator in this process: threads doing single-document
inserts (1 KB), updates ($set + $inc) and deletes at a fixed total rate, 40/40/20. Each step runs the
load at one rate; the last step runs it unthrottled (the generator's own ceiling on this machine).
A step "kept up" when the sync is caught up (delay 0) within 2 s of the load stopping.
Then the sync is stopped, the load runs unthrottled for the backlog time, and the sync is started
again from its checkpoint: catch-up rate = backlog changes / time to apply them.

`--endpoints block` gives the sync its endpoints as saved MongoEndpoint blocks on a local `prefect
server start` (as UI and deployment runs do), `--endpoints both` runs URIs then blocks on fresh
mongods and prints the blocks' delay over the URIs' (target: p99 within 10%: each block is loaded once
per run and process, so the Prefect API is on no path of the sync).

`--source-version` (repeatable) runs the whole measurement once per source version, each on a fresh
source and destination (the destination is always 6.0.5), one block of figures per version, then each
other version's delay p50/p99 per step and catch-up rate as a ratio to 6.0.5's of the same run. Before
6.0 the sync reads create/index/collMod from the oplog and merges them into the change stream
(tasks/sync/sources.py); the target is that path within 20% of 6.0's (delay ratio <= 1.2, catch-up
ratio >= 0.8). Change events carry `wallTime` only from 6.0: before, the sync's delay is measured from
the event's cluster time, whole seconds (so up to 1 s more, 0.5 s on average).
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

from measure import prefect_server, rss_mb  # noqa: E402  (bench/ is the script's directory)

DOC_PAD = "x" * 900
REFERENCE_VERSION = "6.0.5"  # the destination's, and what other source versions are compared with
TARGET = 0.20  # other versions within 20% of 6.0.5
ENDPOINTS_TARGET = 0.10  # block endpoints within 10% of URI endpoints


# -- the sync, in its own process --------------------------------------------------------------------
def sync_worker(spec_json: str) -> None:
    from mongo_migrate.blocks.spec import parse_spec
    from mongo_migrate.tasks.sync.engine import ChangeSync

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
        # ts_delay: the delay from the applied change's cluster time in whole seconds, as the sync
        # must measure it before 6.0 (no wallTime in change events); the same measure on every version
        position = sync.position_time
        ts_delay = (0.0 if sync.caught_up else None if position is None
                    else max(0.0, sync.source_now() - position.time))
        print(json.dumps({"t": time.time(), "delay": sync.delay_s, "ts_delay": ts_delay,
                          "events": sync.events_applied, "caught_up": sync.caught_up}), flush=True)
    sync.stop()
    worker.join(60)
    print(json.dumps({"stopped": True, "events": sync.events_applied}), flush=True)


class SyncProcess:
    def __init__(self, spec: dict, env: dict | None = None) -> None:
        self.samples: list[dict] = []
        self.peak_rss_mb = 0.0
        self.proc = subprocess.Popen([sys.executable, __file__, "--sync-worker", json.dumps(spec)],
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
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


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference; 1.0 when both are 0 (both caught up throughout), None when undefined."""
    if value is None or reference is None or value != value or reference != reference:
        return None
    if reference == 0:
        return 1.0 if value == 0 else float("inf")
    return value / reference


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else ("inf" if r == float("inf") else f"{r:.2f}")


def measure(args: argparse.Namespace, version: str, several: bool, endpoints: str = "uri",
            prefect_api: str | None = None) -> dict:
    """One source version's run (a fresh source and destination), the endpoints given by URI or as
    saved MongoEndpoint blocks (on the Prefect server at `prefect_api`); prints its block and
    returns its figures."""
    from pymongo import MongoClient

    from mongo_migrate.blocks.mongo import server_hello
    from mongo_migrate.blocks.spec import parse_spec
    from mongo_migrate.sandbox.mongod import Mongod
    from mongo_migrate.tasks.sync.position import save_start_point

    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    # 6.0.5 is the default mongod's (as before this option); others come from sandbox.servers
    source = Mongod(work / "source", replset="src", small_journal=False,
                    version=None if version == REFERENCE_VERSION else version).start()
    dest = Mongod(work / "dest", replset="dst", small_journal=False).start()
    figures: dict = {"version": version, "endpoints": endpoints, "steps": []}
    try:
        src = MongoClient(source.uri())
        if several:
            running = src.server_info()["version"]
            primary = server_hello(src).get("isWritablePrimary")
            print(f"== source MongoDB {running} ({'primary' if primary else 'NOT primary'}) ==", flush=True)
        src.bench.docs.insert_many(
            [{"_id": i, "n": i, "pad": DOC_PAD, "tags": ["a", "b"]} for i in range(args.docs)])
        # the destination starts as the full copy would leave it
        dst = MongoClient(dest.uri())
        dst.bench.docs.insert_many(
            [{"_id": i, "n": i, "pad": DOC_PAD, "tags": ["a", "b"]} for i in range(args.docs)])
        spec = {"source": {"uri": source.uri()}, "destination": {"uri": dest.uri()},
                "migration_types": ["full", "incremental"], "objects": [{"database": "bench"}],
                "incremental_options": {"apply_workers": args.workers}}
        env = dict(os.environ)
        if endpoints == "block":
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from mongo_migrate.blocks.mongo import MongoEndpoint

            with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
                MongoEndpoint(uri=source.uri()).save("bench-source", overwrite=True)
                MongoEndpoint(uri=dest.uri()).save("bench-destination", overwrite=True)
                spec.update(source={"block": "bench-source"}, destination={"block": "bench-destination"})
                save_start_point(parse_spec(spec), resumed=False)
            env["PREFECT_API_URL"] = prefect_api
            print("== endpoints: saved MongoEndpoint blocks on a local Prefect server ==", flush=True)
        else:
            if several:
                print("== endpoints: URIs ==", flush=True)
            save_start_point(parse_spec(spec), resumed=False)
        load = Load(src, args.docs, threads=args.threads)
        sync = SyncProcess(spec, env)
        sync.wait_caught_up(60)
        servers = (f"source and destination: MongoDB {REFERENCE_VERSION} replica sets" if not several else
                   f"source: MongoDB {version} replica set, destination: MongoDB {REFERENCE_VERSION} replica set")
        print(f"{servers} on this machine ({os.cpu_count()} CPUs); "
              f"{args.docs:,} documents of ~1 KB; load {args.threads} threads, 40% insert / 40% update / "
              f"20% delete, single-document writes; sync {args.workers} apply workers"
              + ("; ts p50/p99: the delay from cluster time in whole seconds (how the sync measures it "
                 "before 6.0, no wallTime), for every version alike" if several else "") + "\n")
        print(f"{'target ops/s':>12} {'achieved':>9} {'delay p50':>10} {'delay p99':>10} {'max':>7} "
              f"{'drain':>7}  kept up" + (f"  {'ts p50':>10} {'ts p99':>10}" if several else ""))
        top_rate = 0.0
        for step in args.rates.split(","):
            rate = None if step.strip() == "max" else float(step)
            first = len(sync.samples)
            achieved = load.run(rate, args.step_seconds)
            delays = [s["delay"] for s in sync.samples[first:] if s.get("delay") is not None]
            ts_delays = [s["ts_delay"] for s in sync.samples[first:] if s.get("ts_delay") is not None]
            drain = sync.wait_caught_up(max(30.0, args.step_seconds))
            kept_up = drain is not None and drain <= 2.0
            top_rate = max(top_rate, achieved)
            p50, p99 = percentile(delays, 50), percentile(delays, 99)
            figures["steps"].append({"step": step.strip(), "achieved": achieved, "p50": p50, "p99": p99,
                                     "max": max(delays, default=float("nan")), "drain": drain,
                                     "kept_up": kept_up, "ts_p50": percentile(ts_delays, 50),
                                     "ts_p99": percentile(ts_delays, 99)})
            print(f"{step:>12} {achieved:>9,.0f} {p50:>9.2f}s {p99:>9.2f}s "
                  f"{max(delays, default=float('nan')):>6.2f}s "
                  f"{('%.1fs' % drain) if drain is not None else '>30s':>7}  {'yes' if kept_up else 'NO'}"
                  + (f"  {percentile(ts_delays, 50):>9.2f}s {percentile(ts_delays, 99):>9.2f}s" if several else ""),
                  flush=True)

        # catch-up after a backlog: the sync is down while the load runs unthrottled
        sync.stop()
        events_before = sync.last().get("events", 0)
        backlog_ops_before = load.ops
        backlog_rate = load.run(None, args.backlog_seconds)
        backlog = load.ops - backlog_ops_before
        peak = sync.peak_rss_mb
        sync = SyncProcess(spec, env)
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
        figures["catch_up"] = None
        if took is not None:
            rate = applied / apply_s
            figures["catch_up"] = rate
            print(f"catch-up: {applied:,} changes applied in {apply_s:.1f}s from the sync's start "
                  f"({took:.1f}s with the process start): {rate:,.0f} changes/s = "
                  f"{rate / top_rate:.1f}x the generator's top rate of {top_rate:,.0f} ops/s")
        else:
            print("catch-up: not caught up within 600 s")
        figures["peak_rss_mb"] = peak
        print(f"peak RSS of the sync process: {peak:.0f} MB")
        same = src.bench.docs.count_documents({}) == dst.bench.docs.count_documents({})
        figures["counts_equal"] = same
        print(f"counts equal after the run: {same}", flush=True)
    finally:
        source.destroy()
        dest.destroy()
    return figures


def print_endpoint_ratios(results: list[dict]) -> None:
    """Block endpoints' figures over URI endpoints' of the same source version in this run: the sync
    loads each block once, so the target is the same delay (within ENDPOINTS_TARGET)."""
    for block in (r for r in results if r["endpoints"] == "block"):
        uri = next((r for r in results if r["endpoints"] == "uri" and r["version"] == block["version"]), None)
        if uri is None:
            continue
        print(f"\n== source {block['version']}: block endpoints / URI endpoints, measured in this run "
              f"(target: delay p99 within {ENDPOINTS_TARGET:.0%}) ==")
        print(f"{'target ops/s':>12} {'achieved':>9} {'delay p50':>10} {'delay p99':>10} {'p99 s (uri, block)':>20}")
        ref_steps = {s["step"]: s for s in uri["steps"]}
        misses = []
        for s in block["steps"]:
            ref = ref_steps.get(s["step"])
            if ref is None:
                continue
            r99 = ratio(s["p99"], ref["p99"])
            print(f"{s['step']:>12} {fmt_ratio(ratio(s['achieved'], ref['achieved'])):>9} "
                  f"{fmt_ratio(ratio(s['p50'], ref['p50'])):>10} {fmt_ratio(r99):>10} "
                  f"{ref['p99']:>9.3f}, {s['p99']:.3f}")
            # a p99 under 50 ms is below what this measure resolves (samples every 0.25 s)
            if (r99 is None or r99 > 1 + ENDPOINTS_TARGET) and max(s["p99"], ref["p99"]) > 0.05:
                misses.append(f"p99 at {s['step']} ({fmt_ratio(r99)})")
        print(f"catch-up changes/s: {fmt_ratio(ratio(block.get('catch_up'), uri.get('catch_up')))}")
        print(f"delay p99 within {ENDPOINTS_TARGET:.0%}: " + ("yes" if not misses else "NO: " + ", ".join(misses)),
              flush=True)


def print_ratios(results: list[dict]) -> None:
    """Each other version's figures over 6.0.5's of the same run, and whether they are within 20%."""
    kind = results[0]["endpoints"]  # versions are compared with their endpoints given alike
    results = [r for r in results if r["endpoints"] == kind]
    reference = next((r for r in results if r["version"] == REFERENCE_VERSION), None)
    others = [r for r in results if r["version"] != REFERENCE_VERSION]
    if not others:
        return
    print(f"\n== ratios to MongoDB {REFERENCE_VERSION} measured in this run "
          f"(target: within {TARGET:.0%}: delay <= {1 + TARGET:.2f}, catch-up >= {1 - TARGET:.2f}) ==")
    if reference is None:
        print(f"none: {REFERENCE_VERSION} was not measured in this run (add --source-version {REFERENCE_VERSION})")
        return
    ref_steps = {s["step"]: s for s in reference["steps"]}
    for other in others:
        misses = []
        print(f"\nsource {other['version']} / {REFERENCE_VERSION}:")
        ts_misses = []
        print(f"{'target ops/s':>12} {'achieved':>9} {'delay p50':>10} {'delay p99':>10} "
              f"{'ts p50':>10} {'ts p99':>10}")
        for s in other["steps"]:
            ref = ref_steps.get(s["step"])
            if ref is None:
                continue
            r50, r99 = ratio(s["p50"], ref["p50"]), ratio(s["p99"], ref["p99"])
            t50, t99 = ratio(s["ts_p50"], ref["ts_p50"]), ratio(s["ts_p99"], ref["ts_p99"])
            print(f"{s['step']:>12} {fmt_ratio(ratio(s['achieved'], ref['achieved'])):>9} "
                  f"{fmt_ratio(r50):>10} {fmt_ratio(r99):>10} {fmt_ratio(t50):>10} {fmt_ratio(t99):>10}")
            for name, r, t in (("p50", r50, t50), ("p99", r99, t99)):
                if r is None or r > 1 + TARGET:
                    misses.append(f"delay {name} at {s['step']} ({fmt_ratio(r)})")
                if t is None or t > 1 + TARGET:
                    ts_misses.append(f"ts delay {name} at {s['step']} ({fmt_ratio(t)})")
        rc = ratio(other.get("catch_up"), reference.get("catch_up"))
        print(f"catch-up changes/s: {fmt_ratio(rc)} "
              f"({other.get('catch_up') or 0:,.0f} / {reference.get('catch_up') or 0:,.0f})")
        if rc is None or rc < 1 - TARGET:
            misses.append(f"catch-up ({fmt_ratio(rc)})")
        print(f"peak RSS: {fmt_ratio(ratio(other['peak_rss_mb'], reference['peak_rss_mb']))}")
        print(f"within {TARGET:.0%} of {REFERENCE_VERSION}: "
              + ("yes" if not misses else "NO: " + ", ".join(misses)), flush=True)
        catch_up_miss = [m for m in misses if m.startswith("catch-up")]
        print(f"within {TARGET:.0%} with the delay measured alike (ts, cluster time seconds) and catch-up: "
              + ("yes" if not ts_misses + catch_up_miss else "NO: " + ", ".join(ts_misses + catch_up_miss)),
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="500,1000,2000,max",
                    help="load steps in ops/s; 'max' runs the generator unthrottled")
    ap.add_argument("--step-seconds", type=float, default=60.0)
    ap.add_argument("--backlog-seconds", type=float, default=60.0)
    ap.add_argument("--docs", type=int, default=50_000, help="documents on the source before the load")
    ap.add_argument("--threads", type=int, default=4, help="load generator threads")
    ap.add_argument("--workers", type=int, default=4, help="the sync's apply workers")
    ap.add_argument("--source-version", action="append", dest="versions", metavar="VERSION",
                    help=f"source MongoDB version (repeatable: one run each, then ratios to "
                         f"{REFERENCE_VERSION}); default {REFERENCE_VERSION} only")
    ap.add_argument("--endpoints", choices=["uri", "block", "both"], default="uri",
                    help="how the sync is given its endpoints: URIs, saved MongoEndpoint blocks (a local "
                         "`prefect server start` is run for them), or one run of each, then their ratios")
    args = ap.parse_args()
    versions = args.versions or [REFERENCE_VERSION]
    kinds = ["uri", "block"] if args.endpoints == "both" else [args.endpoints]
    several = versions != [REFERENCE_VERSION] or len(kinds) > 1
    results = []
    server = None
    with tempfile.TemporaryDirectory(prefix="bench-prefect-") as home:
        if "block" in kinds:
            server = prefect_server(Path(home))
        try:
            for version in versions:
                for kind in kinds:
                    if results:
                        print()
                    results.append(measure(args, version, several, kind, server[1] if server else None))
        finally:
            if server is not None:
                server[0].terminate()
                server[0].wait(30)
    print_ratios(results)
    print_endpoint_ratios(results)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--sync-worker":
        sync_worker(sys.argv[2])
    else:
        main()
