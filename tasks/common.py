"""Small helpers every task module uses: how tasks are declared (and where their log lines go),
Extended JSON round trips."""
from __future__ import annotations

import logging
from typing import Any, Callable

from bson import json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.json_util import JSONMode, JSONOptions
from bson.raw_bson import RawBSONDocument
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler
from pymongo.database import Database

from mongo_migrate.blocks.errors import MigrationError

# documents travel as raw bytes: never decoded, never re-encoded. A value that is decoded (an _id)
# keeps dates outside datetime's years 1-9999 as DatetimeMS instead of failing
RAW = CodecOptions(document_class=RawBSONDocument, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_CANONICAL = JSONOptions(json_mode=JSONMode.CANONICAL, datetime_conversion=DatetimeConversion.DATETIME_AUTO)

# server error codes the tasks act on (src/mongo/base/error_codes.yml)
UNAUTHORIZED = 13
NAMESPACE_NOT_FOUND = 26
INDEX_NOT_FOUND = 27
NAMESPACE_EXISTS = 48
COMMAND_NOT_SUPPORTED_ON_VIEW = 166
DUPLICATE_KEY = 11000
COLLSTATS_NOT_FOUND_42 = 40280  # $collStats storageStats of a missing collection, before 4.4
WRITE_CONCERN_FAILED = 64  # a write concern's wtimeout passed (blocks/mongo.py WRITE_CONCERN)
CAPPED_POSITION_LOST = 136  # a capped collection's (the oplog's) oldest entries were dropped under a read


def version_tuple(version: str | None) -> tuple[int, int]:
    """(major, minor) of a server version string such as "4.2.6" or "7.0.0-rc1"; (0, 0) if unreadable."""
    parts = (version or "0").split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return (0, 0)


def write_command(db: Database, name: str, value: Any, **fields: Any) -> dict:
    """A command that writes (insert, create, createIndexes, collMod, renameCollection, ...), sent with the
    write concern of its client (blocks/mongo.py WRITE_CONCERN: majority): `Database.command` sends none,
    and the deployment's default may be w:1. A client without one of its own leaves the server's."""
    concern = {} if db.write_concern.is_server_default else {"writeConcern": db.write_concern.document}
    return db.command(name, value, **fields, **concern)


def to_ejson(value: Any) -> str:
    """Canonical Extended JSON: a plain string that keeps every BSON type (for task arguments)."""
    return json_util.dumps(value, json_options=_CANONICAL)


def from_ejson(text: str) -> Any:
    return json_util.loads(text, json_options=_CANONICAL)


def worth_retrying(task, task_run, state) -> bool:
    """One of mongo-migrate's own errors (blocks/errors.py: a document the destination refused, state
    written by a newer version, ...) would only happen again: fail at once, saying why. Any other
    failure (network, failover, timeout) may pass and is retried."""
    return not isinstance(state.data, MigrationError)


def step(fn: Callable | None = None, *, retries: int = 2, retry_delay_seconds: Any = (1, 5, 15), **kw):
    """Declare a migration step as a Prefect task.

    Results are plain values and idempotent steps are retried, unless they failed with one of
    mongo-migrate's own errors (worth_retrying); nothing is cached, because a step's outcome depends
    on the databases, not only on its arguments.
    """
    kw.setdefault("retry_condition_fn", worth_retrying)
    send_logs_to_runs()

    def wrap(f: Callable):
        return task(
            f,
            name=f.__name__,
            retries=retries,
            retry_delay_seconds=list(retry_delay_seconds),
            cache_policy=NO_CACHE,
            persist_result=False,
            **kw,
        )
    return wrap(fn) if fn is not None else wrap


# The project's log lines (a document skipped, a change not applied, the load cap changed) are written by
# module loggers under this name. Prefect sends only its own loggers' lines to the API, so without this
# they reached the command's log file and terminal but never the run's logs in the Prefect UI, where a
# run started from a deployment is followed.
PROJECT_LOGGER = "mongo_migrate"


class _InRun(logging.Filter):
    """Lines written inside a flow or task run (or a thread that carries its context): a line with no
    run, such as a command's own, has no run's logs to go to."""

    def filter(self, record: logging.LogRecord) -> bool:
        return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def send_logs_to_runs() -> None:
    """The project's log lines at PREFECT_LOGGING_LEVEL (INFO) and above, written in a run, go to that
    run's logs in the Prefect API as Prefect's own do (once per process: wherever the steps run, a Dask
    worker included). Not where PREFECT_LOGGING_EXTRA_LOGGERS already sends them: each line would be
    there twice."""
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS, PREFECT_LOGGING_LEVEL

    logger = logging.getLogger(PROJECT_LOGGER)
    extra = PREFECT_LOGGING_EXTRA_LOGGERS.value()
    named = {extra} if isinstance(extra, str) else set(extra or [])
    if PROJECT_LOGGER in named or any(isinstance(h, APILogHandler) for h in logger.handlers):
        return
    handler = APILogHandler()
    handler.addFilter(_InRun())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(PREFECT_LOGGING_LEVEL.value())  # the level Prefect's own run loggers keep (INFO)
