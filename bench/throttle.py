"""The load cap's cost on the copy's hot path, measured in one run.

Starts a source and a destination replica set, loads --docs documents of about --doc-bytes, and copies
them with `copy_collection_range` (the copy's own function: --ranges ranges on as many threads, batches
of --batch-docs) onto an emptied destination, round after round, in turn:

  no limiter   the limiter taken out of the copy (a pace whose take() does nothing): the code before
               the load cap existed;
  no cap       as shipped, with no throttle in the spec and none set live: a look-up per batch and
               one read of the live cap per second per process;
  cap far up   a cap of 100 million docs/s, never reached: one find_one_and_update per batch that
               books a slot and never waits.

Each round runs the three in another order. Prints the medians of --rounds rounds and each over
"no limiter" (target for "no cap": within the noise, i.e. >= 0.97).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mongo_migrate.blocks.mongo import close_clients  # noqa: E402
from mongo_migrate.blocks.spec import META_DATABASE, parse_spec  # noqa: E402
from mongo_migrate.sandbox.mongod import Mongod  # noqa: E402
from mongo_migrate.sandbox.sample_data import encoded_documents  # noqa: E402
from mongo_migrate.tasks import copy as copy_module  # noqa: E402
from mongo_migrate.tasks.copy import copy_collection_range, split_collection  # noqa: E402
from mongo_migrate.tasks.namespaces import plan_namespaces  # noqa: E402
from mongo_migrate.tasks.state import start_run  # noqa: E402
from mongo_migrate.tasks.throttle import COPY, limiter, read_live  # noqa: E402


class NoPace:
    def take(self, direction: str, docs: int, nbytes: int) -> float:
        return 0.0


def copy_once(spec, ranges, dest_client, target) -> float:
    dest_client[META_DATABASE]["copy_units"].delete_many({})
    dest_client[target[0]].drop_collection(target[1])
    dest_client[target[0]].create_collection(target[1])
    started = time.perf_counter()
    with ThreadPoolExecutor(len(ranges)) as pool:
        stats = list(pool.map(lambda r: copy_collection_range(spec, r), ranges))
    seconds = time.perf_counter() - started
    assert sum(s.docs for s in stats) == dest_client[target[0]][target[1]].count_documents({})
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=400_000)
    ap.add_argument("--doc-bytes", type=int, default=256)
    ap.add_argument("--ranges", type=int, default=4)
    ap.add_argument("--batch-docs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-throttle-") as tmp:
        source = Mongod(Path(tmp) / "src", replset="src", small_journal=False).start()
        dest = Mongod(Path(tmp) / "dst", replset="dst", small_journal=False).start()
        try:
            with source.client() as c:
                coll = c.shop.orders
                from bson.raw_bson import RawBSONDocument

                docs = [RawBSONDocument(raw) for raw in encoded_documents(args.docs, 0, args.doc_bytes)]
                for i in range(0, len(docs), 10_000):
                    coll.insert_many(docs[i:i + 10_000], ordered=False)
            base = {"source": {"uri": source.admin_uri()}, "destination": {"uri": dest.admin_uri()},
                    "objects": [{"database": "shop"}],
                    "copy_options": {"range_docs": max(1000, args.docs // args.ranges),
                                     "batch_docs": args.batch_docs}}
            specs = {"no limiter": parse_spec(base), "no cap": parse_spec(base),
                     "cap far up": parse_spec({**base, "throttle": {"docs_per_s": 100_000_000}})}
            plan = plan_namespaces(specs["no cap"])
            start_run(specs["no cap"], plan, None)
            ranges = split_collection(specs["no cap"], plan.data_plans[0], remember=False)
            target = (plan.data_plans[0].target_db, plan.data_plans[0].target_data_collection)
            seconds: dict[str, list[float]] = {name: [] for name in specs}
            with dest.client() as dest_client:
                names = list(specs)
                for round_ in range(args.rounds):
                    # each round in another order: none of the three always follows the same one
                    order = names[round_ % 3:] + names[:round_ % 3]
                    for name in order:
                        spec = specs[name]
                        copy_module.limiter = (lambda s: NoPace()) if name == "no limiter" else limiter
                        seconds[name].append(copy_once(spec, ranges, dest_client, target))
                    print(f"round {round_ + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()),
                          flush=True)
            copy_module.limiter = limiter
            base_s = statistics.median(seconds["no limiter"])
            print(f"{args.docs:,} docs of {args.doc_bytes} B, {len(ranges)} ranges, batches of {args.batch_docs}, "
                  f"medians of {args.rounds} rounds:")
            for name, s in seconds.items():
                med = statistics.median(s)
                print(f"  {name:<11} {med:6.2f} s = {args.docs / med:>9,.0f} docs/s  ({base_s / med:.3f} of "
                      f"no limiter's docs/s)")
            # what the limiter's own calls cost, timed alone: steadier than whole copies on a shared machine
            batches = args.docs / args.batch_docs
            free, far = limiter(specs["no cap"]), limiter(specs["cap far up"])
            free.take(COPY, args.batch_docs, 0)
            t = time.perf_counter()
            for _ in range(100_000):
                free.take(COPY, args.batch_docs, args.batch_docs * args.doc_bytes)
            per_take_us = (time.perf_counter() - t) / 100_000 * 1e6
            t = time.perf_counter()
            for _ in range(300):
                read_live(specs["no cap"])
            per_read_ms = (time.perf_counter() - t) / 300 * 1e3
            t = time.perf_counter()
            for _ in range(300):
                far.take(COPY, args.batch_docs, args.batch_docs * args.doc_bytes)
            per_booking_ms = (time.perf_counter() - t) / 300 * 1e3
            copy_s = statistics.median(seconds["no limiter"])
            print(f"limiter alone: no cap {per_take_us:.2f} us per batch + one live-cap read of {per_read_ms:.2f} ms "
                  f"per second = {(per_take_us * 1e-6 * batches + per_read_ms * 1e-3 * copy_s) / copy_s:.2%} of "
                  f"the copy's time; a cap: {per_booking_ms:.2f} ms per batch booked ("
                  f"{per_booking_ms * 1e-3 * batches / args.ranges / copy_s:.1%} of each worker's time)")
        finally:
            close_clients()
            source.destroy()
            dest.destroy()


if __name__ == "__main__":
    main()
