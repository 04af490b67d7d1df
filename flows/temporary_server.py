"""Prefect's temporary API server, started when the command starts instead of at its first flow run.

Without a configured API (PREFECT_API_URL), Prefect starts a temporary server for the process when the
first flow run needs one (`prefect.server.api.server.SubprocessASGIServer`: a uvicorn subprocess
serving `create_app`). It starts only after this process has imported its flows (~1.5 s here) and
then the server class itself (~3 s), and the subprocess needs ~4 s more: ~8 s in all before anything is
migrated. Started first, with the same command and environment, it boots on another core while this
process imports and reads the spec, and the command waits ~3 s for it instead (bench/full_copy.py
prints the whole command's seconds).

Nothing here runs when an API is configured: a Prefect server or Prefect Cloud is used as it is.
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path

STARTUP_TIMEOUT_S = 90.0

# Settings for the SQLite-backed Prefect servers this project starts: the temporary server, `make serve`
# and the tests' servers. Each is a default: a setting in the user's own environment wins
# (with_sqlite_server_settings, the one place they are applied).
SQLITE_SERVER_SETTINGS = {
    # Prefect's task-run recorder writes each task-run event in a transaction of its own (batch size
    # 1). After the copy's task runs (four or more per collection) it commits for seconds, and the sync
    # subflow's tracking task run, whose POST reads before it writes, fails with SQLITE_BUSY ("database
    # is locked", sent as 503) at every retry the client makes: 2, 4 and 8 s, so the sync began
    # 13.3-13.9 s after the indexes at 30 collections. Written 100 at a time it began 0.9-2.8 s after
    # (bench/sync_start.py). A task run's state reaches the UI up to a second later; the recorder writes
    # what it holds when the server stops. (flush_interval is taken as whole seconds: below 1 its loop
    # would spin.)
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    # on a busy machine a write may wait for SQLite's lock longer than Prefect's 10 s default: the UI
    # shows a failed request instead of waiting (the Python clients retry, after seconds)
    "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
}


def with_sqlite_server_settings(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with SQLITE_SERVER_SETTINGS added where it does not set them itself."""
    return {**SQLITE_SERVER_SETTINGS, **env}


# Defaults of the temporary server alone (the user's environment wins), each worth ~0.4 s of a command
# here (bench/full_copy.py's temporary mode; 20,000 documents, 8 turns each in turn):
TEMPORARY_SERVER_SETTINGS = {
    # No automations. Their services (triggers, and the actions they run) start with the server, and
    # the actions service builds an API client by building Prefect's app again (~0.5 s of CPU), on the
    # server's one event loop, as the command sends its first requests: 7.36 -> 6.88 s without. A server
    # that serves one command has no automations to run; whoever has some runs a Prefect server.
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    # No block-type registration at start: only the UI's catalog of block types reads it (a block saved
    # or loaded by the command registers its own type from the client), and deciding whether to register
    # imports every installed Prefect collection to hash their blocks: prefect-dask, and with it Dask,
    # 0.37 s: 6.78 -> 6.38 s without.
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}


class TemporaryServer:
    """One temporary Prefect API server subprocess on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        # the environment of SubprocessASGIServer._run_uvicorn_command (prefect 3.x); the process is serve()
        log = self._log()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mongo_migrate.flows.temporary_server", str(self.port)],
            env={**with_sqlite_server_settings({**TEMPORARY_SERVER_SETTINGS, **os.environ}), "PREFECT_UI_ENABLED": "0",
                 "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()  # the server holds its own copy
        # registered before Prefect registers its own exit handlers, so it runs after them: the
        # run's last log lines and events are sent before the server goes away
        atexit.register(self.stop)

    def _log(self):
        """The server's own output goes to a file beside the command's logs (flows/log_files.py), not to
        the terminal: stopped as the command exits, it may print the traceback of a write it was in the
        middle of (its task-run recorder's), which is Prefect's business, not the user's."""
        from mongo_migrate.flows.log_files import log_folder

        self.log_path = log_folder() / f"temporary-prefect-server-{os.getpid()}.log"
        return open(self.log_path, "wb")

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {self.proc.returncode} "
                                   f"before it answered (its output: {self.log_path}; set PREFECT_API_URL "
                                   "to use a running server)")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:.0f} s "
                           "(set PREFECT_API_URL to use a running server)")

    def stop(self) -> None:
        """Ask the server to stop, without waiting: it ends by itself once it has written what it holds
        (the task-run recorder's last batch), and the command does not wait the ~0.25 s that takes. If
        it does not end, it stops itself (serve's watch on its parent)."""
        if self.proc.poll() is None:
            self.proc.terminate()


