"""Full-copy benchmark: the whole `mongo-migrate run` against the destination's own ingest ceiling.

Starts a source and a destination replica set (real mongods) in a temp dir, generates N documents of
about --doc-bytes each in --collections collections with one secondary index each, then measures in
the same run, --rounds times each onto an empty destination, in turn:

  ceiling    the source's own server batches, read before the clock starts, inserted by 4 threads
             as OP_MSG document sequences (the way the copy inserts them), then the same secondary
             indexes: the fastest way to build the same end state from those bytes;
  migration  `mongo-migrate run SPEC --json` in a subprocess, the whole command timed from outside
             (Prefect start-up, precheck, copy, indexes, verification of every document, exit), with
             its own per-step seconds and the process's peak RSS (VmHWM) sampled from /proc.

--prefect temporary (no PREFECT_API_URL: the command starts Prefect's temporary server), server (a
`prefect server start` running beside, as a Prefect user has; each run starts once that server is idle:
it digests a run's events after the command has ended, seconds of CPU with many collections) or both.
Prints medians, and the whole command's throughput over the ceiling's (target >= 0.6, peak RSS < 400 MB).

Each measurement also prints its CPU account: the CPU seconds each process used (the destination and
source mongods, the command, the Prefect server: the temporary one as last seen while the command ran,
a running one until it has digested the run; this process, which samples), the least wall time those
seconds fit in on the CPUs here, and so the best ratio to the ceiling the migration's CPU allows: on
shared cores, what is left between that and the ratio measured is the time some CPU idled. A run on
the thread pool also prints its CPU by step: the command's CPU and its temporary server's (the first
process it starts), the mongods' and a running Prefect server's, sampled every 0.05 s and cut at the steps of the
command's summary (before the flow, each step, after it).

--prefect-floor times, in each round, a flow run of one task in a process of its own that starts and
ends as the command does: Prefect's fixed cost on this machine at that moment, printed beside the
command's time.

--skew measures a second layout after the even one, in the same run: the same number of documents
with 90% of them in one collection (its ranges, range_docs each, spread over the workers), and prints
its docs/s over the even layout's (target: within 10%).

--pin puts the destination mongod on CPU 0 alone and everything else (the source, the command, the
Prefect server, the ceiling's client) on CPU 1, for the ceiling and the migration alike: the destination
as on a host of its own, where a real migration's source reads and tool do not take its cores (on this
2-core machine they otherwise share them).

--mongo-tools DIR also measures, in each round, the peers' way of doing it: `mongodump --archive |
mongorestore --archive` (MongoDB Database Tools from DIR, whichever build the user has; --workers
collections in parallel on both sides and --restore-insertion-workers inserting into each collection,
the tools' defaults otherwise: indexes restored after the data, no verification) onto the same empty
destination, timed whole, with its CPU account; each migration is then also given as a ratio of its
time (the promise: no later than dump|restore, measured in the same rounds, whatever this shared
machine's speed of the hour).

--runner dask measures the migration a second time in each round, beside the thread pool, with
copy_options.runner {dask_local_workers: --workers} (a LocalCluster of that many worker processes, one
range at a time each; the thread pool and the ceiling use --workers threads), and prints its docs/s over
the thread pool's and the ceiling's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bson.raw_bson import RawBSONDocument  # noqa: E402
# bench/ is the script's directory
from measure import (CpuAccount, CpuTimeline, add_data_set_args, compile_project, cpu_floor, data_set,  # noqa: E402
                     pin_process, prefect_server, run_cli_json, wait_until_idle)

from mongo_migrate.sandbox.mongod import Mongod  # noqa: E402
from mongo_migrate.sandbox.sample_data import encoded_documents  # noqa: E402
from mongo_migrate.tasks.common import RAW  # noqa: E402
from mongo_migrate.tasks.copy import insert_raw_stream  # noqa: E402


# Prefect's own fixed cost, measured beside the command: a flow run of one task, in a process that
# imports Prefect, runs the flow and ends as `mongo-migrate run` does (its heartbeat thread not waited
# for, then the exit handlers and no interpreter teardown)
PREFECT_FLOOR = """
import atexit, os
atexit.register(os._exit, 0)  # first registered, so it runs last: after Prefect's exit handlers

