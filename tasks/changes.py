"""Step 5: the incremental sync. Source change events become destination writes.

Two halves:

- pure: `plan_change(event, mapper)` turns one change event into a document write (`DocWrite`) or a
  list of DDL actions, with the spec's selection and name mapping applied; `Batch` keeps one write per
  document; `partition_writes` spreads a batch over the apply workers;
- effectful: `ChangeSync` reads the cluster-wide change stream of the source, applies batches with
  `bulk_write` in parallel, applies DDL as a barrier, saves the position (resume token) on the
  destination every few seconds and measures the delay.

Why whole documents. An update event's `updateDescription` cannot always be replayed byte for byte: a
`$set` of "a.b" cannot tell a field named "a.b" from a nested path, "a.0" an array index from a field
named "0", and a pipeline update that adds or moves fields leaves them in an order that `$set` does not
reproduce (`$set` adds new fields in name order). So the stream asks for `fullDocument: "updateLookup"`
and every insert, replace and update becomes a replace-with-upsert of the whole raw document by its
`documentKey`; a delete is a delete. Every write states a document's whole state, which makes a replay
idempotent (an insert seen again is a replace; a document the full copy read after a change, then the
change replayed, end the same) and lets a batch keep only the last write of each document.

Reordering. The looked-up document is the document as it is when the event is read, possibly newer
than the event. Writes of one document are applied in stream order, and the last event of a document
carries (at least) its final state, so the destination converges to the source. A lookup that finds
nothing (the document was deleted later, or its collection dropped) writes nothing: the delete or drop
is further on in the stream. Lookups follow the collection's UUID, so a rename inside a database does
not hide documents; a rename across databases reaches the stream as inserts into a temporary collection
and a rename inside the target database. Intermediate states can be newer than their neighbours', so a
write refused by a unique index is retried after the documents holding that key are refreshed from the
source (`ChangeSync._resolve_conflicts`).
"""
from __future__ import annotations

import calendar
import logging
import queue
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Union

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pydantic import BaseModel
from pymongo import DeleteOne, ReplaceOne
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError

from blocks.mongo import open_client, server_hello
from blocks.spec import META_DATABASE, SYSTEM_DATABASES, MigrationSpec
from tasks.common import (DUPLICATE_KEY, INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND, RAW, step,
                          to_ejson)
from tasks.copy import insert_raw_stream
from tasks.namespaces import CollectionPlan, NamespaceMapper
from tasks.precheck import RUNS
from tasks.schema import build_indexes, create_target_collection, create_views
from tasks.sync.sources import OplogDDL, stream_has_ddl

log = logging.getLogger("mongo_migrate.changes")

SYNC_STATE = "sync_state"  # one document per spec digest in META_DATABASE
# ChangeStreamHistoryLost, and ChangeStreamFatalError ("the resume token was not found")
HISTORY_LOST = {286, 280}
INDEX_CONFLICTS = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict
_DICT = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)

Target = tuple[str, str]


class OplogWindowExceeded(RuntimeError):
    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "the sync position is no longer in the source's oplog (the oplog window was exceeded"
            + (f": {detail}" if detail else "")
            + "); run the full migration again (drop the target collections or set "
            "copy_options.drop_existing_targets: true) and give the source a bigger oplog"
        )


# the destination is going away, restarting or failing over: the same write succeeds a moment later
_UNAVAILABLE_CODES = {6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436}


def destination_unavailable(exc: BaseException) -> bool:
    """A failure that ends when the destination is back (not a write it refuses)."""
    if isinstance(exc, ConnectionFailure):  # unreachable, timed out, no primary to select
        return True
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
        return bool(errors) and all(e.get("code") in _UNAVAILABLE_CODES for e in errors)
    if isinstance(exc, OperationFailure):
        return exc.has_error_label("RetryableWriteError") or exc.code in _UNAVAILABLE_CODES
    return False


class ChangeApplyError(RuntimeError):
    """The destination refused a change for another reason than a passing unique-key conflict."""


# ---------------------------------------------------------------------------------------------------
# pure: one change event -> what to do on the destination
# ---------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class DocWrite:
    """The whole state of one document: `doc` to upsert, or None to delete."""

    source: Target
    target: Target
    key: RawBSONDocument  # the event's documentKey, {_id: ...}, kept as raw bytes
    doc: RawBSONDocument | None

    @property
    def ident(self) -> tuple[Target, bytes]:
        return self.target, self.key.raw

    def operation(self) -> ReplaceOne | DeleteOne:
        if self.doc is None:
            return DeleteOne(self.key)
        return ReplaceOne(self.key, self.doc, upsert=True)


@dataclass(slots=True)
class CreateCollection:
    """Create a collection, view or time-series collection (its options are read from the source
    catalog: the change event shows a time-series collection as a view on its buckets)."""

    plan: CollectionPlan

    def describe(self) -> str:
        return f"create {self.plan.kind} {self.plan.target_ns}"


@dataclass(slots=True)
class DropCollection:
    target: Target

    def describe(self) -> str:
        return f"drop {'.'.join(self.target)}"


@dataclass(slots=True)
class RenameCollection:
    """Rename on the destination; if the old target is not there, copy the new source name."""

    old_target: Target
    new_target: Target
    source_to: Target

    def describe(self) -> str:
        return f"rename {'.'.join(self.old_target)} to {'.'.join(self.new_target)}"


