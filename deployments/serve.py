"""`make serve`: a local Prefect server with its UI, a worker, and the project's blocks and deployments.

    python -m mongo_migrate.deployments.serve [--port 4200] [--home .serve] [--pool mongo-migrate]

The server keeps its SQLite database under --home (PREFECT_HOME), so saved blocks and past runs are
still there next time. The UI is at http://127.0.0.1:PORT. Ctrl-C stops the worker, then the server.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from mongo_migrate.deployments.deploy import DEFAULT_POOL, ROOT
from mongo_migrate.flows.temporary_server import with_sqlite_server_settings

READY = "mongo-migrate serve: ready"
SERVER_START_TIMEOUT_S = 90


def server_env(port: int, host: str = "127.0.0.1", home: str | Path | None = None,
               base: dict | None = None) -> dict[str, str]:
    """The environment of the server, the worker and `prefect` commands that talk to them.

    `prefect server start --port N` alone leaves the UI calling port 4200: the API port and the API
    URL are set together.
    """
    env = with_sqlite_server_settings(os.environ if base is None else base)
    env.update({
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://{host}:{port}/api",
        "PREFECT_UI_API_URL": f"http://{host}:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    })
    if home is not None:
        env["PREFECT_HOME"] = str(Path(home).resolve())
    return env


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for_api(api_url: str, proc: subprocess.Popen, timeout: float = SERVER_START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the Prefect server did not answer at {api_url} within {timeout:.0f}s")


def wait_for_worker(api_url: str, pool: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the worker has polled the pool once (then runs submitted to the pool are picked up)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{api_url}/work_pools/{pool}/workers/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                if any(w.get("status") == "ONLINE" for w in json.load(r)):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the worker did not come online in work pool {pool!r} within {timeout:.0f}s")


def _stop(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """Stop one child we started, with its own children (it leads its own process group)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def serve(port: int, host: str, home: Path, pool: str, deploy_args: Sequence[str] = ()) -> int:
    if port_in_use(host, port):
        print(f"serve: error: port {port} is in use: choose another with SERVE_PORT=N (make) or "
              f"--port N", file=sys.stderr)
        return 2
    home.mkdir(parents=True, exist_ok=True)
    env = server_env(port, host, home)
    api = env["PREFECT_API_URL"]
    prefect = [sys.executable, "-m", "prefect"]
    server = worker = None
    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        server = subprocess.Popen([*prefect, "server", "start", "--host", host, "--port", str(port)],
                                  env=env, cwd=ROOT, start_new_session=True)
        wait_for_api(api, server)
        subprocess.run([sys.executable, "-m", "mongo_migrate.deployments.deploy", "--pool", pool, *deploy_args],
                       env=env, cwd=ROOT, check=True)
        worker = subprocess.Popen([*prefect, "worker", "start", "--pool", pool, "--type", "process"],
                                  env=env, cwd=ROOT, start_new_session=True)
        wait_for_worker(api, pool, worker)
        print(f"{READY}: UI http://{host}:{port}  API {api}  work pool {pool!r}\n"
              f"  in another shell: export PREFECT_API_URL={api}", flush=True)
        while server.poll() is None and worker.poll() is None:
            time.sleep(0.5)
        failed = "server" if server.poll() is not None else "worker"
        print(f"serve: error: the Prefect {failed} stopped", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError:
        print("serve: error: registering the blocks and deployments failed (see above)", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(worker)
        _stop(server)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mongo_migrate.deployments.serve", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_SERVER_API_PORT") or 4200))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--home", default=os.environ.get("PREFECT_HOME") or str(ROOT / ".serve"),
                   help="PREFECT_HOME of the server: its database, profiles (default .serve/)")
    p.add_argument("--pool", default=DEFAULT_POOL)
    p.add_argument("--timezone", help="time zone of the off-peak schedule (default: this machine's)")
    args = p.parse_args(argv)
    deploy_args = ["--timezone", args.timezone] if args.timezone else []
    return serve(args.port, args.host, Path(args.home), args.pool, deploy_args)


if __name__ == "__main__":
    sys.exit(main())