def serve(port: int) -> None:
    """The temporary server's process: Prefect's app, served by uvicorn as SubprocessASGIServer serves it
    (`uvicorn --factory prefect.server.api.server:create_app --lifespan on`), built with Python's cyclic
    garbage collector paused. Importing Prefect's server modules and building its app make objects by
    the million (pydantic models and schemas, SQLAlchemy tables), none of them garbage, and the
    collector walked them all again and again: 3.2-3.4 s of import became 2.6-2.7 s without it here, on
    the command's critical path. What they made is then frozen out of later collections (gc.freeze),
    so collecting while requests are served does not walk it either."""
    import gc
    import threading

    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    gc.disable()
    sys.path.insert(0, str(Path(importlib.util.find_spec("prefect").origin).parent.parent))  # uvicorn --app-dir
    with _beartype_off():
        import uvicorn
        from prefect.server.api.server import create_app
    from prefect.settings import PREFECT_API_DATABASE_MIGRATE_ON_START, get_current_settings, temporary_settings

    settings = get_current_settings()
    current = schema_is_current(settings)
    # the upgrade is skipped only where it would find nothing to do (see SCHEMA_HEADS)
    with temporary_settings(updates={PREFECT_API_DATABASE_MIGRATE_ON_START: False}) if current else nullcontext():
        if current:
            print("the database is at this Prefect's schema head: no upgrade at start", flush=True)
        _one_app_cache_key(get_current_settings())
        app = create_app()
        gc.freeze()
        gc.enable()
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", lifespan="on")


def _one_app_cache_key(settings) -> None:
    """Prefect keys its app caches by a hash of every setting (`Settings.hash_key`, ~75 ms here), computed
    twice as it builds the app (`create_app` 0.24 -> 0.09 s), on the command's critical path: the server
    answered 3.17 -> 2.93 s after it was started (medians of 10 in turn). This process builds one app,
    so the settings it builds it with get a constant key (an attribute of this settings object over the
    method; other settings objects keep theirs). Against a Prefect without the method, or whose settings
    refuse the attribute, nothing changes."""
    try:
        object.__setattr__(settings, "hash_key", lambda: "mongo-migrate-temporary-server")
    except (AttributeError, TypeError):
        pass


@contextmanager
def _beartype_off():
    """Imports in which beartype checks nothing. The server's task queue (docket) keeps its state in
    py-key-value-aio, which type-checks itself at run time with beartype: its import hook rewrites
    every one of its modules as they are imported, ~0.2 s of the server's boot, which is the command's
    critical path (flows/temporary_server.py's docstring). beartype does nothing, by its documented
    rule, when PYTHONOPTIMIZE is set as it is imported and as the hook is asked for, so it is set for
    these imports only: the interpreter itself stays unoptimised (assertions run) and nothing started
    later inherits it. A PYTHONOPTIMIZE of the user's own is left as it is."""
    if "PYTHONOPTIMIZE" in os.environ:
        yield
        return
    os.environ["PYTHONOPTIMIZE"] = "1"
    try:
        yield
    finally:
        del os.environ["PYTHONOPTIMIZE"]


