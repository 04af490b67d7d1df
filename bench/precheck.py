"""Precheck benchmark: how long the precheck takes, and its data scan, on N documents.

Starts a source and a destination replica set (real mongods) in a temp dir, loads N documents of
about --doc-bytes each in --collections collections (one secondary index and one TTL index each),
then times, on the same data:

  precheck   the whole `precheck` flow (every item as a task, against a temporary Prefect server);
  scan       item 12 alone (documents too large for a change event, _id types, views, TTL counts);
  event size what item 12's search for documents too large for a change event costs: the two ends
             of the `_id` index (all it reads when they are of one fixed-size type, ObjectId say), and
             every document sized by $bsonSize (what it reads otherwise, from 4.4; and what it read for
             every incremental run before the fourteenth pass); beside them, the whole `_id` index read,
             covered, for its largest _id (the alternative not taken);
  rate       the copy rate item 8 measures from its sample read.

Prints seconds, and the scan's docs/s (item 12 reads documents only where `_id`s are not of one
fixed-size type, and for their field names only against a destination before 5.0).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from bson.raw_bson import RawBSONDocument  # noqa: E402

from mongo_migrate.blocks.spec import parse_spec  # noqa: E402
from mongo_migrate.sandbox.mongod import Mongod  # noqa: E402
from mongo_migrate.sandbox.sample_data import encoded_documents  # noqa: E402
from mongo_migrate.tasks.common import RAW  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=500_000, help="documents in all (default 500,000)")
    ap.add_argument("--doc-bytes", type=int, default=1000)
    ap.add_argument("--collections", type=int, default=4)
    args = ap.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from mongo_migrate.flows.migrate import precheck
    from mongo_migrate.tasks import precheck as pc
    from mongo_migrate.tasks.connect import check_connectivity
    from mongo_migrate.tasks.namespaces import plan_namespaces
    from mongo_migrate.tasks.precheck.data import fixed_size_ids

    with tempfile.TemporaryDirectory(prefix="bench-precheck-") as tmp:
        src = Mongod(Path(tmp) / "src", replset="src", small_journal=False).start()
        dst = Mongod(Path(tmp) / "dst", replset="dst", small_journal=False).start()
        try:
            client = src.client()
            per = args.n // args.collections
            t = time.perf_counter()
            for ci in range(args.collections):
                coll = client.bench.get_collection(f"c{ci}", codec_options=RAW)
                batch: list = []
                for raw in encoded_documents(per, ci * per, args.doc_bytes):
                    batch.append(RawBSONDocument(raw))
                    if len(batch) == 1000:
                        coll.insert_many(batch, ordered=False)
                        batch = []
                if batch:
                    coll.insert_many(batch, ordered=False)
                client.bench[f"c{ci}"].create_index("k")
                client.bench[f"c{ci}"].create_index("at", expireAfterSeconds=10 * 365 * 86400)
            print(f"loaded {per * args.collections:,} documents in {time.perf_counter() - t:.1f}s")
            spec = parse_spec({"source": {"uri": src.uri()}, "destination": {"uri": dst.uri()},
                               "objects": [{"database": "bench"}],
                               "migration_types": ["full", "incremental"]})
            with prefect_test_harness(server_startup_timeout=60):
                t = time.perf_counter()
                outcome = precheck(spec)
                flow_s = time.perf_counter() - t
            source = check_connectivity(spec.source, "source")
            destination = check_connectivity(spec.destination, "destination")
            plan = plan_namespaces(spec)
            inventory = pc.read_source_inventory(spec, plan)
            t = time.perf_counter()
            rows = pc.check_data_compatibility(spec, plan, destination, inventory)
            scan_s = time.perf_counter() - t
            t = time.perf_counter()
            fixed = all(fixed_size_ids(client.bench[p.source_name]) for p in plan.collections)
            ends_s = time.perf_counter() - t
            t = time.perf_counter()
            for p in plan.collections:
                list(client.bench[p.source_name].aggregate([{"$group": {"_id": None, "max": {"$max": {"$bsonSize": {"_id": "$_id"}}}}}], hint={"_id": 1}))
            ids_s = time.perf_counter() - t
            t = time.perf_counter()
            for p in plan.collections:
                list(client.bench[p.source_name].aggregate([{"$group": {"_id": None, "max": {"$max": {"$bsonSize": "$$ROOT"}}}}]))
            sized_s = time.perf_counter() - t
            rate = pc.measure_copy_rate(spec, inventory)
            docs = sum(c.docs for c in inventory.collections)
            print(f"precheck flow: {flow_s:.1f}s ({'passed' if outcome.report.passed else 'FAILED'}, "
                  f"{len(outcome.report.items)} rows)")
            print(f"data scan:     {scan_s:.1f}s for {docs:,} documents, "
                  f"{inventory.data_bytes / 1e6:,.0f} MB ({docs / scan_s:,.0f} docs/s) -> "
                  + ", ".join(f"{r.name} {r.status}" for r in rows))
            print(f"event size:    the ends of the _id index {ends_s:.3f}s (one fixed-size _id type: {fixed}); "
                  f"every document sized {sized_s:.2f}s (_ids of other types, and every incremental run before "
                  f"the fourteenth pass); the whole _id index read for its largest _id, covered, {ids_s:.2f}s")
            print(f"copy rate measured for the oplog window: {rate / 1e6:,.1f} MB/s")
            del source
        finally:
            src.destroy()
            dst.destroy()


if __name__ == "__main__":
    main()