from prefect import flow, task
from mongo_migrate.flows.cli import _heartbeat_not_awaited

@task
def one_step() -> int:
    return 1

@flow
def bare() -> int:
    return one_step()

_heartbeat_not_awaited()
bare()
"""


def prefect_floor(env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", PREFECT_FLOOR], env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def batches(n: int, start: int, doc_bytes: int, per_batch: int):
    batch: list[RawBSONDocument] = []
    for raw in encoded_documents(n, start, doc_bytes):
        batch.append(RawBSONDocument(raw))
        if len(batch) == per_batch:
            yield batch
            batch = []
    if batch:
        yield batch


def layout(total: int, collections: int, skew: bool) -> list[int]:
    """Documents per collection: even, or 90% in the first and the rest spread over the others."""
    if not skew or collections == 1:
        return [total // collections] * collections
    big = total * 9 // 10
    return [big] + [(total - big) // (collections - 1)] * (collections - 1)


def load(client, db: str, colls: list[str], sizes: list[int], doc_bytes: int, workers: int):
    """Insert sizes[i] documents in collection colls[i] with `workers` threads; returns seconds taken."""
    jobs = []
    start = 0
    for name, n in zip(colls, sizes):
        coll = client[db].get_collection(name, codec_options=RAW)
        jobs += [(coll, b) for b in batches(n, start, doc_bytes, 1000)]
        start += n
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: job[0].insert_many(job[1], ordered=False), jobs))
    return time.perf_counter() - t


def build_indexes(client, db: str, colls: list[str], workers: int) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda name: client[db][name].create_index("k"), colls))
    return time.perf_counter() - t


def ceiling(src, dst, colls: list[str], workers: int, account: CpuAccount | None = None) -> tuple[float, float]:
    """(insert seconds, index seconds): the source's server batches, read first, inserted as the copy
    inserts them, then the indexes; `account` is started once they are read and stopped at the end."""
    sc, dc = src.client(), dst.client()
    pre = [(name, raw) for name in colls
           for raw in sc.bench.get_collection(name, codec_options=RAW).find_raw_batches({}, batch_size=2000)]
    if account:
        account.start()
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: insert_raw_stream(dc.ceiling.get_collection(job[0], codec_options=RAW),
                                                    job[1], f"ceiling.{job[0]}"), pre))
    insert_s = time.perf_counter() - t
    index_s = build_indexes(dc, "ceiling", colls, workers)
    if account:
        account.stop()
    dc.drop_database("ceiling")
    return insert_s, index_s


def dump_restore(src, dst, tools: Path, workers: int, insertion_workers: int,
                 account: CpuAccount | None = None) -> float:
    """Seconds of `mongodump --archive | mongorestore --archive` of the bench database onto the
    destination (both tools' CPU lands in `account`'s "children": they have ended when it stops)."""
    if account:
        account.start()
    t = time.perf_counter()
    dump = subprocess.Popen([str(tools / "mongodump"), f"--uri={src.uri()}", "--db=bench", "--archive",
                             f"--numParallelCollections={workers}", "--quiet"], stdout=subprocess.PIPE)
    restore = subprocess.run([str(tools / "mongorestore"), f"--uri={dst.uri()}", "--archive",
                              f"--numParallelCollections={workers}",
                              f"--numInsertionWorkersPerCollection={insertion_workers}", "--quiet"], stdin=dump.stdout,
                             capture_output=True, text=True)
    dump.stdout.close()
    dumped = dump.wait()
    seconds = time.perf_counter() - t
    if account:
        account.stop()
    if dumped or restore.returncode:
        sys.exit(f"mongodump ({dumped}) | mongorestore ({restore.returncode}) failed:\n{restore.stderr[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_set_args(ap, default_docs=1_000_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--prefect", choices=["temporary", "server", "both"], default="both")
    ap.add_argument("--range-docs", type=int, default=None,
                    help="copy_options.range_docs of the migration (default: the spec's default)")
    ap.add_argument("--runner", choices=["threads", "dask"], default="threads",
                    help="dask: also the migration on a Dask LocalCluster of --workers processes, beside the threads")
    ap.add_argument("--prefect-floor", action="store_true",
                    help="also time a one-task Prefect flow run in a process of its own (Prefect's fixed cost)")
    ap.add_argument("--docs-per-s", type=int, default=None,
                    help="the migration's load cap (throttle.docs_per_s): a copy that leaves the destination "
                         "cores to spare, as on a host of its own")
    ap.add_argument("--pin", action="store_true",
                    help="the destination mongod on CPU 0 alone, everything else on CPU 1 (see above)")
    ap.add_argument("--skew", action="store_true",
                    help="also 90%% of the documents in one collection (the same total), beside the even run")
    ap.add_argument("--mongo-tools", type=Path, default=None, metavar="DIR",
                    help="a folder with mongodump and mongorestore: also measure dump|restore in each round")
    # the fastest of 1 (the tools' default), 2 and 4 on this machine: 30.9, 21.9 and 22.0 s at 1 M, 2 rounds
    ap.add_argument("--restore-insertion-workers", type=int, default=2,
                    help="mongorestore --numInsertionWorkersPerCollection (default 2)")
    args = data_set(ap.parse_args())
    if args.mongo_tools and not all((args.mongo_tools / t).is_file() for t in ("mongodump", "mongorestore")):
        sys.exit(f"--mongo-tools {args.mongo_tools}: no mongodump and mongorestore there")
    if args.pin:
        os.sched_setaffinity(0, {1})  # before anything starts: every process started from here inherits it
    compile_project()
    colls, total_docs = args.colls, args.total
    modes = ["temporary", "server"] if args.prefect == "both" else [args.prefect]
    layouts = ["even", "skew"] if args.skew else ["even"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-full-copy-") as tmp, \
            Mongod(Path(tmp) / "src", replset="bsrc", small_journal=False) as src, \
            Mongod(Path(tmp) / "dst", replset="bdst", small_journal=False) as dst:
        if args.pin:
            pin_process(dst.proc.pid, {0})
            print("pinned: the destination mongod on CPU 0, everything else on CPU 1")
        sc, dc = src.client(), dst.client()
        spec_paths = {}
        for runner in ["threads", "dask"] if args.runner == "dask" else ["threads"]:
            spec_paths[runner] = Path(tmp) / f"spec-{runner}.json"
            spec_paths[runner].write_text(json.dumps({
                "source": {"uri": src.uri()}, "destination": {"uri": dst.uri()},
                "objects": [{"database": "bench"}], "copy_options": {
                    "parallel_workers": args.workers,
                    **({"range_docs": args.range_docs} if args.range_docs else {}),
                    **({"runner": {"dask_local_workers": args.workers}} if runner == "dask" else {})},
                **({"throttle": {"docs_per_s": args.docs_per_s}} if args.docs_per_s else {}),
            }))
        server = None
        if "server" in modes:
            server = prefect_server(Path(tmp) / "prefect-server")
        base_env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_HOME": str(Path(tmp) / "prefect")}
        base_env.pop("PREFECT_API_URL", None)
        if "temporary" in modes:
            # a new PREFECT_HOME's database is created (and migrated) by the first run that needs it:
            # a one-time cost a user pays on the first run ever, not the one measured here
            subprocess.run([str(ROOT / ".venv/bin/prefect"), "server", "database", "upgrade", "-y"],
                           env=base_env, check=True, capture_output=True)
        try:
            for name in layouts:
                sizes = layout(total_docs, len(colls), name == "skew")
                total_docs = sum(sizes)
                sc.drop_database("bench")
                t = time.perf_counter()
                load(sc, "bench", colls, sizes, args.doc_bytes, args.workers)
                build_indexes(sc, "bench", colls, args.workers)
                data_mb = sc.bench.command("dbStats")["dataSize"] / 1e6
                print(f"== {name}: {total_docs:,} documents ({data_mb:,.0f} MB) in collections of "
                      f"{', '.join(f'{n:,}' for n in sizes)}, seeded in {time.perf_counter() - t:.1f}s")
                results[name] = measure(args, src, dst, dc, spec_paths, modes, base_env, server, total_docs,
                                        data_mb)
        finally:
            if server:
                server[0].terminate()
                server[0].wait(30)
    if "skew" in results:
        print("\n== 90% in one collection / evenly spread, measured in this run (target: within 10%: >= 0.90) ==")
        for key in ("copy + indexes", *[f"whole command, {m}" for m in modes]):
            even, skew = results["even"][key], results["skew"][key]
            print(f"{key:<36} docs/s {skew:,.0f} / {even:,.0f} = {skew / even:.2f}")
    if args.runner == "dask":
        print("\n== Dask LocalCluster of --workers processes / thread pool of --workers threads, this run ==")
        for name, rates in results.items():
            for key in ("copy + indexes", *[f"whole command, {m}" for m in modes]):
                dask, threads = rates[f"{key}, dask"], rates[key]
                print(f"{name}: {key:<30} docs/s {dask:,.0f} / {threads:,.0f} = {dask / threads:.2f}; "
                      f"of the ceiling {dask / rates['ceiling']:.2f} / {threads / rates['ceiling']:.2f}")


def cpu_line(used: dict[str, float], pinned: str | None, wall_s: float, ceiling_s: float | None = None,
             label: str = "CPU s") -> str:
    """What a measured run cost in CPU, process by process; the least wall time that CPU fits in here
    (every CPU busy all the time), and how near the run came to it; for a migration, the best ratio to
    the ceiling that its CPU seconds allow."""
    floor = cpu_floor(used, pinned)
    best = f"; at best {ceiling_s / floor:.2f} of the ceiling" if ceiling_s else ""
    return (f"{label} " + ", ".join(f"{k} {v:.1f}" for k, v in used.items() if v >= 0.05)
            + f": {sum(used.values()):.1f} in all, which fit in {floor:.1f}s on these CPUs at the least "
            + f"(took {wall_s / floor:.2f}x that){best}")


PEER = "dump|restore"
BY_STEP_PROCESSES = ("destination", "source", "command", "Prefect server")


def cpu_by_step(timeline: CpuTimeline, summary: dict) -> dict[str, tuple[float, dict[str, float]]]:
    """Each step of a run (before the flow, the summary's phases in order, after it): its wall seconds
    and each process's CPU seconds in it. The flow began `command_seconds - seconds` after the command
    started (both are the command's own clock: its start, and the flow's start, to the summary)."""
    start = timeline.started + summary["command_seconds"] - summary["seconds"]
    bounds = [("before the flow", timeline.started, start)]
    for name, seconds in summary["phases"].items():
        bounds.append((name, start, start + seconds))
        start += seconds
    bounds.append(("after the flow", start, timeline.ended))
    return {name: (b - a, timeline.between(a, b)) for name, a, b in bounds}


def median_by_step(runs: list[dict[str, tuple[float, dict[str, float]]]]) -> dict[str, tuple[float, dict[str, float]]]:
    return {step: (statistics.median(r[step][0] for r in runs), median_account([r[step][1] for r in runs]))
            for step in runs[0]}


def by_step_line(steps: dict[str, tuple[float, dict[str, float]]], label: str = "CPU s by step") -> str:
    """Where each step's CPU went: wall seconds, then destination / source / command / Prefect server."""
    return (f"{label} (wall s: destination / source / command / Prefect server): " + "; ".join(
        f"{step} {wall:.1f}: " + " / ".join(f"{cpu.get(p, 0.0):.1f}" for p in BY_STEP_PROCESSES)
        for step, (wall, cpu) in steps.items()))


def median_account(accounts: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(a.get(k, 0.0) for a in accounts) for k in accounts[0]}


def measure(args, src, dst, dc, spec_paths: dict[str, Path], modes: list[str], base_env: dict, server,
            total_docs: int, data_mb: float) -> dict[str, float]:
    """--rounds rounds of the ceiling and the migration (each mode, on each runner) on the seeded source;
    prints the medians and returns docs/s by measure."""
    # a measure's name: the Prefect mode, and ", dask" for the Dask runner
    runs = {(m if r == "threads" else f"{m}, {r}"): (m, path) for m in modes for r, path in spec_paths.items()}
    rows: dict[str, list] = {"ceiling": []} | ({PEER: []} if args.mongo_tools else {}) | {name: [] for name in runs}
    floors: dict[str, list[float]] = {mode: [] for mode in modes}
    mongods = {"destination": dst.proc.pid, "source": src.proc.pid}
    pinned = "destination" if args.pin else None
    cpu: dict[str, list[dict[str, float]]] = {"ceiling": [], PEER: []} | {name: [] for name in runs}
    by_step: dict[str, list[dict[str, tuple[float, dict[str, float]]]]] = {name: [] for name in runs}
    for r in range(args.rounds):
        account = CpuAccount(mongods)
        insert_s, index_s = ceiling(src, dst, args.colls, args.workers, account)
        rows["ceiling"].append((insert_s + index_s, insert_s, index_s))
        cpu["ceiling"].append(account.used)
        print(f"round {r + 1}: ceiling {insert_s + index_s:.1f}s (insert {insert_s:.1f} + index {index_s:.1f}); "
              + cpu_line(account.used, pinned, insert_s + index_s))
        if args.mongo_tools:
            account = CpuAccount(mongods)
            peer_s = dump_restore(src, dst, args.mongo_tools, args.workers, args.restore_insertion_workers, account)
            restored = sum(dc.bench[name].count_documents({}) for name in args.colls)
            assert restored == total_docs, f"dump|restore left {restored:,} documents of {total_docs:,}"
            indexes = sum(len(dc.bench[name].index_information()) for name in args.colls)
            assert indexes == 2 * len(args.colls), f"dump|restore left {indexes} indexes"
            dc.drop_database("bench")
            used = dict(account.used)
            used[PEER] = used.pop("children")
            rows[PEER].append(peer_s)
            cpu[PEER].append(used)
            print(f"round {r + 1}: {PEER} {peer_s:.1f}s = {(insert_s + index_s) / peer_s:.2f} of this round's "
                  f"ceiling; " + cpu_line(used, pinned, peer_s, insert_s + index_s))
        for label, (mode, spec_path) in runs.items():
            env = dict(base_env)
            digesting = ""
            if mode == "server":
                env["PREFECT_API_URL"] = server[1]
                waited = wait_until_idle(server[0].pid)
                digesting = f"; the Prefect server idle after {waited:.0f} s" if waited > 1.5 else ""
            prefect = {"Prefect server": server[0].pid} if mode == "server" else {}
            account = CpuAccount(mongods | prefect).start()
            started_by_command: dict[int, float] = {}
            # by step: the thread pool's runs only (a Dask run's worker processes are the command's children too)
            timeline = CpuTimeline(mongods | prefect) if label == mode else None
            summary, wall, peak, _ = run_cli_json(["run", str(spec_path)], env, descendants_cpu=started_by_command,
                                                  timeline=timeline)
            if mode == "server":
                wait_until_idle(server[0].pid)  # the run's events it digests after the command: the run's too
            used = account.stop()
            used["command"] = used.pop("children")
            if started_by_command:  # the temporary server, as last seen while the command ran
                used["Prefect server"] = sum(started_by_command.values())
            assert summary["counts_match"] and summary["docs"] == total_docs, summary
            rows[label].append((wall, summary, peak))
            cpu[label].append(used)
            steps = ", ".join(f"{k} {v:.1f}" for k, v in summary["phases"].items())
            against_peer = f" and {rows[PEER][-1] / wall:.2f} of {PEER}'s speed" if rows.get(PEER) else ""
            print(f"round {r + 1}: {label:<9} whole {wall:.1f}s = {(insert_s + index_s) / wall:.2f} of this round's "
                  f"ceiling{against_peer}; steps {steps}; outside the flow {wall - summary['seconds']:.1f}s; "
                  f"peak RSS {peak:.0f} MB{digesting}\n    " + cpu_line(used, pinned, wall, insert_s + index_s))
            if timeline is not None:
                by_step[label].append(cpu_by_step(timeline, summary))
                print("    " + by_step_line(by_step[label][-1]))
            dc.drop_database("bench")
            dc.drop_database("mongo_migrate_meta")
        if args.prefect_floor:
            for mode in modes:
                env = dict(base_env) | ({"PREFECT_API_URL": server[1]} if mode == "server" else {})
                floors[mode].append(prefect_floor(env))
                print(f"round {r + 1}: Prefect floor, {mode}: {floors[mode][-1]:.1f}s (a one-task flow run)")

    ceil_s = statistics.median(c[0] for c in rows["ceiling"])
    print(f"\nmedians of {args.rounds} round(s), {total_docs:,} documents, {data_mb:,.0f} MB")
    print(f"{'':<36}{'seconds':>9}{'docs/s':>11}{'of ceiling':>12}{'peak RSS MB':>13}")
    print(f"{'ceiling (insert + index)':<36}{ceil_s:>9.1f}{total_docs / ceil_s:>11,.0f}{1.0:>12.2f}{'-':>13}")
    print("    " + cpu_line(median_account(cpu["ceiling"]), pinned, ceil_s, label="CPU s, medians:"))
    rates = {"ceiling": total_docs / ceil_s}
    peer_s = statistics.median(rows[PEER]) if rows.get(PEER) else None
    if peer_s:
        print(f"{PEER:<36}{peer_s:>9.1f}{total_docs / peer_s:>11,.0f}{ceil_s / peer_s:>12.2f}{'-':>13}")
        print("    " + cpu_line(median_account(cpu[PEER]), pinned, peer_s, ceil_s, label="CPU s, medians:"))
        rates[PEER] = total_docs / peer_s
    for mode in runs:
        copy_s = statistics.median(s["copy_seconds"] + s["index_seconds"] for _, s, _ in rows[mode])
        wall = statistics.median(w for w, _, _ in rows[mode])
        peak = max(p for _, _, p in rows[mode])
        steps = {k: statistics.median(s["phases"][k] for _, s, _ in rows[mode]) for k in rows[mode][0][1]["phases"]}
        print(f"{'migration copy + indexes' + mode.partition(',')[1] + mode.partition(',')[2]:<36}{copy_s:>9.1f}"
              f"{total_docs / copy_s:>11,.0f}"
              f"{ceil_s / copy_s:>12.2f}{'':>13}")
        print(f"{'migration whole command, ' + mode:<36}{wall:>9.1f}{total_docs / wall:>11,.0f}"
              f"{ceil_s / wall:>12.2f}{peak:>13.0f}")
        print("    steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in steps.items())
              + f"; outside the flow {wall - statistics.median(s['seconds'] for _, s, _ in rows[mode]):.1f}s")
        print("    " + cpu_line(median_account(cpu[mode]), pinned, wall, ceil_s, label="CPU s, medians:"))
        if peer_s:
            print(f"    {PEER}'s time / this one's: {peer_s / wall:.2f} (medians; by round "
                  + ", ".join(f"{p / w:.2f}" for p, (w, _, _) in zip(rows[PEER], rows[mode])) + ")")
        if by_step[mode]:
            print("    " + by_step_line(median_by_step(by_step[mode]), "CPU s by step, medians"))
        if floors.get(mode):
            floor = statistics.median(floors[mode])
            print(f"    a one-task Prefect flow run alone: {floor:.1f}s; the command above it {wall - floor:.1f}s")
        dask = ", dask" if mode.endswith(", dask") else ""
        rates["copy + indexes" + dask] = total_docs / copy_s
        rates[f"whole command, {mode}"] = total_docs / wall
    print("targets: whole command >= 0.60 of the ceiling" + (f", and no slower than {PEER} (>= 1.00)" if peer_s else "")
          + "; peak RSS < 400 MB", flush=True)
    return rates


if __name__ == "__main__":
    main()
