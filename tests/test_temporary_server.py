"""The Prefect servers this project starts get SQLITE_SERVER_SETTINGS (task runs recorded in batches, a
longer wait for SQLite's lock), the temporary one TEMPORARY_SERVER_SETTINGS too (no automations, no
block-type registration at start; flows/temporary_server.py says why), and a setting the user has made
themselves is kept."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mongo_migrate.deployments.serve import server_env
from mongo_migrate.flows.temporary_server import (ORPHAN_GRACE_S, SQLITE_SERVER_SETTINGS, TEMPORARY_SERVER_SETTINGS,
                                                  TemporaryServer)

BATCH = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"
FLUSH = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"
TIMEOUT = "PREFECT_SERVER_DATABASE_TIMEOUT"
TRIGGERS = "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"


def process_environment(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def temporary_server_environment() -> dict[str, str]:
    """The environment the server process was started with: read once it has exec'd (until then /proc
    shows the environment this process itself started with, and its command line)."""
    server = TemporaryServer()
    try:
        deadline = time.monotonic() + 30
        while b"mongo_migrate.flows.temporary_server" not in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the temporary server's process did not start"
            time.sleep(0.01)
        return process_environment(server.proc.pid)
    finally:
        server.stop()


def test_the_temporary_server_gets_the_sqlite_settings_unless_the_user_set_them(monkeypatch):
    for name in [*SQLITE_SERVER_SETTINGS, *TEMPORARY_SERVER_SETTINGS]:  # the harness sets some in this process
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(FLUSH, "3")
    env = temporary_server_environment()
    assert (env[BATCH], env[FLUSH], env[TIMEOUT]) == ("100", "3", "60")
    # no automations, no block-type registration in a server that serves one command
    assert {name: env[name] for name in TEMPORARY_SERVER_SETTINGS} == {
        TRIGGERS: "false", "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
        "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false"}


def test_the_temporary_server_runs_automations_when_the_user_asks(monkeypatch):
    monkeypatch.setenv(TRIGGERS, "true")
    assert temporary_server_environment()[TRIGGERS] == "true"


def test_served_prefect_gets_the_sqlite_settings_unless_the_user_set_them():
    env = server_env(4321, base={FLUSH: "3", "PATH": "/usr/bin"})
    assert (env[BATCH], env[FLUSH], env[TIMEOUT]) == ("100", "3", "60")
    unset = server_env(4321, base={})
    assert {name: unset[name] for name in SQLITE_SERVER_SETTINGS} == SQLITE_SERVER_SETTINGS


def process_ended(pid: int) -> bool:
    """Gone, or a zombie (ended; whether PID 1 reaps it is the container's business)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def test_a_killed_commands_temporary_server_ends_itself():
    """A command SIGKILLed runs no exit handler, so nothing stops its temporary server: the server sees
    its parent gone and ends ORPHAN_GRACE_S later, instead of serving nobody until the machine restarts."""
    command = subprocess.Popen([sys.executable, "-c", (
        "import time\n"
        "from mongo_migrate.flows.temporary_server import TemporaryServer\n"
        "server = TemporaryServer()\nserver.wait_ready()\nprint(server.proc.pid, flush=True)\ntime.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(command.stdout.readline())
    finally:
        command.kill()
        command.wait()
    killed = time.monotonic()
    time.sleep(ORPHAN_GRACE_S / 2)
    assert not process_ended(server_pid), "the server ended before its grace time"
    while not process_ended(server_pid):
        assert time.monotonic() - killed < ORPHAN_GRACE_S + 20, "the orphaned temporary server is still running"
        time.sleep(0.2)
    assert time.monotonic() - killed >= ORPHAN_GRACE_S


def test_a_start_skips_the_schema_upgrade_only_at_the_recorded_head(tmp_path):
    """Prefect's server upgrades its database's schema as it starts; the temporary server skips that
    (≈0.15 s) only when its SQLite database is at the head recorded for the installed Prefect, which the
    command records once a server has upgraded. A database at another revision is upgraded as before."""
    import json
    import os
    import sqlite3

    import prefect

    from mongo_migrate.flows.log_files import LOG_DIR_ENV
    from mongo_migrate.flows.temporary_server import SCHEMA_HEADS

    home, logs = tmp_path / "prefect-home", tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if k not in {
        "PREFECT_API_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL"}}
    env.update({"PREFECT_HOME": str(home), LOG_DIR_ENV: str(logs)})
    command = (  # a command's use of its temporary server, then a request that reads the database
        "from mongo_migrate.flows.temporary_server import start_early, use_or_stop\n"
        "server = start_early()\n"
        "with use_or_stop(server):\n"
        "    from prefect.client.orchestration import get_client\n"
        "    with get_client(sync_client=True) as client:\n"
        "        print(len(client.read_flows()), server.log_path, flush=True)\n")

    def start() -> str:
        """One command; the server's own output."""
        done = subprocess.run([sys.executable, "-c", command], env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        flows, log_path = done.stdout.split()
        assert flows == "0"
        return Path(log_path).read_text()

    skipped = "no upgrade at start"
    assert skipped not in start()  # a new database: created, upgraded
    revision = sqlite3.connect(home / "prefect.db").execute("SELECT version_num FROM alembic_version").fetchone()[0]
    heads = home / SCHEMA_HEADS
    assert json.loads(heads.read_text()) == {prefect.__version__: revision}
    assert skipped in start()  # at the recorded head: no upgrade, and the database serves requests
    heads.write_text(json.dumps({prefect.__version__: "0123456789ab"}))
    assert skipped not in start()  # another revision recorded: upgraded as Prefect does, recorded again
    assert json.loads(heads.read_text()) == {prefect.__version__: revision}


BEARTYPED_IMPORT = """
import os, sys
from mongo_migrate.flows.temporary_server import _beartype_off
if sys.argv[1] == "off":
    with _beartype_off():
        import key_value.aio._utils.sanitize as checked
else:
    import key_value.aio._utils.sanitize as checked
print(hasattr(checked.generate_hash_fragment, "__beartype_wrapper"), os.environ.get("PYTHONOPTIMIZE"),
      sys.flags.optimize)
"""


def test_the_temporary_servers_imports_run_without_beartype():
    """py-key-value-aio (the server's task queue's store) beartype-checks itself, ~0.2 s of the server's
    boot: off for the server's imports, and nothing else changes (no optimised interpreter, no
    PYTHONOPTIMIZE left for anything started later); a PYTHONOPTIMIZE the user set is theirs."""
    def run(mode: str, **env: str) -> list[str]:
        return subprocess.run([sys.executable, "-c", BEARTYPED_IMPORT, mode], check=True, capture_output=True,
                              text=True, env={**os.environ, **env}).stdout.split()

    assert run("on") == ["True", "None", "0"]  # what the server's imports cost without it
    assert run("off") == ["False", "None", "0"]
    assert run("off", PYTHONOPTIMIZE="0") == ["True", "0", "0"]
