"""The run's artifacts, written by one background thread in the order the steps ask for them.

Every artifact is a write to the Prefect API, 0.03-0.3 s apiece on a local server (measured: a
20,000-document run made twelve, 1.1 s of its 6 s), and no step needs an artifact's answer to go on.
Inside `artifacts_written_behind()` (the `migrate` flow's body) the steps hand each write to a writer
thread and go on; the run waits for the writer once, at its end, so every artifact is there when the
run's final state is. Outside it (the `precheck` and `verify` flows) each write is made on the spot.

A write that fails (the Prefect API away for a moment) is logged, not raised: a display is never worth
failing a migration for. Each write runs in a copy of the asking thread's context, so the artifact is
linked to the same flow run as when written on the spot.
"""
from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)

log = logging.getLogger("mongo_migrate.artifacts")

_writer: contextvars.ContextVar[ThreadPoolExecutor | None] = contextvars.ContextVar("artifact_writer", default=None)


@contextmanager
def artifacts_written_behind() -> Iterator[None]:
    """Artifact writes made inside go to a writer thread; leaving waits until all are written."""
    writer = ThreadPoolExecutor(1, thread_name_prefix="artifacts")
    token = _writer.set(writer)
    try:
        yield
    finally:
        _writer.reset(token)
        writer.shutdown(wait=True)


def _write(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    def guarded() -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a display is never worth failing the migration for
            log.warning("the %s artifact was not written: %s", what, exc)

    writer = _writer.get()
    if writer is None:
        guarded()
    else:
        writer.submit(contextvars.copy_context().run, guarded)


def table(key: str, rows: list[dict], description: str) -> None:
    _write(key, create_table_artifact, key=key, table=rows, description=description)


def markdown(key: str, text: str, description: str) -> None:
    _write(key, create_markdown_artifact, key=key, markdown=text, description=description)


class ProgressBar:
    """A progress artifact that `move(percent, description)` moves.

    Each write sends the bar as it is when the write runs, not as it was when asked for: writes that
    queue up behind a slow API fold into one (a copy that ends before its bars are created gets them
    created at 100, and no updates)."""

    def __init__(self, percent: float, description: str, key: str | None = None) -> None:
        self.percent, self.description, self.key = percent, description, key
        self._id: UUID | None = None
        self._written: tuple[float, str] | None = None
        self._lock = threading.Lock()
        _write(key or "progress", self._send)

    def move(self, percent: float, description: str | None = None) -> None:
        if (percent, description or self.description) == (self.percent, self.description):
            return
        self.percent, self.description = percent, description or self.description
        _write(self.key or "progress", self._send)

    def _send(self) -> None:
        with self._lock:
            now = (self.percent, self.description)
            if now == self._written:
                return
            if self._id is None:
                self._id = create_progress_artifact(now[0], key=self.key, description=now[1])
            else:
                update_progress_artifact(self._id, now[0], description=now[1])
            self._written = now
