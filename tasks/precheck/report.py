"""The precheck table: its rows (CheckResult), the report, and how an item that cannot run becomes a
failed row instead of an exception."""
from __future__ import annotations

import functools
import logging
from typing import Callable, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel
from pymongo.errors import OperationFailure, PyMongoError

from mongo_migrate.blocks.mongo import MongoConnection
from mongo_migrate.blocks.spec import SpecError
from mongo_migrate.tasks.common import UNAUTHORIZED
from mongo_migrate.tasks.connect import describe_connection_error

log = logging.getLogger("mongo_migrate.precheck")

Status = Literal["passed", "warning", "failed"]
MiB = 1024 * 1024


class CheckResult(BaseModel):
    name: str
    status: Status
    detail: str
    remedy: str = ""


class PrecheckReport(BaseModel):
    items: list[CheckResult]
    # documents in each selected source collection when the precheck read it (time-series: buckets);
    # the last verification compares with it, so an emptied source is never an equal copy
    source_docs: dict[str, int] = {}

    @property
    def passed(self) -> bool:
        return all(i.status != "failed" for i in self.items)

    @property
    def failed(self) -> list[CheckResult]:
        return [i for i in self.items if i.status == "failed"]

    def item(self, name: str) -> CheckResult:
        """The first row of that name (tests and callers look items up by name)."""
        for i in self.items:
            if i.name == name:
                return i
        raise KeyError(f"no precheck item {name!r}: {[i.name for i in self.items]}")


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name=name, status="passed", detail=detail)


def warning(name: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(name=name, status="warning", detail=detail, remedy=remedy)


def failed(name: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(name=name, status="failed", detail=detail, remedy=remedy)


def refusal(exc: OperationFailure) -> str:
    """The server's reason for refusing a command, without its "to execute command {...}" tail."""
    return (exc.details or {}).get("errmsg", str(exc)).split(" to execute command")[0]


def source_read_problem(exc: PyMongoError) -> str:
    """Why the source could not be read: a missing privilege, or the connection's error."""
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
        return refusal(exc)
    return describe_connection_error(exc, "source")[1]


def check_item(name: str) -> Callable:
    """A check that raises becomes a failed row naming what could not be read (the table stays whole)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SpecError as exc:
                return failed(name, str(exc), "fix the spec")
            except PyMongoError as exc:
                if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
                    return failed(name, f"could not check: {refusal(exc)}",
                                  "grant the privileges the permissions items list, then rerun")
                return failed(name, "could not check: " + describe_connection_error(exc, "server")[1],
                              "fix the cause, then rerun the precheck")
            except Exception as exc:  # noqa: BLE001 - one item's bug must not hide the others
                log.exception("precheck item %s could not run", name)
                return failed(name, f"could not check: {type(exc).__name__}: {str(exc)[:200]}",
                              "rerun with --debug and report it")
        return run

    return wrap


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def fmt_hours(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:,.1f} days"
    if hours >= 1:
        return f"{hours:,.1f} h"
    return f"{hours * 60:,.1f} min" if hours * 60 >= 1 else f"{hours * 3600:,.1f} s"


def first_host(conn: MongoConnection) -> str:
    netloc = urlsplit(conn.uri or "").netloc.rpartition("@")[2]
    return netloc.split(",")[0] or "HOST:PORT"


def listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
