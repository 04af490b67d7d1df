"""What `mongo-migrate run` shows: at a terminal, a bar per collection with docs/s and the time left,
then one live line for the sync, and the approval asked at the prompt; in a pipe, a plain line every
few seconds; in both, Prefect's INFO lines go to a log file instead of the terminal.

Two runs at once, one in a pseudo-terminal (full + incremental, approved at its prompt) and one into
pipes (full), onto a destination whose inserts are each held 60 ms (a failCommand fail point) so that
the copy lasts long enough for the bars to move."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import bson
from bson.raw_bson import RawBSONDocument

from mongo_migrate.blocks.mongo import close_clients
from mongo_migrate.sandbox.mongod import Mongod
from tests.conftest import ROOT, assert_same_documents, insert_raw, user_collections
from tests.load import seed

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_terminal_shows_bars_then_the_sync_line_and_a_pipe_plain_lines(source, src_client, prefect_api, tmp_path):
    seed(src_client, docs=400)
    insert_raw(src_client, "shop.big", [RawBSONDocument(bson.encode({"_id": i, "pad": "x" * 100}))
                                        for i in range(24_000)])
    for k in range(10):  # more collections than bars: the smallest are summed on one bar
        src_client.shop[f"small{k}"].insert_many([{"_id": i} for i in range(5 + k)])
    logs = tmp_path / "logs"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "MONGO_MIGRATE_LOG_DIR": str(logs),
           "TERM": "xterm-256color", "COLUMNS": "180"}
    with Mongod(tmp_path / "dest", replset="termdst",
                extra_args=["--setParameter", "enableTestCommands=1"]) as dest, dest.client() as dst_client:
        dst_client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": ["insert"], "blockConnection": True, "blockTimeMS": 60, "appName": "mongo-migrate"})

        def spec(name: str, target: str, **fields) -> str:
            path = tmp_path / f"{name}.json"
            path.write_text(json.dumps({
                "source": {"uri": source.admin_uri()}, "destination": {"uri": dest.admin_uri()},
                "objects": [{"database": "shop"}], "name_mapping": {"shop": target},
                "copy_options": {"batch_docs": 200, "range_docs": 6000, "parallel_workers": 2}, **fields}))
            return str(path)

        controller, terminal = os.openpty()
        tty_spec = spec("tty", "shop_tty", migration_types=["full", "incremental"],
                        incremental_options={"checkpoint_interval_s": 0.5})
        at_terminal = subprocess.Popen(
            [sys.executable, "-m", "mongo_migrate.flows.cli", "run", tty_spec],
            cwd=ROOT, env=env, stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
        os.close(terminal)
        piped = subprocess.Popen([sys.executable, "-m", "mongo_migrate.flows.cli", "run", spec("pipe", "shop_pipe")],
                                 cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        screen: list[str] = []

        def read_terminal() -> None:
            while True:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                screen.append(chunk.decode(errors="replace"))

        reader = threading.Thread(target=read_terminal, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 180
            while "Approve now?" not in "".join(screen):
                assert time.monotonic() < deadline and at_terminal.poll() is None, ANSI.sub("", "".join(screen))[-3000:]
                time.sleep(0.2)
            # the live line shows up every 5 s: wait for one that says how to approve
            while "approve with `mongo-migrate approve`" not in "".join(screen):
                assert time.monotonic() < deadline, ANSI.sub("", "".join(screen))[-3000:]
                time.sleep(0.2)
            os.write(controller, b"y\n")
            while "Note (optional)" not in "".join(screen):
                assert time.monotonic() < deadline, ANSI.sub("", "".join(screen))[-3000:]
                time.sleep(0.2)
            os.write(controller, b"at the terminal\n")
            assert at_terminal.wait(120) == 0, ANSI.sub("", "".join(screen))[-3000:]
            out, err = piped.communicate(timeout=120)
            assert piped.returncode == 0, err[-3000:]
        finally:
            for proc in (at_terminal, piped):
                if proc.poll() is None:
                    proc.kill()
            reader.join(5)
            os.close(controller)
        dst_client.admin.command("configureFailPoint", "failCommand", mode="off")
        names = user_collections(src_client, "shop")
        for target in ("shop_tty", "shop_pipe"):
            assert user_collections(dst_client, target) == names
            for name in names:
                assert_same_documents(src_client, dst_client, f"shop.{name}", f"{target}.{name}")
        close_clients()

    shown = ANSI.sub("", "".join(screen))
    (tmp_path / "terminal.txt").write_text(shown)  # what the terminal showed, for a failure's reader
    # bars: the biggest collections by name, the rest summed, moving, with docs/s and the time left
    assert "shop.big" in shown and "5 more collections" in shown and "docs/s" in shown
    assert re.search(r"shop\.big .* about \d+ s left", shown) and "done" in shown
    big = {int(p) for p in re.findall(r"shop\.big\s+\S*\s+(\d+)%", shown)}
    assert len(big) >= 2 and 100 in big, big
    assert "sync delay:" in shown and "oplog window left" in shown
    assert "cutover approved" in shown and "incremental sync: cut over" in shown
    # no Prefect INFO lines at the terminal; they are in the log file it names
    assert "| INFO" not in shown, shown[-3000:]
    log_path = re.search(r"mongo-migrate: log: (\S+)", shown).group(1)
    log_text = open(log_path).read()
    assert "Finished in state Completed" in log_text and "| INFO    |" in log_text

    # the pipe: plain lines every few seconds, the summary on stdout
    plain = [line for line in err.splitlines() if line.startswith("full copy: ")]
    assert len(plain) >= 2 and plain[-1].startswith("full copy: 100% ("), err[-3000:]
    assert re.search(r"\d[\d,]* docs/s", plain[0]) and "| INFO" not in err, err[-3000:]
    assert "counts match" in out and "shop.big" in out