# Prefect's server upgrades its database's schema as it starts (alembic, `migrate_on_start`): it imports
# alembic and reads every migration script to find the head, ~0.15 s of each start on the command's
# critical path, to learn nearly every time that there is nothing to do (20,000 documents with the
# temporary server: 5.00 -> 4.85 s without it, medians of 6 in turn). So the head each Prefect version
# upgrades to is recorded in this file of PREFECT_HOME once a start has upgraded (record_schema_head),
# and a start whose SQLite database is at the recorded head for the installed Prefect skips the upgrade.
# A database at any other version (a new one, an older one, another Prefect's) is upgraded as before.
SCHEMA_HEADS = "mongo-migrate-schema-heads.json"


def _sqlite_database(settings) -> Path | None:
    """The SQLite file of Prefect's server database, or None (PostgreSQL, in memory)."""
    url = settings.server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix) or "memory" in url:
        return None
    return Path(url[len(prefix):].split("?", 1)[0])


def _schema_version(settings) -> str | None:
    """The alembic revision of Prefect's SQLite database, read without alembic; None when it is not
    SQLite or has none (or two heads)."""
    import sqlite3
    from contextlib import closing

    database = _sqlite_database(settings)
    if database is None or not database.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return None
    return rows[0][0] if len(rows) == 1 else None


def _heads_file(settings) -> Path:
    return Path(settings.home) / SCHEMA_HEADS


def _recorded_heads(settings) -> dict[str, str]:
    try:
        heads = json.loads(_heads_file(settings).read_text())
    except (OSError, ValueError):
        return {}
    return heads if isinstance(heads, dict) else {}


def schema_is_current(settings) -> bool:
    """The server would upgrade the schema as it starts (migrate_on_start), and the database is SQLite
    and at the head recorded for the installed Prefect."""
    import prefect

    if not settings.server.database.migrate_on_start:
        return False
    version = _schema_version(settings)
    return version is not None and _recorded_heads(settings).get(prefect.__version__) == version


def record_schema_head(settings) -> None:
    """After a temporary server with migrate_on_start has answered: its database is at the installed
    Prefect's head (it was upgraded, or it already was), which later starts compare with."""
    import prefect

    if not settings.server.database.migrate_on_start:
        return
    version = _schema_version(settings)
    if version is None:
        return
    heads = _recorded_heads(settings)
    if heads.get(prefect.__version__) == version:
        return
    heads[prefect.__version__] = version
    try:
        _heads_file(settings).write_text(json.dumps(heads, indent=1) + "\n")
    except OSError:
        pass  # a read-only PREFECT_HOME: each start upgrades, as Prefect's own do


# how long a server whose command has gone may go on: time for a graceful stop (after the command's
# SIGTERM, ~0.25 s here); a command that was killed sends none, and its server must not outlive it
ORPHAN_GRACE_S = 5.0


def _exit_when_orphaned(parent: int) -> None:
    """End this server process ORPHAN_GRACE_S after the command that started it is gone (its parent
    changes), whatever the server is doing then."""
    while os.getppid() == parent:
        time.sleep(0.5)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(0)


def start_early() -> TemporaryServer | None:
    """A temporary server starting now, unless the environment names an API (a profile's API URL is
    only known once Prefect's settings are loaded: `use_or_stop` then gives this one up)."""
    if os.environ.get("PREFECT_API_URL"):
        return None
    return TemporaryServer()


def use_or_stop(server: TemporaryServer | None):
    """A context in which the command's flows use `server`; or, when Prefect's settings name an API
    after all (a profile), that API, and the early server is stopped."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if server is None:
        return nullcontext()
    if get_current_settings().api.url:
        server.stop()
        return nullcontext()
    server.wait_ready()
    record_schema_head(get_current_settings())
    return temporary_settings(updates={PREFECT_API_URL: server.api_url})


if __name__ == "__main__":
    serve(int(sys.argv[1]))
