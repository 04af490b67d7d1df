"""Verification benchmark: `mongo-migrate verify` over N documents, peak RSS and docs/s per side.

Starts a source and a destination replica set (real mongods) in a temp dir and writes the same N
documents of about --doc-bytes each (the same bytes on both sides) into --collections collections,
then runs `mongo-migrate verify SPEC --json` in a subprocess, sampling its peak RSS (VmHWM) from /proc.
Both sides are read at the same time, so docs/s per side is N / the verify flow's seconds.

Targets: peak RSS < 300 MB whatever N is, >= 50,000 documents/s per side. Default N is 10 million
(about 10 GB per side); use --docs 1000000 for a quicker run.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from full_copy import batches  # noqa: E402  (bench/ is on sys.path as the script's dir)
from measure import data_set_args, run_cli_json  # noqa: E402

from mongo_migrate.sandbox.mongod import Mongod  # noqa: E402
from mongo_migrate.tasks.common import RAW  # noqa: E402


def seed_both(clients, colls: list[str], n_per: int, doc_bytes: int, workers: int) -> None:
    """The same raw batches into both sides, a few at a time (never the whole data set in memory)."""
    with ThreadPoolExecutor(workers) as pool:
        for ci, name in enumerate(colls):
            targets = [c["bench"].get_collection(name, codec_options=RAW) for c in clients]
            source = batches(n_per, ci * n_per, doc_bytes, 1000)
            while chunk := list(islice(source, workers)):
                list(pool.map(lambda job: job[0].insert_many(job[1], ordered=False),
                              [(t, b) for b in chunk for t in targets]))


def main() -> None:
    args = data_set_args(__doc__.splitlines()[0], default_docs=10_000_000)
    n_per, colls, total = args.n_per, args.colls, args.total
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp, \
            Mongod(Path(tmp) / "src", replset="bsrc", small_journal=False) as src, \
            Mongod(Path(tmp) / "dst", replset="bdst", small_journal=False) as dst:
        sc, dc = src.client(), dst.client()
        t = time.perf_counter()
        seed_both([sc, dc], colls, n_per, args.doc_bytes, args.workers)
        data_mb = sc.bench.command("dbStats")["dataSize"] / 1e6
        print(f"seeded {total:,} documents ({data_mb:,.0f} MB per side) in {time.perf_counter() - t:.1f}s")

        spec = {"source": {"uri": src.uri()}, "destination": {"uri": dst.uri()},
                "objects": [{"database": "bench"}], "copy_options": {"parallel_workers": args.workers}}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(Path(tmp) / "prefect")}
        env.pop("PREFECT_API_URL", None)
        report, wall, peak, code = run_cli_json(["verify", str(spec_path)], env, ok_codes=(0, 3))
        seconds = report["seconds"]
        checked = sum(c["source_docs"] for c in report["collections"])
        print(f"verify: {report['status']} (exit {code}), {checked:,} documents per side, "
              f"{sum(c['ranges'] for c in report['collections'])} ranges")
        print(f"verify flow {seconds:.1f}s: {checked / seconds:,.0f} docs/s per side "
              f"({data_mb / seconds:,.0f} MB/s per side); whole command {wall:.1f}s (Prefect start-up included)")
        print(f"peak RSS {peak:.0f} MB (target < 300); docs/s per side target >= 50,000")


if __name__ == "__main__":
    main()
