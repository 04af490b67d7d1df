"""The Prefect servers this project starts record task runs in batches (flows/temporary_server.py says
why), and a setting the user has made themselves is kept."""
from __future__ import annotations

from pathlib import Path

from mongo_migrate.deployments.serve import server_env
from mongo_migrate.flows.temporary_server import SQLITE_SERVER_SETTINGS, TemporaryServer

BATCH = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"
FLUSH = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"


def process_environment(pid: int) -> dict[str, str]:
    items = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def test_the_temporary_server_batches_task_run_events_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv(BATCH, raising=False)  # the session's harness sets it in this process
    monkeypatch.setenv(FLUSH, "3")
    server = TemporaryServer()
    try:
        env = process_environment(server.proc.pid)
    finally:
        server.stop()
    assert (env[BATCH], env[FLUSH]) == ("100", "3")


def test_served_prefect_batches_task_run_events_unless_the_user_set_it():
    env = server_env(4321, base={FLUSH: "3", "PATH": "/usr/bin"})
    assert (env[BATCH], env[FLUSH]) == ("100", "3")
    unset = server_env(4321, base={})
    assert {name: unset[name] for name in SQLITE_SERVER_SETTINGS} == SQLITE_SERVER_SETTINGS
