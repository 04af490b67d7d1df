"""Raw batch reads: pymongo's find_raw_batches against tasks/raw_batches.py's RawBatches, same run.

Seeds --docs documents of --doc-bytes in --collections collections of one source replica set (a real
mongod), then reads every collection whole, one thread per collection, the way the copy reads (exhaust
cursor, batches of 2,000, `_id` order), --rounds times with each reader in turn. Prints the medians of
wall seconds and of the process's CPU seconds (user + system, from getrusage), and RawBatches' share of
pymongo's; checks that both readers give the same bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from full_copy import build_indexes, load  # noqa: E402  (bench/ is the script's directory)
from measure import add_data_set_args, data_set  # noqa: E402
from pymongo import ASCENDING, CursorType  # noqa: E402

from mongo_migrate.sandbox.mongod import Mongod  # noqa: E402
from mongo_migrate.tasks.common import RAW  # noqa: E402
from mongo_migrate.tasks.raw_batches import find_raw_batches  # noqa: E402

READERS = {
    "pymongo find_raw_batches": lambda coll: coll.find_raw_batches(
        {}, batch_size=2000, cursor_type=CursorType.EXHAUST),
    "RawBatches": lambda coll: find_raw_batches(coll, {}, batch_size=2000, cursor_type=CursorType.EXHAUST),
}


def read_all(client, colls: list[str], reader) -> tuple[float, float, str]:
    """(wall s, CPU s, digest of every collection's bytes) of reading the collections side by side."""
    def one(name: str) -> tuple[str, str]:
        digest = hashlib.md5()
        for batch in reader(client.bench.get_collection(name, codec_options=RAW)).hint([("_id", ASCENDING)]):
            digest.update(batch)
        return name, digest.hexdigest()

    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with ThreadPoolExecutor(len(colls)) as pool:
        digests = sorted(pool.map(one, colls))
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, repr(digests)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_set_args(ap, default_docs=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = data_set(ap.parse_args())
    with tempfile.TemporaryDirectory(prefix="bench-raw-reads-") as tmp, \
            Mongod(Path(tmp) / "src", replset="bsrc", small_journal=False) as src:
        client = src.client()
        load(client, "bench", args.colls, [args.n_per] * len(args.colls), args.doc_bytes, args.workers)
        build_indexes(client, "bench", args.colls, args.workers)
        mb = client.bench.command("dbStats")["dataSize"] / 1e6
        print(f"{args.total:,} documents ({mb:,.0f} MB) in {len(args.colls)} collections, read by "
              f"{len(args.colls)} threads")
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in READERS}
        digests = set()
        for r in range(args.rounds):
            order = list(READERS) if r % 2 == 0 else list(reversed(READERS))
            for name in order:
                wall, cpu, digest = read_all(client, args.colls, READERS[name])
                digests.add(digest)
                rows[name].append((wall, cpu))
                print(f"round {r + 1}: {name:<26} wall {wall:5.2f}s  CPU {cpu:5.2f}s  {mb / wall:6.0f} MB/s")
        assert len(digests) == 1, "the readers gave different bytes"
    print(f"\nmedians of {args.rounds} rounds (the same bytes from both readers)")
    med = {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for name, v in rows.items()}
    for name, (wall, cpu) in med.items():
        print(f"{name:<26} wall {wall:5.2f}s  CPU {cpu:5.2f}s")
    (pw, pc), (rw, rc) = med["pymongo find_raw_batches"], med["RawBatches"]
    print(f"RawBatches / pymongo: wall {rw / pw:.2f}, CPU {rc / pc:.2f}")


if __name__ == "__main__":
    main()
