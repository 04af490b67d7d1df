"""The source's oplog as the precheck, the sync and the run's state read it: its oldest and newest
entries, its size and how long it holds (local.oplog.rs, read in natural order: insertion order)."""
from __future__ import annotations

import logging
from datetime import datetime

from bson.timestamp import Timestamp
from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from mongo_migrate.blocks.mongo import MongoConnection, open_client
from mongo_migrate.tasks.common import CAPPED_POSITION_LOST

log = logging.getLogger("mongo_migrate.oplog")


def oldest_entry_time(conn: MongoConnection) -> Timestamp | None:
    """The `ts` of the oplog's oldest entry (None: an empty oplog): a position before it is gone."""
    return oldest_entry_ts(open_client(conn).local["oplog.rs"])


def oldest_entry_ts(oplog: Collection, attempts: int = 5) -> Timestamp | None:
    """`oldest_entry_time` on an open `local.oplog.rs`. The oplog drops its oldest entries as it writes
    new ones, and a read of its head can die as they go (CappedPositionLost; a 4.2.6 source under a write
    burst, about one read in a hundred): read again, from the new head."""
    for attempt in range(attempts):
        try:
            first = oplog.find_one({}, {"ts": 1}, sort=[("$natural", ASCENDING)])
            return None if first is None else first["ts"]
        except OperationFailure as exc:
            if exc.code != CAPPED_POSITION_LOST or attempt == attempts - 1:
                raise
            log.debug("the oplog dropped its oldest entry under the read: reading its head again")
    return None  # not reached: the last attempt returns or raises


class OplogWindow(BaseModel):
    first: datetime
    last: datetime
    size_bytes: int
    max_bytes: int
    entries: int = 0

    @property
    def span_hours(self) -> float:
        return max((self.last - self.first).total_seconds(), 0.0) / 3600

    @property
    def full(self) -> bool:
        return self.max_bytes > 0 and self.size_bytes >= 0.9 * self.max_bytes

    @property
    def hours(self) -> float:
        """What the oplog holds at the current write rate: the span of its entries once it is full;
        until then, that span scaled up to the oplog's configured size."""
        if self.full or self.size_bytes <= 0:
            return self.span_hours
        # entry times have one-second resolution: a young oplog's entries may all share one second,
        # which is a short history, not an empty window
        return max(self.span_hours, 1 / 3600) * self.max_bytes / self.size_bytes

    @property
    def bytes_per_hour(self) -> float:
        return self.size_bytes / self.span_hours if self.span_hours > 0 else 0.0


def read_oplog_window(conn: MongoConnection) -> OplogWindow:
    """First and last entry times of the source's oplog, its size and entries (reads local.oplog.rs)."""
    oplog = open_client(conn).local["oplog.rs"]
    first = oldest_entry_ts(oplog)
    last = oplog.find_one({}, {"ts": 1}, sort=[("$natural", DESCENDING)])
    stats = next(oplog.aggregate([{"$collStats": {"storageStats": {}}}]))["storageStats"]
    if first is None or last is None:
        raise OperationFailure("the oplog is empty", code=0)
    return OplogWindow(first=first.as_datetime(), last=last["ts"].as_datetime(),
                       size_bytes=int(stats.get("size", 0)), max_bytes=int(stats.get("maxSize", 0)),
                       entries=int(stats.get("count", 0)))
