"""A real `prefect server start` that a test can stop and start again on the same port and database,
and a delaying TCP proxy in front of it: a Prefect API that is slow, or away for a while, as a remote
server or Prefect Cloud may be."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from mongo_migrate.deployments.serve import server_env
from mongo_migrate.sandbox.mongod import free_port

ROOT = Path(__file__).resolve().parent.parent
HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ", b"HEAD ", b"OPTIONS ")


class PrefectServer:
    """`prefect server start` on a free port with its own PREFECT_HOME (SQLite database)."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.home = home
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env = server_env(self.port, home=home, base=base)
        self.api = self.env["PREFECT_API_URL"]
        self.log_path = home.parent / f"prefect-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
             str(self.port)], env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"prefect server exited with {self.proc.returncode}:\n"
                                     f"{self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"prefect server not ready within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class DelayingProxy:
    """A TCP proxy to 127.0.0.1:`upstream_port` that holds each HTTP request `delay_s` before passing
    it on, and notes its request line ("GET /api/..."). `close()` makes the API look stopped
    (connections refused, open ones cut); `listen()` brings it back on the same port. `refuse(pattern)`
    cuts the connection of every request whose line matches, instead of passing it on: an API that
    goes away between two requests of one step, at the place a test chooses."""

    def __init__(self, upstream_port: int, delay_s: float) -> None:
        self.upstream_port, self.delay_s = upstream_port, delay_s
        self.port = free_port()
        self.requests: list[str] = []
        self.refused: re.Pattern | None = None
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def requests_matching(self, pattern: str) -> list[str]:
        with self._lock:
            return [r for r in self.requests if re.search(pattern, r)]

    def refuse(self, pattern: str | None) -> None:
        self.refused = re.compile(pattern) if pattern else None

    def listen(self) -> "DelayingProxy":
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and data.startswith(HTTP_METHODS):
                    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
                    with self._lock:
                        self.requests.append(line)
                    if self.refused is not None and self.refused.search(line):
                        break  # cut, both ways (below)
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
