"""How long an incremental run waits between its index builds and the start of its sync subflow, on a
SQLite-backed Prefect server with Prefect's default task-run recorder (one event per transaction) and
with the settings this project's servers use (flows/temporary_server.py SQLITE_SERVER_SETTINGS), in
turn, each round on a fresh server and an empty destination.

A source of --collections collections (200 documents and one index each); `mongo-migrate --verbose run`
of a full + incremental spec; the seconds from the last index task's end ("record_deferred_unique ...
Finished") to "Beginning subflow run ... 'incremental-sync'", and the Prefect client's retries of a 503
in between (its debug log); the run is then killed. Prints medians and their ratio.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from measure import compile_project, prefect_server  # noqa: E402  (bench/ is the script's directory)

from mongo_migrate.blocks.spec import META_DATABASE  # noqa: E402
from mongo_migrate.flows.temporary_server import SQLITE_SERVER_SETTINGS  # noqa: E402
from mongo_migrate.sandbox.mongod import Mongod  # noqa: E402

CONFIGS = {"prefect default": {}, "SQLITE_SERVER_SETTINGS": SQLITE_SERVER_SETTINGS}


def wait_before_sync(spec: Path, api_url: str) -> tuple[float, int]:
    """(seconds from the indexes' end to the sync subflow's start, 503 retries between)."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LOGGERS_PREFECT_CLIENT_LEVEL": "DEBUG"}
    run = subprocess.Popen([str(ROOT / ".venv/bin/mongo-migrate"), "--verbose", "run", str(spec)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    indexed, retries = None, 0
    try:
        for line in run.stdout:
            if "record_deferred_unique" in line and "Finished" in line:
                indexed = time.monotonic()
            elif "retryable status code 503" in line and indexed is not None:
                retries += 1
            elif "Beginning subflow run" in line and "incremental-sync" in line:
                return time.monotonic() - indexed, retries
        sys.exit(f"the run ended before its sync began (exit {run.wait()})")
    finally:
        run.kill()
        run.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collections", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    compile_project()
    waits: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp, \
            Mongod(Path(tmp) / "src", replset="bsrc", small_journal=False) as src, \
            Mongod(Path(tmp) / "dst", replset="bdst", small_journal=False) as dst:
        source, dest = src.client(), dst.client()
        for i in range(args.collections):
            source.shop[f"c{i}"].insert_many([{"_id": j, "x": j} for j in range(200)])
            source.shop[f"c{i}"].create_index("x")
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({
            "source": {"uri": src.uri()}, "destination": {"uri": dst.uri()}, "objects": [{"database": "shop"}],
            "migration_types": ["full", "incremental"]}))
        for r in range(args.rounds):
            for name in list(CONFIGS) if r % 2 == 0 else list(CONFIGS)[::-1]:
                for db in ("shop", META_DATABASE):
                    dest.drop_database(db)
                server, url = prefect_server(Path(tmp) / f"prefect-{r}-{len(waits[name])}", CONFIGS[name])
                try:
                    seconds, retries = wait_before_sync(spec, url)
                finally:
                    server.terminate()
                    server.wait(30)
                waits[name].append(seconds)
                print(f"round {r + 1} {name:<24} sync began {seconds:5.2f} s after the indexes "
                      f"({retries} retries of a 503)", flush=True)
    default, ours = (statistics.median(waits[name]) for name in CONFIGS)
    print(f"{args.collections} collections, medians of {args.rounds}: prefect default {default:.2f} s, "
          f"SQLITE_SERVER_SETTINGS {ours:.2f} s ({ours / default:.2f} of the default)")


if __name__ == "__main__":
    main()