@dataclass(slots=True)
class RecopyCollection:
    """Drop the target and copy the source collection as it is now (data, options, indexes)."""

    source: Target
    target: Target

    def describe(self) -> str:
        return f"copy {'.'.join(self.source)} to {'.'.join(self.target)} again"


@dataclass(slots=True)
class CreateIndexes:
    source: Target
    target: Target
    indexes: list[dict]

    def describe(self) -> str:
        return f"create index {', '.join(i['name'] for i in self.indexes)} on {'.'.join(self.target)}"


@dataclass(slots=True)
class DropIndexes:
    target: Target
    names: list[str]

    def describe(self) -> str:
        return f"drop index {', '.join(self.names)} on {'.'.join(self.target)}"


@dataclass(slots=True)
class ModifyCollection:
    target: Target
    changes: dict

    def describe(self) -> str:
        return f"collMod {'.'.join(self.target)} {sorted(self.changes)}"


@dataclass(slots=True)
class DropDatabase:
    source_db: str

    def describe(self) -> str:
        return f"drop the targets of database {self.source_db}"


# the server's temporary collection of a rename across databases (src/mongo/db/catalog/rename_collection.cpp)
CROSS_DATABASE_RENAME_TEMP = re.compile(r"tmp[A-Za-z0-9]{5}\.renameCollection")

Action = Union[CreateCollection, DropCollection, RenameCollection, RecopyCollection, CreateIndexes,
               DropIndexes, ModifyCollection, DropDatabase]
Change = Union[DocWrite, list, None]


def _decode(raw: Any) -> dict:
    """A small raw subdocument (options, index specs) as a dict; BSON types are kept."""
    if isinstance(raw, RawBSONDocument):
        return bson.decode(raw.raw, _DICT)
    return dict(raw)


def _map_view_on(mapper: NamespaceMapper, db: str, target_db: str, options: dict) -> dict:
    # a view reads from its own database: map viewOn when its target stays there (as create_views)
    opts = dict(options)
    if "viewOn" in opts:
        on_db, on_name = mapper.target(db, opts["viewOn"])
        if on_db == target_db:
            opts["viewOn"] = on_name
    return opts


def _plan(mapper: NamespaceMapper, db: str, coll: str, kind: str, options: dict) -> CollectionPlan:
    tdb, tcoll = mapper.target(db, coll)
    return CollectionPlan(source_db=db, source_name=coll, target_db=tdb, target_name=tcoll,
                          kind=kind, options_ejson=to_ejson(options))


def plan_change(event: Any, mapper: NamespaceMapper,
                recopy_renames_before: Timestamp | None = None) -> Change:
    """What one change event means on the destination: a DocWrite, a list of DDL actions, or None.

    Selection and name mapping apply to every event, DDL included. `recopy_renames_before`: a rename
    that happened while the full copy ran may have cut that copy short, so the renamed collection is
    copied again instead of renamed on the destination.
    """
    op = event["operationType"]
    ns = event.get("ns") or {}
    db, coll = ns.get("db"), ns.get("coll")
    if op in ("insert", "replace", "update", "delete"):
        if not mapper.selected(db, coll):
            return None
        key = event["documentKey"]
        target = mapper.target(db, coll)
        if op == "delete":
            return DocWrite((db, coll), target, key, None)
        doc = event.get("fullDocument")
        if doc is None:
            # the document is gone by the time of the lookup: its delete (or the collection's
            # drop) comes later in the stream
            return None
        return DocWrite((db, coll), target, key, doc)

    if op == "dropDatabase":
        return [DropDatabase(db)] if mapper.database_selected(db) else None

    if op == "rename":
        to = event.get("to") or (event.get("operationDescription") or {}).get("to")
        to_db, to_coll = to["db"], to["coll"]
        from_selected, to_selected = mapper.selected(db, coll), mapper.selected(to_db, to_coll)
        old_target, new_target = mapper.target(db, coll), mapper.target(to_db, to_coll)
        if from_selected and to_selected:
            during_copy = (recopy_renames_before is not None
                           and event["clusterTime"] < recopy_renames_before)
            # a rename across databases fills a temporary collection in the target database, then
            # renames it; before 6.0 those inserts are marked fromMigrate, which change streams
            # leave out, so the renamed collection is copied from the source instead
            if during_copy or CROSS_DATABASE_RENAME_TEMP.fullmatch(coll):
                return [DropCollection(old_target), RecopyCollection((to_db, to_coll), new_target)]
            if old_target == new_target:
                return None
            return [RenameCollection(old_target, new_target, (to_db, to_coll))]
        if from_selected:
            return [DropCollection(old_target)]  # renamed out of the selection
        if to_selected:
            return [RecopyCollection((to_db, to_coll), new_target)]  # renamed into it
        return None

    if coll is None or not mapper.selected(db, coll):
        return None
    target = mapper.target(db, coll)
    desc = _decode(event.get("operationDescription") or {})
    if op == "create":
        view_on = desc.get("viewOn", "")
        if view_on.startswith("system.buckets.") and any(
                "$_internalUnpackBucket" in stage for stage in desc.get("pipeline", [])):
            return [CreateCollection(_plan(mapper, db, coll, "timeseries", {}))]
        if "viewOn" in desc:
            return [CreateCollection(_plan(mapper, db, coll, "view", desc))]
        return [CreateCollection(_plan(mapper, db, coll, "collection", desc))]
    if op == "drop":
        return [DropCollection(target)]
    if op == "createIndexes":
        indexes = [{k: v for k, v in ix.items() if k != "ns"} for ix in desc.get("indexes", [])]
        return [CreateIndexes((db, coll), target, indexes)]
    if op == "dropIndexes":
        return [DropIndexes(target, [ix["name"] for ix in desc.get("indexes", [])])]
    if op == "modify":
        return [ModifyCollection(target, _map_view_on(mapper, db, target[0], desc))]
    # shardCollection, reshardCollection, refineCollectionShardKey: about the source's sharding
    log.warning("change %s on %s.%s is not applied to the destination", op, db, coll)
    return None


