"""Full-copy benchmark: `mongo-migrate run` against the destination's own ingest ceiling.

Starts a source and a destination replica set (real mongods) in a temp dir, generates N documents of
about --doc-bytes each in --collections collections with one secondary index each, then measures in
the same run:

  ceiling    parallel insert_many of pre-encoded raw BSON batches straight into the destination,
             then the same secondary indexes: the fastest way to build the same end state;
  migration  `mongo-migrate run SPEC --json` in a subprocess (data + indexes, from its summary),
             with the CLI process's peak RSS (VmHWM) sampled from /proc.

Prints docs/s, MB/s, peak RSS and the migration/ceiling ratio (target >= 0.9, RSS < 400 MB).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bson.raw_bson import RawBSONDocument  # noqa: E402

from measure import cpu_seconds, data_set_args, run_cli_json  # noqa: E402  (bench/ is the script's directory)
from sandbox.mongod import Mongod  # noqa: E402
from sandbox.sample_data import encoded_documents  # noqa: E402
from tasks.common import RAW  # noqa: E402


def batches(n: int, start: int, doc_bytes: int, per_batch: int):
    batch: list[RawBSONDocument] = []
    for raw in encoded_documents(n, start, doc_bytes):
        batch.append(RawBSONDocument(raw))
        if len(batch) == per_batch:
            yield batch
            batch = []
    if batch:
        yield batch


def load(client, db: str, colls: list[str], n_per: int, doc_bytes: int, workers: int, pre: list | None = None):
    """Insert n_per documents in each collection with `workers` threads; returns seconds taken."""
    jobs = []
    for ci, name in enumerate(colls):
        coll = client[db].get_collection(name, codec_options=RAW)
        source = pre[ci] if pre is not None else list(batches(n_per, ci * n_per, doc_bytes, 1000))
        jobs += [(coll, b) for b in source]
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda job: job[0].insert_many(job[1], ordered=False), jobs))
    return time.perf_counter() - t


def build_indexes(client, db: str, colls: list[str], workers: int) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda name: client[db][name].create_index("k"), colls))
    return time.perf_counter() - t


def main() -> None:
    args = data_set_args(__doc__.splitlines()[0], default_docs=1_000_000)
    n_per, colls, total_docs = args.n_per, args.colls, args.total
    with tempfile.TemporaryDirectory(prefix="bench-full-copy-") as tmp, \
            Mongod(Path(tmp) / "src", replset="bsrc") as src, \
            Mongod(Path(tmp) / "dst", replset="bdst") as dst:
        sc, dc = src.client(), dst.client()
        t = time.perf_counter()
        load(sc, "bench", colls, n_per, args.doc_bytes, args.workers)
        build_indexes(sc, "bench", colls, args.workers)
        data_mb = sc.bench.command("dbStats")["dataSize"] / 1e6
        print(f"seeded {total_docs:,} documents ({data_mb:,.0f} MB) in {time.perf_counter() - t:.1f}s")

        # ceiling: batches encoded before the clock starts, inserted in parallel, then indexes
        pre = [list(batches(n_per, ci * n_per, args.doc_bytes, 1000)) for ci in range(len(colls))]
        mongods = {"source": src.proc.pid, "destination": dst.proc.pid}
        before = {name: cpu_seconds(pid) for name, pid in mongods.items()}
        insert_s = load(dc, "ceiling", colls, n_per, args.doc_bytes, args.workers, pre=pre)
        index_s = build_indexes(dc, "ceiling", colls, args.workers)
        ceiling_cpu = {name: cpu_seconds(pid) - before[name] for name, pid in mongods.items()}
        del pre
        ceiling_s = insert_s + index_s
        dc.drop_database("ceiling")

        spec = {
            "source": {"uri": src.uri()}, "destination": {"uri": dst.uri()},
            "objects": [{"database": "bench"}],
            "copy_options": {"parallel_workers": args.workers},
        }
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_HOME": str(Path(tmp) / "prefect")}
        env.pop("PREFECT_API_URL", None)
        before = {name: cpu_seconds(pid) for name, pid in mongods.items()}
        summary, wall, peak, _ = run_cli_json(["run", str(spec_path)], env)
        run_cpu = {name: cpu_seconds(pid) - before[name] for name, pid in mongods.items()}
        mig_s = summary["copy_seconds"] + summary["index_seconds"]

        rows = [
            ("ceiling (insert + index)", ceiling_s, total_docs / ceiling_s, data_mb / ceiling_s, None),
            ("migration (copy + index)", mig_s, total_docs / mig_s, data_mb / mig_s, peak),
        ]
        print(f"\n{'':<28}{'seconds':>9}{'docs/s':>11}{'MB/s':>8}{'peak RSS MB':>13}")
        for name, s, dps, mbps, rss in rows:
            print(f"{name:<28}{s:>9.1f}{dps:>11,.0f}{mbps:>8.1f}{(f'{rss:.0f}' if rss else '-'):>13}")
        print(f"\nceiling: insert {insert_s:.1f}s + index {index_s:.1f}s; migration: copy "
              f"{summary['copy_seconds']:.1f}s + index {summary['index_seconds']:.1f}s; whole command "
              f"{wall:.1f}s (Prefect start-up, precheck and count check included)")
        # on a machine that runs both mongods the copy also pays the source's reads: shown, so a
        # ratio can be read against what the two runs asked of the CPUs
        print("mongod CPU seconds: ceiling " + ", ".join(f"{k} {v:.1f}" for k, v in ceiling_cpu.items())
              + "; whole migration command " + ", ".join(f"{k} {v:.1f}" for k, v in run_cpu.items())
              + " (precheck scan and verification included)")
        ratio = ceiling_s / mig_s
        print(f"migration / ceiling throughput: {ratio:.2f} (target >= 0.90); "
              f"peak RSS {peak:.0f} MB (target < 400)")


if __name__ == "__main__":
    main()
