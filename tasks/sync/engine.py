"""The incremental sync's engine: `ChangeSync` keeps the destination in step with the source.

A reader thread follows the cluster-wide change stream of the source (before 6.0 merged by cluster time
with the DDL read from the oplog, tasks/sync/sources.py) into a bounded queue; the calling thread
turns each event into a write or DDL actions (`plan_change`, tasks/sync/events.py, which also says why
every write is a whole document), applies document writes in batches with `bulk_write` in parallel
(capped collections in stream order; unique-key conflicts: tasks/sync/conflicts.py), applies DDL alone
as a barrier (tasks/sync/ddl.py), saves the position (resume token) on the destination every few
seconds (tasks/sync/position.py) and measures the delay against the source's clock. A destination
that is unavailable for a while is waited for; a change it refuses stops the sync (`ChangeApplyError`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from bson.timestamp import Timestamp
from pymongo.errors import BulkWriteError, ConnectionFailure, OperationFailure, PyMongoError, WriteConcernError

from mongo_migrate.blocks.errors import ChangeApplyError, OplogWindowExceeded
from mongo_migrate.blocks.mongo import open_client, server_hello
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import CAPPED_POSITION_LOST, DUPLICATE_KEY
from mongo_migrate.tasks.namespaces import NamespaceMapper
from mongo_migrate.tasks.state import read_sync_state, sync_state_collection
from mongo_migrate.tasks.sync.conflicts import UniqueConflicts, target_collection
from mongo_migrate.tasks.sync.ddl import DestinationDDL
from mongo_migrate.tasks.sync.events import (Action, Batch, DocWrite, Target, change_stream_pipeline, partition_writes,
                                             plan_change, token_time, transaction_of, wall_seconds)
from mongo_migrate.tasks.sync.position import ts_text
from mongo_migrate.tasks.sync.sources import OplogDDL, stream_has_ddl
from mongo_migrate.tasks.throttle import SYNC, limiter

log = logging.getLogger("mongo_migrate.changes")

# ChangeStreamHistoryLost, ChangeStreamFatalError ("the resume token was not found"), and CappedPositionLost:
# the oplog dropped the entries at the stream's (or the oplog DDL reader's) position while it read them
# ("CollectionScan died due to position in capped collection being deleted": a 4.2.6 source, resumed at
# a position its oplog was dropping, answered this instead of 286; tests/test_faults.py)
HISTORY_LOST = {286, 280, CAPPED_POSITION_LOST}

# the destination is going away, restarting or failing over: the same write succeeds a moment later
_UNAVAILABLE_CODES = {6, 7, 89, 91, 189, 9001, 10107, 11600, 11602, 13435, 13436}


def destination_unavailable(exc: BaseException) -> bool:
    """A failure that ends when the destination is back (not a write it refuses)."""
    if isinstance(exc, ConnectionFailure):  # unreachable, timed out, no primary to select
        return True
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
        if exc.details.get("writeConcernErrors"):
            # applied, but not (yet) on a majority: a failover may roll it back, so it is made again
            # (every write of the sync states a whole document: making it twice is harmless)
            return all(e.get("code") in _UNAVAILABLE_CODES or e.get("code") == DUPLICATE_KEY for e in errors)
        return bool(errors) and all(e.get("code") in _UNAVAILABLE_CODES for e in errors)
    if isinstance(exc, WriteConcernError):  # the same, for a single write or a DDL command
        return True
    if isinstance(exc, OperationFailure):
        return exc.has_error_label("RetryableWriteError") or exc.code in _UNAVAILABLE_CODES
    return False


@dataclass(slots=True)
class _Idle:
    """The stream had nothing more: everything up to `token` was read; `seen_at` is the source's
    clock when that was so."""

    token: Any
    seen_at: float


@dataclass(slots=True)
class _Failed:
    error: BaseException


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
        self.caught_up = False
        self.stream_answered = False  # the change stream has replied once: the position is confirmed
        self.position_time: Timestamp | None = None  # cluster time up to which changes are applied
        self._applied_wall: float | None = None  # the source's wall clock for the same
        self._token: Any = None
        self._saved_token: Any = None
        self._last_checkpoint = time.monotonic()
        self._clock_offset = 0.0
        self._clock_checked = -1e18
        self._pool: ThreadPoolExecutor | None = None
        self._oplog_ddl: OplogDDL | None = None  # before 6.0 (tasks/sync/sources.py)
        self._capped_targets: dict[Target, bool] = {}
        self.conflicts = UniqueConflicts(spec, self.log)
        self._pace = limiter(spec)
        self.ddl = DestinationDDL(spec, self.mapper, self.log, self.conflicts)

    @property
    def unique_conflicts(self) -> int:
        """Writes a unique index refused at first (tasks/sync/conflicts.py)."""
        return self.conflicts.count

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
        self.conflicts.restore_parked(state)
        if state.get("token"):
            self.log.info("sync resumes from its checkpoint at cluster time %s (%d changes applied "
                          "before)", ts_text(self.position_time), self.events_applied)
        return token

    def run(self) -> None:
        self.running = True
        out: queue.Queue = queue.Queue(maxsize=self.QUEUE_EVENTS)
        reader: threading.Thread | None = None
        try:
            # the position (and the parked conflicts) are read on the destination: one that is down or
            # failing over as the sync starts is waited for, as it is while the sync runs
            start = self._while_destination_unavailable("reading the sync position", self._resume_point)
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
                    # the stream reopens after its last passed-on event, so held events come again;
                    # the oplog's DDL was read only up to bounds already passed on, so none is lost
                    stream, held = None, []
                    continue
                except ConnectionFailure as exc:
                    failing_since = self._wait_to_reconnect(stream, failing_since, exc)
                    stream, held = None, []
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
            self.stream_answered = True
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
    def _capped(self, target: Target) -> bool:
        """Is the target a capped collection? (Asked once per target and run: DDL that makes or
        drops one forgets the answer.)"""
        if target not in self._capped_targets:
            infos = list(open_client(self.spec.destination.resolve())[target[0]].list_collections(
                filter={"name": target[1]}))
            self._capped_targets[target] = bool(infos and infos[0].get("options", {}).get("capped"))
        return self._capped_targets[target]

    def _apply_writes(self, writes: list[DocWrite]) -> None:
        # the run's cap on the sync's writes (tasks/throttle.py), booked before they go out
        if self._pace.current(SYNC) is not None:
            self._pace.take(SYNC, len(writes), sum(len(w.doc.raw) for w in writes if w.doc is not None))
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
            target_collection(self.spec, target).bulk_write(
                [w.operation() for w in group], ordered=ordered, bypass_document_validation=True)
        except BulkWriteError as exc:
            if destination_unavailable(exc):
                raise  # retried whole by _flush
            errors = exc.details.get("writeErrors", [])
            refused = [e for e in errors if e.get("code") != DUPLICATE_KEY]
            if refused:
                first = refused[0]
                raise ChangeApplyError(
                    f"{'.'.join(target)}: the destination refused the change of document "
                    f"{group[first['index']].key!r} (code {first.get('code')}): {first.get('errmsg', '')}"
                ) from None
            self.conflicts.resolve(target, [(group[e["index"]], e) for e in errors])

    # -- DDL ----------------------------------------------------------------------------------------
    def apply_action(self, action: Action) -> None:
        self._while_destination_unavailable(action.describe(), self._apply_action, action)

    def _apply_action(self, action: Action) -> None:
        self._capped_targets.clear()  # a create, drop, rename or collMod may change the answer
        self.ddl.apply_action(action)

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