def transaction_of(event: Any) -> bytes | None:
    """Identifies the transaction an event belongs to (lsid + txnNumber), None outside one."""
    lsid = event.get("lsid")
    if lsid is None:
        return None
    raw = lsid.raw if isinstance(lsid, RawBSONDocument) else bson.encode(lsid)
    return raw + bson.encode({"n": event.get("txnNumber")})


class Batch:
    """Changes read since the last apply, reduced to one write per document (its last state)."""

    def __init__(self) -> None:
        self.writes: dict[tuple[Target, bytes], DocWrite] = {}
        self.events = 0
        self.last_event: Any = None
        self.transaction: bytes | None = None

    def add(self, write: DocWrite | None, event: Any, transaction: bytes | None = None) -> None:
        if write is not None:
            # the last state of a document wins; its earlier states in the batch need no write
            self.writes[write.ident] = write
        self.events += 1
        self.last_event = event
        self.transaction = transaction


def partition_writes(writes: Iterable[DocWrite], partitions: int) -> list[dict[Target, list[DocWrite]]]:
    """Spread writes over `partitions` by namespace and _id: a document always lands in the same
    partition, so the writes of one document stay in order however partitions run."""
    parts: list[dict[Target, list[DocWrite]]] = [defaultdict(list) for _ in range(partitions)]
    for w in writes:
        parts[hash(w.ident) % partitions][w.target].append(w)
    return parts


def token_time(token: Any) -> Timestamp:
    """The cluster time a resume token stands for (its KeyString starts with the timestamp)."""
    data = token["_data"]
    if not isinstance(data, str) or not data.startswith("82") or len(data) < 18:
        raise ValueError(f"not a resume token of MongoDB 4.2 or later: {data!r}")
    return Timestamp(int(data[2:10], 16), int(data[10:18], 16))


def wall_seconds(value: Any) -> float | None:
    if isinstance(value, datetime):
        return calendar.timegm(value.utctimetuple()) + value.microsecond / 1e6
    return None


