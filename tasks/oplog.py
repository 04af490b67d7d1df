"""The source's oplog as the precheck, the sync and the run's state read it: its oldest and newest
entries, its size and how long it holds (local.oplog.rs, read in natural order: insertion order)."""
from __future__ import annotations

from datetime import datetime

from bson.timestamp import Timestamp
from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import OperationFailure

from mongo_migrate.blocks.mongo import MongoConnection, open_client


def oldest_entry_time(conn: MongoConnection) -> Timestamp | None:
    """The `ts` of the oplog's oldest entry (None: an empty oplog): a position before it is gone."""
    first = open_client(conn).local["oplog.rs"].find_one({}, {"ts": 1}, sort=[("$natural", ASCENDING)])
    return None if first is None else first["ts"]


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
    first = oldest_entry_time(conn)
    last = oplog.find_one({}, {"ts": 1}, sort=[("$natural", DESCENDING)])
    stats = next(oplog.aggregate([{"$collStats": {"storageStats": {}}}]))["storageStats"]
    if first is None or last is None:
        raise OperationFailure("the oplog is empty", code=0)
    return OplogWindow(first=first.as_datetime(), last=last["ts"].as_datetime(),
                       size_bytes=int(stats.get("size", 0)), max_bytes=int(stats.get("maxSize", 0)),
                       entries=int(stats.get("count", 0)))
