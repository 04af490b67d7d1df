"""Where the sync starts and where it is: the start point and the saved position of a spec's sync
(kept in the `sync_state` collection, tasks/state.py), and how long the source's oplog keeps it.

`save_start_point` takes the change stream's position before the full copy reads anything; the sync
(tasks/sync/engine.py) resumes from the saved `token`, or from `start_token` the first time. A position
that has left the source's oplog cannot be resumed (`OplogWindowExceeded`): `abandon_run`
(tasks/state.py) marks the run over so that the spec starts afresh.
"""
from __future__ import annotations

from datetime import datetime, timezone

from bson.timestamp import Timestamp
from pydantic import BaseModel

from mongo_migrate.blocks.mongo import MongoConnection, open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import step
from mongo_migrate.tasks.oplog import read_oplog_window
from mongo_migrate.tasks.state import sync_state_collection
from mongo_migrate.tasks.sync.events import token_time
from mongo_migrate.tasks.sync.sources import stream_has_ddl


class SyncStart(BaseModel):
    cluster_time: str  # "seconds.increment"
    kept: bool  # an earlier attempt's start point (and position) was kept


def ts_text(ts: Timestamp | None) -> str:
    return f"{ts.time}.{ts.inc}" if ts is not None else "-"


def save_start_point(spec: MigrationSpec, resumed: bool) -> SyncStart:
    """Take the change stream's position on the source now, before the full copy reads anything.

    Everything written on the source after it is in the stream and applied after the copy. A resumed
    run keeps its first start point (the copy it continues began after that one) and its position.
    """
    states = sync_state_collection(spec)
    existing = states.find_one({"_id": spec.digest()})
    if resumed and existing and existing.get("start_token"):
        return SyncStart(cluster_time=ts_text(token_time(existing["start_token"])), kept=True)
    source = open_client(spec.source.resolve())
    # the token of a freshly opened stream stands for the majority-committed present: every write
    # after it comes through the stream, every write before it is visible to the copy
    with source.watch([{"$match": {"operationType": "none"}}],
                      show_expanded_events=expanded_events(source)) as stream:
        token = stream.resume_token
    states.replace_one({"_id": spec.digest()}, {
        "start_token": token, "start_time": token_time(token),
        "created": datetime.now(timezone.utc),
    }, upsert=True)
    return SyncStart(cluster_time=ts_text(token_time(token)), kept=False)


def expanded_events(client) -> bool | None:
    """showExpandedEvents for a watch on this server: True from 6.0; None (not sent) before, where
    the option does not exist and DDL comes from the oplog (tasks/sync/sources.py)."""
    return True if stream_has_ddl(client.server_info()["version"]) else None


def source_cluster_time(spec: MigrationSpec) -> Timestamp:
    return open_client(spec.source.resolve()).admin.command("ping")["operationTime"]


# the source's current write rate: the oplog entries of this many last seconds
WRITE_RATE_WINDOW_S = 30


def oplog_window_left_s(conn: MongoConnection, position: Timestamp,
                        rate_window_s: float = WRITE_RATE_WINDOW_S) -> float | None:
    """Seconds until the source's oplog would overwrite `position` (the sync's), at the source's
    current write rate; None when nothing is written (the window does not shrink).

    The oplog drops its oldest entries as new ones arrive once it is full: what stands between the
    position and being dropped is the room left in the oplog plus the entries older than the
    position. Entry bytes are taken as even over time (the oplog's average entry size) and the rate
    is that of the last `rate_window_s` (a count of recent entries: the oplog is read from the
    end, as the change stream reads it)."""
    window = read_oplog_window(conn)
    first_s, last_s = window.first.timestamp(), window.last.timestamp()
    since = Timestamp(max(int(last_s - rate_window_s), 0), 0)
    recent = open_client(conn).local["oplog.rs"].count_documents({"ts": {"$gt": since}})
    if not window.entries or not recent:
        return None
    rate_bytes = recent * (window.size_bytes / window.entries) / rate_window_s
    older = 1.0 if last_s <= first_s else min(max((position.time - first_s) / (last_s - first_s), 0.0), 1.0)
    room = max(window.max_bytes - window.size_bytes, 0)
    return (room + older * window.size_bytes) / rate_bytes


save_start_point_task = step(save_start_point)