def format_delay(delay_s: float | None, ready_s: float | None = None) -> str:
    """"3.2 s behind", or "not delayed" at or under the spec's threshold."""
    if delay_s is None:
        return "delay not measured yet"
    if delay_s <= 0:
        return "not delayed"
    if ready_s is not None and delay_s <= ready_s:
        return f"not delayed ({delay_s:.1f} s)"
    if delay_s < 60:
        return f"{delay_s:.1f} s behind"
    minutes, seconds = divmod(int(delay_s), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s") + " behind"


def change_stream_pipeline(mapper: NamespaceMapper) -> list[dict]:
    """Server-side selection (exact selection and mapping happen in plan_change) and no update
    descriptions: the sync writes whole documents."""

    def matches(prefix: str) -> list[dict]:
        if mapper.select_all:
            return [{f"{prefix}.db": {"$exists": True, "$nin": [*SYSTEM_DATABASES, META_DATABASE]}}]
        out: list[dict] = []
        if mapper.whole_databases:
            out.append({f"{prefix}.db": {"$in": sorted(mapper.whole_databases)}})
        for db, colls in sorted(mapper.some_collections.items()):
            out.append({f"{prefix}.db": db, f"{prefix}.coll": {"$in": sorted(colls)}})
            if prefix == "ns":
                # dropping the database drops its views without a drop event each
                out.append({"ns.db": db, "operationType": "dropDatabase"})
        return out

    # renames match on either side: into or out of the selection
    return [{"$match": {"$or": matches("ns") + matches("to")}}, {"$project": {"updateDescription": 0}}]


# ---------------------------------------------------------------------------------------------------
# the start point and the saved position, in META_DATABASE.sync_state
# ---------------------------------------------------------------------------------------------------
class SyncStart(BaseModel):
    cluster_time: str  # "seconds.increment"
    kept: bool  # an earlier attempt's start point (and position) was kept


def _ts_text(ts: Timestamp | None) -> str:
    return f"{ts.time}.{ts.inc}" if ts is not None else "-"


def sync_state_collection(spec: MigrationSpec):
    return open_client(spec.destination.resolve())[META_DATABASE][SYNC_STATE]


def read_sync_state(spec: MigrationSpec) -> dict | None:
    return sync_state_collection(spec).find_one({"_id": spec.digest()})


def save_start_point(spec: MigrationSpec, resumed: bool) -> SyncStart:
    """Take the change stream's position on the source now, before the full copy reads anything.

    Everything written on the source after it is in the stream and applied after the copy. A resumed
    run keeps its first start point (the copy it continues began after that one) and its position.
    """
    states = sync_state_collection(spec)
    existing = states.find_one({"_id": spec.digest()})
    if resumed and existing and existing.get("start_token"):
        return SyncStart(cluster_time=_ts_text(token_time(existing["start_token"])), kept=True)
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
    return SyncStart(cluster_time=_ts_text(token_time(token)), kept=False)


def expanded_events(client) -> bool | None:
    """showExpandedEvents for a watch on this server: True from 6.0; None (not sent) before, where
    the option does not exist and DDL comes from the oplog (tasks/sync/sources.py)."""
    return True if stream_has_ddl(client.server_info()["version"]) else None


def abandon_run(spec: MigrationSpec, reason: str) -> None:
    """The run cannot continue (its sync position left the oplog): mark it over, so that running the
    spec again starts a fresh full migration instead of resuming this one."""
    meta = open_client(spec.destination.resolve())[META_DATABASE]
    meta[RUNS].update_one({"_id": spec.digest()}, {"$set": {
        "finished": True, "abandoned": reason, "updated": datetime.now(timezone.utc)}})
    meta[SYNC_STATE].update_one({"_id": spec.digest()}, {"$set": {"status": "abandoned"}})


def source_cluster_time(spec: MigrationSpec) -> Timestamp:
    return open_client(spec.source.resolve()).admin.command("ping")["operationTime"]


save_start_point_task = step(save_start_point)


# ---------------------------------------------------------------------------------------------------
# effectful: the sync itself
# ---------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Idle:
    """The stream had nothing more: everything up to `token` was read; `seen_at` is the source's
    clock when that was so."""

    token: Any
    seen_at: float


@dataclass(slots=True)
class _Failed:
    error: BaseException


def recopy_collection(spec: MigrationSpec, source: Target, target: Target) -> int:
    """Copy one source collection as it is now over its target (options, data, indexes). Returns the
    documents copied; 0 when the source collection is gone (a later event says where it went)."""
    src = open_client(spec.source.resolve())
    dst = open_client(spec.destination.resolve())
    dst[target[0]].drop_collection(target[1])
    infos = list(src[source[0]].list_collections(filter={"name": source[1]}))
    if not infos:
        return 0
    info = infos[0]
    plan = CollectionPlan(source_db=source[0], source_name=source[1], target_db=target[0],
                          target_name=target[1], kind=info.get("type", "collection"),
                          options_ejson=to_ejson(info.get("options", {})))
    if plan.kind == "view":
        create_views(spec, [plan])
        return 0
    create_target_collection(spec, plan)
    reader = src[plan.source_db].get_collection(plan.data_collection, codec_options=RAW)
    writer = dst[plan.target_db].get_collection(plan.target_data_collection, codec_options=RAW)
    copied = 0
    batch = spec.copy_options.batch_docs
    # natural order: a capped collection keeps its order
    for stream in reader.find_raw_batches({}, batch_size=batch):
        copied += insert_raw_stream(writer, stream, plan.target_ns)[1]
    build_indexes(spec, plan)
    return copied


def server_batch_read(stream) -> bool:
    """Has every event of the server's last reply been read? (pymongo holds a reply's events in the
    stream's cursor.) Without that attribute every event counts as the last: correct, slower."""
    try:
        return not stream._cursor._has_next()
    except AttributeError:
        return True


class ChangeSync:
    """Keeps the destination in step with the source until `stop()`.

    `run()` blocks: a reader thread pulls change events into a bounded queue while the calling thread
    applies them in batches (documents in parallel, DDL alone). Status attributes are safe to read
    from other threads.
    """

    READ_AWAIT_MS = 500
    QUEUE_EVENTS = 10_000
    RECONNECT_FOR_S = 300.0
    CLOCK_CHECK_S = 30.0

    def __init__(self, spec: MigrationSpec, *, logger: logging.Logger | logging.LoggerAdapter | None = None,
                 on_batch: Callable[["ChangeSync"], None] | None = None,
                 recopy_renames_before: Timestamp | None = None) -> None:
        self.spec = spec
        self.opts = spec.incremental_options
        self.digest = spec.digest()
        self.mapper = NamespaceMapper(spec)
        self.pipeline = change_stream_pipeline(self.mapper)
        self.log = logger or log
        self.on_batch = on_batch
        self.recopy_renames_before = recopy_renames_before
        self._stop = threading.Event()
        self.running = False
        self.error: BaseException | None = None
        self.events_applied = 0
        self.writes_applied = 0
        self.batches = 0
        self.ddl_applied = 0
        self.unique_conflicts = 0  # writes a unique index refused at first (see _resolve_conflicts)
        self.caught_up = False
        self.position_time: Timestamp | None = None  # cluster time up to which changes are applied
        self._applied_wall: float | None = None  # the source's wall clock for the same
        self._token: Any = None
        self._saved_token: Any = None
        self._last_checkpoint = time.monotonic()
        self._clock_offset = 0.0
        self._clock_checked = -1e18
        self._pool: ThreadPoolExecutor | None = None
        self._conflict_lock = threading.RLock()
        self._oplog_ddl: OplogDDL | None = None  # before 6.0 (tasks/sync/sources.py)
        self._capped_targets: dict[Target, bool] = {}

    # -- clocks and delay ---------------------------------------------------------------------------
    def source_now(self) -> float:
        """The source's wall clock (epoch seconds), from an offset measured with `hello`."""
        if time.monotonic() - self._clock_checked > self.CLOCK_CHECK_S:
            try:
                before = time.time()
                local_time = server_hello(open_client(self.spec.source.resolve()))["localTime"]
                after = time.time()
                self._clock_offset = wall_seconds(local_time) - (before + after) / 2
            except PyMongoError:
                pass  # keep the last offset
            self._clock_checked = time.monotonic()
        return time.time() + self._clock_offset

    @property
    def delay_s(self) -> float | None:
        """Source clock now minus the source time of the last applied change; 0 when caught up."""
        if self.caught_up:
            return 0.0
        if self._applied_wall is None:
            return None
        return max(0.0, self.source_now() - self._applied_wall)

    # -- control ------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_until_applied(self, cluster_time: Timestamp, timeout_s: float | None = None) -> bool:
        """Block until every change up to `cluster_time` is applied; False on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self.error is not None:
                raise self.error
            if self.position_time is not None and self.position_time >= cluster_time:
                return True
            if not self.running and self._stop.is_set():
                raise ChangeApplyError("the sync stopped before the drain point was reached")
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    # -- the loop -----------------------------------------------------------------------------------
    def _resume_point(self) -> Any:
        state = read_sync_state(self.spec)
        if not state or not state.get("start_token"):
            raise ChangeApplyError("no change stream start point is saved for this spec: run the "
                                   "migration (with incremental) from the start")
        token = state.get("token") or state["start_token"]
        self.events_applied = state.get("events_applied", 0)
        self.position_time = token_time(token)
        self._applied_wall = float(self.position_time.time)
        self._token = self._saved_token = token
        self._restore_parked(state)
        if state.get("token"):
            self.log.info("sync resumes from its checkpoint at cluster time %s (%d changes applied "
                          "before)", _ts_text(self.position_time), self.events_applied)
        return token

    def run(self) -> None:
        self.running = True
        out: queue.Queue = queue.Queue(maxsize=self.QUEUE_EVENTS)
        reader: threading.Thread | None = None
        try:
            start = self._resume_point()
            source = open_client(self.spec.source.resolve())
            version = source.server_info()["version"]
            if not stream_has_ddl(version):
                self._oplog_ddl = OplogDDL(source, token_time(start), version)
                self.log.info("sync: MongoDB %s streams no create, index or collMod events; they are "
                              "read from the source's oplog", version)
            self._pool = ThreadPoolExecutor(self.opts.apply_workers, thread_name_prefix="sync-apply")
            reader = threading.Thread(target=self._read_changes, args=(start, out), daemon=True,
                                      name="sync-reader")
            reader.start()
            self._apply_loop(out)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._stop.set()
            if reader is not None:
                reader.join(self.READ_AWAIT_MS / 1000 * 4 + 5)
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            try:
                self.save_checkpoint()
            except PyMongoError as exc:
                self.log.warning("could not save the sync position: %s", exc)
            self.running = False

    def run_recording_failure(self) -> None:
        """`run` for a background thread: a failure stays in `self.error` for the flow to raise,
        instead of escaping the thread as a traceback on the user's terminal."""
        try:
            self.run()
        except BaseException:  # noqa: BLE001 - kept in self.error by run()
            pass

    def _put(self, out: queue.Queue, item: Any) -> None:
        while not self._stop.is_set():
            try:
                out.put(item, timeout=0.25)
                return
            except queue.Full:
                continue

    def _open_stream(self, token: Any):
        client = open_client(self.spec.source.resolve(), raw=True)
        return client.watch(self.pipeline, full_document="updateLookup", start_after=token,
                            show_expanded_events=None if self._oplog_ddl is not None else True,
                            max_await_time_ms=self.READ_AWAIT_MS)

    def _events_with_oplog_ddl(self, held: list, bound: Timestamp, token: Any) -> list:
        """Before 6.0: the stream's events `held` since the last call, with the oplog's DDL up to
        `bound` (a time the stream has reached) merged in by cluster time. A DDL event carries the
        position of the stream event before it, so a checkpoint never skips it: a restart reads the
        oplog again from there and applies it again (DDL replays are harmless)."""
        ddl = self._oplog_ddl.until(bound)
        if not ddl:
            return held
        merged, i = [], 0
        for event in held:
            while i < len(ddl) and ddl[i]["clusterTime"] <= event["clusterTime"]:
                merged.append({**ddl[i], "_id": token})
                i += 1
            merged.append(event)
            token = event["_id"]
        merged += [{**e, "_id": token} for e in ddl[i:]]
        return merged

    def _read_changes(self, token: Any, out: queue.Queue) -> None:
        stream = None
        failing_since: float | None = None
        held: list = []  # before 6.0: events of the current server batch, not yet merged with DDL
        try:
            while not self._stop.is_set():
                try:
                    if stream is None:
                        stream = self._open_stream(token)
                    event = stream.try_next()
                    failing_since = None
                except OperationFailure as exc:
                    if exc.code in HISTORY_LOST or "ChangeStreamHistoryLost" in str(exc):
                        raise OplogWindowExceeded(f"code {exc.code}") from None
                    if not exc.has_error_label("ResumableChangeStreamError"):
                        raise
                    failing_since = self._wait_to_reconnect(stream, failing_since, exc)
                    stream, held = None, self._rewind(held)
                    continue
                except ConnectionFailure as exc:
                    failing_since = self._wait_to_reconnect(stream, failing_since, exc)
                    stream, held = None, self._rewind(held)
                    continue
                if self._oplog_ddl is not None:
                    # a server batch's events are held until it is read to its end, then merged with
                    # the oplog's DDL up to where the stream has reached (its postBatchResumeToken)
                    if event is not None:
                        held.append(event)
                    if event is None or len(held) >= self.opts.batch_events or server_batch_read(stream):
                        reached = stream.resume_token or (held[-1]["_id"] if held else token)
                        for item in self._events_with_oplog_ddl(held, token_time(reached), token):
                            self._put(out, item)
                        token = held[-1]["_id"] if held else token
                        held = []
                        if event is None:
                            token = reached
                            self._put(out, _Idle(token, self.source_now()))
                elif event is None:
                    token = stream.resume_token or token
                    self._put(out, _Idle(token, self.source_now()))
                else:
                    token = event["_id"]
                    self._put(out, event)
        except BaseException as exc:  # handed to the applying thread, which raises it
            self._put(out, _Failed(exc))
        finally:
            if stream is not None:
                try:
                    stream.close()
                except PyMongoError:
                    pass

    def _rewind(self, held: list) -> list:
        """The stream reopens after its last passed-on event: held events come again, and so does
        the oplog's DDL after that point."""
        if held and self._oplog_ddl is not None:
            self._oplog_ddl.read_to = min(self._oplog_ddl.read_to, held[0]["clusterTime"])
        return []

    def _wait_to_reconnect(self, stream, failing_since: float | None, exc: Exception) -> float:
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since > self.RECONNECT_FOR_S:
            raise exc
        if stream is not None:
            try:
                stream.close()
            except PyMongoError:
                pass
        self.log.warning("change stream interrupted (%s); reconnecting", type(exc).__name__)
        self._stop.wait(1.0)
        return failing_since

    def _apply_loop(self, out: queue.Queue) -> None:
        batch = Batch()
        while True:
            if self._stop.is_set():
                self._flush(batch)
                return
            try:
                # while a batch fills, do not wait: apply what there is as soon as the queue is empty
                item = out.get_nowait() if batch.events else out.get(timeout=0.2)
            except queue.Empty:
                batch = self._flush(batch)
                self._maybe_checkpoint()
                continue
            if isinstance(item, _Failed):
                self._flush(batch)
                raise item.error
            if isinstance(item, _Idle):
                batch = self._flush(batch)
                self._token, self.position_time = item.token, token_time(item.token)
                self._applied_wall = max(self._applied_wall or 0.0, item.seen_at)
                self.caught_up = True
                self._maybe_checkpoint()
                continue
            self.caught_up = False
            change = plan_change(item, self.mapper, self.recopy_renames_before)
            if isinstance(change, list):  # DDL is a barrier: everything before it is applied first
                batch = self._flush(batch)
                for action in change:
                    self.apply_action(action)
                self._advance(item, 1)
                self.ddl_applied += 1
                self.save_checkpoint()
                continue
            transaction = transaction_of(item)
            # a full batch is cut between transactions, not inside one
            if batch.events >= self.opts.batch_events and (
                    transaction is None or transaction != batch.transaction
                    or batch.events >= 10 * self.opts.batch_events):
                batch = self._flush(batch)
            batch.add(change, item, transaction)

    def _advance(self, event: Any, events: int) -> None:
        self._token = event["_id"]
        self.position_time = event["clusterTime"]
        wall = wall_seconds(event.get("wallTime"))
        self._applied_wall = wall if wall is not None else float(self.position_time.time)
        self.events_applied += events

    def _while_destination_unavailable(self, what: str, fn: Callable, *args: Any) -> Any:
        """Run `fn` again while the destination is down or failing over, for up to RECONNECT_FOR_S
        (a batch is whole-document upserts and deletes, DDL and checkpoints are idempotent: doing
        one twice is harmless). A sync that is stopping does not wait."""
        failing_since: float | None = None
        while True:
            try:
                return fn(*args)
            except Exception as exc:
                if not destination_unavailable(exc) or self._stop.is_set():
                    raise
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.RECONNECT_FOR_S:
                    raise
                self.log.warning("destination unavailable while %s (%s); retrying", what, type(exc).__name__)
                self._stop.wait(1.0)

    def _flush(self, batch: Batch) -> Batch:
        return self._while_destination_unavailable("applying changes", self._apply_batch, batch)

    def _apply_batch(self, batch: Batch) -> Batch:
        if not batch.events:
            return batch
        if batch.writes:
            self._apply_writes(list(batch.writes.values()))
        self._advance(batch.last_event, batch.events)
        self.batches += 1
        self.writes_applied += len(batch.writes)
        if self.on_batch is not None:
            self.on_batch(self)
        return Batch()

    # -- document writes ----------------------------------------------------------------------------
    def _target_collection(self, target: Target):
        return open_client(self.spec.destination.resolve())[target[0]].get_collection(
            target[1], codec_options=RAW)

    def _source_collection(self, source: Target):
        return open_client(self.spec.source.resolve())[source[0]].get_collection(
            source[1], codec_options=RAW)

    def _capped(self, target: Target) -> bool:
        """Is the target a capped collection? (Asked once per target and run: DDL that makes or
        drops one forgets the answer.)"""
        if target not in self._capped_targets:
            infos = list(open_client(self.spec.destination.resolve())[target[0]].list_collections(
                filter={"name": target[1]}))
            self._capped_targets[target] = bool(infos and infos[0].get("options", {}).get("capped"))
        return self._capped_targets[target]

    def _apply_writes(self, writes: list[DocWrite]) -> None:
        # a capped collection keeps the last documents in the order they were written: its writes go
        # in stream order, in one ordered bulk, or the destination would keep another set than the
        # source (bulk_write(ordered=False) and the partitions reorder)
        capped: dict[Target, list[DocWrite]] = defaultdict(list)
        for w in writes:
            if self._capped(w.target):
                capped[w.target].append(w)
        if capped:
            writes = [w for w in writes if w.target not in capped]
            for target, group in capped.items():
                self._write_group(target, group, ordered=True)
        if not writes:
            return
        parts = partition_writes(writes, self.opts.apply_workers)
        groups = [(target, group) for part in parts for target, group in part.items()]
        if len(groups) == 1:
            self._write_group(*groups[0])
            return
        futures = [self._pool.submit(self._write_group, target, group) for target, group in groups]
        errors = []
        for f in futures:  # wait for all, so that nothing runs on after a failure is raised
            try:
                f.result()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]

    def _write_group(self, target: Target, group: list[DocWrite], ordered: bool = False) -> None:
        try:
            self._target_collection(target).bulk_write(
                [w.operation() for w in group], ordered=ordered, bypass_document_validation=True)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            refused = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if refused and destination_unavailable(exc):
                raise  # retried whole by _flush
            if refused:
                first = refused[0]
                raise ChangeApplyError(
                    f"{'.'.join(target)}: the destination refused the change of document "
                    f"{group[first['index']].key!r} (code {first.get('code')}): {first.get('errmsg', '')}"
                ) from None
            self._resolve_conflicts(target, [(group[e["index"]], e) for e in errors])

    def _current(self, write: DocWrite) -> DocWrite:
        doc = self._source_collection(write.source).find_one(write.key)
        return DocWrite(write.source, write.target, write.key, doc)

    def _refresh_holders(self, write: DocWrite, key_value: dict) -> None:
        """Bring the destination documents holding `key_value` to their current source state (where
        no unique index is in the way yet: before a createIndexes)."""
        target = self._target_collection(write.target)
        for holder in target.find(key_value, {"_id": 1}).limit(100):
            current = self._current(DocWrite(write.source, write.target, holder, None))
            target.bulk_write([current.operation()], bypass_document_validation=True)

    def _resolve_conflicts(self, target: Target, conflicts: list[tuple[DocWrite, dict]]) -> None:
        """A unique index refused writes: the key is held by a destination document whose newer state
        has not been written yet (another worker has it, or it is further on in the stream), possibly
        in a cycle (two documents that swapped keys). Each holder is parked (recorded in the sync
        state, then deleted), the write is made, and the parked documents are written again in their
        current source state, which makes room in turn where needed. The source is consistent at any
        instant, so current states fit together; a restart writes back what a crash left parked."""
        with self._conflict_lock:  # one resolution at a time: they share the parked list on record
            self.unique_conflicts += len(conflicts)
            parked: list[DocWrite] = []
            for write, _error in conflicts:
                self._write_making_room(write, parked)
            rounds = 0
            while parked:
                rounds += 1
                if rounds > 10_000:
                    raise ChangeApplyError(f"{'.'.join(target)}: unique-key conflicts do not settle")
                self._write_making_room(self._current(parked.pop()), parked)
            if rounds:
                self._forget_parked()

    def _write_making_room(self, write: DocWrite, parked: list[DocWrite]) -> None:
        coll = self._target_collection(write.target)
        for attempt in range(20):
            try:
                coll.bulk_write([write.operation()], bypass_document_validation=True)
                return
            except BulkWriteError as exc:
                error = exc.details.get("writeErrors", [{}])[0]
                if error.get("code") != DUPLICATE_KEY:
                    raise ChangeApplyError(f"{'.'.join(write.target)}: {error.get('errmsg')}") from None
            holders = [h for h in coll.find(error.get("keyValue") or {"_id": {"$in": []}}, {"_id": 1}).limit(100)
                       if h.raw != write.key.raw]
            if not holders:
                write = self._current(write)  # e.g. a collation the key lookup missed: try its newest state
                continue
            moved = [DocWrite(write.source, write.target, h, None) for h in holders]
            self._remember_parked(moved)
            coll.delete_many({"_id": {"$in": [h["_id"] for h in holders]}})
            parked.extend(moved)
        raise ChangeApplyError(
            f"{'.'.join(write.target)}: a unique index keeps refusing document {write.key!r} although "
            f"the source holds it")

    def _remember_parked(self, moved: list[DocWrite]) -> None:
        sync_state_collection(self.spec).update_one({"_id": self.digest}, {"$push": {"parked": {"$each": [
            {"source": list(w.source), "target": list(w.target), "key": w.key} for w in moved]}}})

    def _forget_parked(self) -> None:
        sync_state_collection(self.spec).update_one({"_id": self.digest}, {"$unset": {"parked": ""}})

    def _restore_parked(self, state: dict) -> None:
        """Documents a killed run had parked are written back as the source has them now."""
        entries = state.get("parked") or []
        if not entries:
            return
        self.log.info("sync: writing back %d documents parked by the last run", len(entries))
        parked = [DocWrite(tuple(e["source"]), tuple(e["target"]),
                           RawBSONDocument(bson.encode(e["key"])), None) for e in entries]
        self._resolve_conflicts(parked[0].target, [(self._current(w), {}) for w in parked])
        self._forget_parked()

    # -- DDL ----------------------------------------------------------------------------------------
    def apply_action(self, action: Action) -> None:
        self._while_destination_unavailable(action.describe(), self._apply_action, action)

    def _apply_action(self, action: Action) -> None:
        self.log.info("sync: %s", action.describe())
        self._capped_targets.clear()  # a create, drop, rename or collMod may change the answer
        dest = open_client(self.spec.destination.resolve())
        try:
            if isinstance(action, CreateCollection):
                self._create(action.plan)
            elif isinstance(action, DropCollection):
                dest[action.target[0]].drop_collection(action.target[1])
            elif isinstance(action, RenameCollection):
                self._rename(action)
            elif isinstance(action, RecopyCollection):
                n = recopy_collection(self.spec, action.source, action.target)
                self.log.info("sync: copied %d documents of %s", n, ".".join(action.source))
            elif isinstance(action, CreateIndexes):
                self._create_indexes(action)
            elif isinstance(action, DropIndexes):
                for name in action.names:
                    try:
                        dest[action.target[0]].command("dropIndexes", action.target[1], index=name)
                    except OperationFailure as exc:
                        if exc.code not in (INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND):
                            raise
            elif isinstance(action, ModifyCollection):
                dest[action.target[0]].command("collMod", action.target[1], **action.changes)
            elif isinstance(action, DropDatabase):
                self._drop_database(action.source_db)
        except OperationFailure as exc:
            if exc.code == NAMESPACE_NOT_FOUND:
                return  # a replay of a change already applied, or of one to a collection since gone
            raise ChangeApplyError(f"{action.describe()}: {exc.details.get('errmsg', exc) if exc.details else exc}") from None

    def _create(self, plan: CollectionPlan) -> None:
        if plan.kind == "view":
            create_views(self.spec, [plan])
        elif plan.kind == "timeseries":
            infos = list(open_client(self.spec.source.resolve())[plan.source_db].list_collections(
                filter={"name": plan.source_name}))
            if infos:  # gone already: its drop follows
                create_target_collection(self.spec, plan.model_copy(
                    update={"options_ejson": to_ejson(infos[0].get("options", {}))}))
        else:
            create_target_collection(self.spec, plan)

    def _rename(self, action: RenameCollection) -> None:
        dest = open_client(self.spec.destination.resolve())
        (odb, ocoll), (ndb, ncoll) = action.old_target, action.new_target
        try:
            dest.admin.command("renameCollection", f"{odb}.{ocoll}", to=f"{ndb}.{ncoll}", dropTarget=True)
        except OperationFailure as exc:
            if exc.code != NAMESPACE_NOT_FOUND:
                raise
            if ncoll in dest[ndb].list_collection_names(filter={"name": ncoll}):
                return  # a replay: the rename is done already
            n = recopy_collection(self.spec, action.source_to, action.new_target)
            self.log.info("sync: %s was not on the destination; copied %d documents of %s", f"{odb}.{ocoll}",
                          n, ".".join(action.source_to))

    def _create_indexes(self, action: CreateIndexes) -> None:
        db = open_client(self.spec.destination.resolve())[action.target[0]]
        for attempt in range(4):
            try:
                db.command("createIndexes", action.target[1], indexes=action.indexes)
                return
            except OperationFailure as exc:
                if exc.code in INDEX_CONFLICTS and attempt == 0:
                    # an index of that name with another spec: the source dropped and recreated it
                    for ix in action.indexes:
                        try:
                            db.command("dropIndexes", action.target[1], index=ix["name"])
                        except OperationFailure:
                            pass
                    continue
                key_value = (exc.details or {}).get("keyValue")
                if exc.code == DUPLICATE_KEY and key_value and attempt < 3:
                    # documents newer than their neighbours share a key the source has unique
                    probe = DocWrite(action.source, action.target, RawBSONDocument(bson.encode({})), None)
                    self._refresh_holders(probe, key_value)
                    continue
                raise

    def _drop_database(self, source_db: str) -> None:
        dest = open_client(self.spec.destination.resolve())
        target_db = self.mapper.target_database(source_db)
        for name in dest[target_db].list_collection_names():
            if self.mapper.selected(source_db, name) and self.mapper.target(source_db, name) == (target_db, name):
                dest[target_db].drop_collection(name)
        for src, dst in self.mapper.collection_map.items():
            db, _, coll = src.partition(".")
            if db == source_db and self.mapper.selected(db, coll):
                tdb, _, tcoll = dst.partition(".")
                dest[tdb].drop_collection(tcoll)

    # -- checkpoint ---------------------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        if time.monotonic() - self._last_checkpoint >= self.opts.checkpoint_interval_s:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """Save the position of the last applied batch (a restarted sync replays from there)."""
        self._while_destination_unavailable("saving the sync position", self._save_checkpoint)

    def _save_checkpoint(self) -> None:
        self._last_checkpoint = time.monotonic()
        if self._token is None or self._token is self._saved_token:
            return
        token = self._token
        sync_state_collection(self.spec).update_one({"_id": self.digest}, {"$set": {
            "token": token, "cluster_time": token_time(token), "events_applied": self.events_applied,
            "updated": datetime.now(timezone.utc),
        }})
        self._saved_token = token
