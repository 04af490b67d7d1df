"""A real Prefect server, worker, blocks and deployments, started by `python -m mongo_migrate.deployments.serve`
(what `make serve` runs) on a free port, for one test module; and small helpers to talk to it.

The session's temporary server (conftest `prefect_api`) cannot run workers, so the deployment and UI
tests use this one. Its log is written in the test's temporary directory (two test sessions may run at
once) and copied to tests/output/<module>/serve.log when the server stops.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from mongo_migrate.deployments.serve import READY, server_env
from mongo_migrate.sandbox.mongod import free_port

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(__file__).resolve().parent / "output"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def off_peak_test_zone(now: datetime | None = None) -> str:
    """A non-UTC zone where 02:00 is hours away, so no scheduled run starts while the tests run."""
    now = now or datetime.now(timezone.utc)
    for name in ("America/New_York", "Asia/Tokyo"):  # 14 hours apart: one is always in daytime
        if 6 <= now.astimezone(ZoneInfo(name)).hour < 22:
            return name
    raise AssertionError("unreachable: one of the two zones is in daytime")


class ServedPrefect:
    def __init__(self, home: Path, output: Path, timezone_name: str) -> None:
        self.port = free_port()
        self.home = home
        self.output = output
        self.log_path = home.parent / "serve.log"
        self.timezone = timezone_name
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        # workers look for runs every second (default 10 s) so tests do not wait for them
        base.update(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="1",
                    PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    # a request the server answers 503 (SQLite busy) is logged in serve.log
                    PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true")
        self.env = server_env(self.port, home=home, base=base)
        self.api = self.env["PREFECT_API_URL"]
        self.ui = self.api.removesuffix("/api")
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.api, timeout=30)

    def start(self, timeout: float = 180) -> "ServedPrefect":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mongo_migrate.deployments.serve", "--port", str(self.port), "--home",
             str(self.home), "--timezone", self.timezone],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if READY in text:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"deployments.serve exited with {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.3)
        raise AssertionError(f"deployments.serve not ready within {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            # serve.py stops its worker and server on SIGTERM; the group kill is the fallback
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log_path.exists():
            self.output.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.log_path, self.output / "serve.log")

    # -- the REST API and the CLI --------------------------------------------------------------
    def prefect(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The real `prefect` command, pointed at this server."""
        return subprocess.run([sys.executable, "-m", "prefect", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def deployment(self, full_name: str) -> dict:
        r = self.http.get(f"/deployments/name/{full_name}")
        r.raise_for_status()
        return r.json()

    def flow_run(self, run_id: str) -> dict:
        r = self.http.get(f"/flow_runs/{run_id}")
        r.raise_for_status()
        return r.json()

    def flow_runs(self, **filters) -> list[dict]:
        r = self.http.post("/flow_runs/filter", json=filters)
        r.raise_for_status()
        return r.json()

    def wait_for_state(self, run_id: str, states=FINAL_STATES, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state_type"] in states:
                return run
            time.sleep(0.5)
        raise AssertionError(f"flow run {run_id} still {run['state_type']} after {timeout}s")

    def artifacts(self, **filters) -> list[dict]:
        r = self.http.post("/artifacts/filter", json=filters)
        r.raise_for_status()
        return r.json()

    def subflow_runs(self, parent_run_id: str) -> list[dict]:
        """Flow runs started inside this one (full-copy, precheck, ...)."""
        tasks = self.http.post("/task_runs/filter", json={
            "flow_runs": {"id": {"any_": [parent_run_id]}}}).json()
        ids = [t["id"] for t in tasks]
        return self.flow_runs(flow_runs={"parent_task_run_id": {"any_": ids}}) if ids else []

    def subflow_run(self, parent_run_id: str, flow_name: str) -> dict:
        runs = [r for r in self.subflow_runs(parent_run_id)
                if self.http.get(f"/flows/{r['flow_id']}").json()["name"] == flow_name]
        assert len(runs) == 1, f"{len(runs)} {flow_name} subflow runs in {parent_run_id}"
        return runs[0]

    def wait_for_paused_subflow(self, run_id: str, timeout: float = 240) -> dict:
        """The subflow of this run that pauses (the incremental sync waiting for approval)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            paused = [r for r in self.subflow_runs(run_id) if r["state_type"] == "PAUSED"]
            if paused:
                return paused[0]
            top = self.flow_run(run_id)
            if top["state_type"] in FINAL_STATES:
                raise AssertionError(f"run ended {top['state_type']} without pausing:\n"
                                     f"{self.logs(run_id)[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"no subflow of {run_id} paused within {timeout}s")

    def logs(self, run_id: str) -> str:
        r = self.http.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                  "sort": "TIMESTAMP_ASC", "limit": 200})
        return "\n".join(entry["message"] for entry in r.json())

    def save_endpoint_block(self, name: str, uri: str) -> None:
        """Save a MongoEndpoint block on this server (what a user does in the UI or in Python)."""
        from concurrent.futures import ThreadPoolExecutor

        from prefect.settings import PREFECT_API_URL, temporary_settings

        from mongo_migrate.blocks.mongo import MongoEndpoint

        def save() -> None:
            with temporary_settings(updates={PREFECT_API_URL: self.api}):
                MongoEndpoint(uri=uri).save(name, overwrite=True)

        # a thread of its own: Playwright's sync API keeps an event loop in the test's thread, where
        # Prefect's sync-or-async methods would hand back an unawaited coroutine
        with ThreadPoolExecutor(1) as pool:
            pool.submit(save).result()
        saved = self.http.get(f"/block_types/slug/mongoendpoint/block_documents/name/{name}")
        assert saved.status_code == 200 and saved.json()["data"]["uri"] == uri, saved.text


def run_id_from_cli(output: str) -> str:
    """The flow run id `prefect deployment run` prints."""
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, f"no flow run id in:\n{output}"
    return match.group(1)


@contextmanager
def served_prefect(tmp_path: Path, module: str, timezone_name: str | None = None):
    served = ServedPrefect(tmp_path / "prefect-home", OUTPUT / module,
                           timezone_name or off_peak_test_zone())
    try:
        yield served.start()
    finally:
        served.stop()


def params_json(spec: dict) -> str:
    return json.dumps({"spec": spec})
