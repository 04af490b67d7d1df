"""`mongo-migrate status SPEC`: where a migration of this spec stands, from any machine, while a run is
going or after it ended.

Read from the destination's state (`mongo_migrate_meta`: the run, the copy ranges' checkpoints, the
sync's saved position), the source (the oplog window left at its current write rate) and the Prefect
API (the runs' states, and the sync's last reported delay, its `mongo-migrate.sync.status` event). A
part that cannot be read is left empty and named in `unavailable`; only the destination is required.
"""
from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from uuid import UUID

from pydantic import BaseModel

from mongo_migrate.blocks.errors import NoRunError
from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import META_DATABASE, MigrationSpec
from mongo_migrate.flows.progress import SYNC_STATUS_EVENT, format_duration
from mongo_migrate.tasks.cutover import UNBLOCK_HINT, source_writes_blocked
from mongo_migrate.tasks.state import COPY_UNITS, RUNS, SYNC_STATE, process_silent_s
from mongo_migrate.tasks.sync.events import format_delay
from mongo_migrate.tasks.sync.position import oplog_window_left_s, ts_text
from mongo_migrate.tasks.throttle import DIRECTIONS, Cap, effective_caps, read_live, read_paces

# the stages in which a run's process is at work, and says so (tasks/state.py RunAlive)
WORKING_STAGES = {"starting", "copying", "indexes", "starting the sync", "syncing", "waiting for approval",
                  "cut over, verifying"}
# the sync reports every 5 s: a delay event older than this is not "now"
FRESH_EVENT_S = 30
_UNIT = re.compile(r"^(?P<ns>.+)#(?P<index>\d+)/(?P<total>\d+)$")


class CollectionStatus(BaseModel):
    source_ns: str
    target_ns: str | None = None
    ranges: int
    ranges_done: int
    docs_copied: int

    @property
    def done(self) -> bool:
        return self.ranges_done >= self.ranges


class ThrottleStatus(BaseModel):
    """The load cap of one direction (copy, sync) and the rate the capped batches achieved."""

    direction: str
    cap: str | None = None  # "5,000 docs/s (live)"; None: no cap
    docs_per_s: float | None = None  # achieved over the last span of about 2 s, while capped batches run
    mb_per_s: float | None = None


# a pace booked longer ago than this is not running now: its rate is not shown
FRESH_PACE_S = 10


class MigrationStatus(BaseModel):
    source: str
    destination: str
    stage: str
    flow_run_id: str | None = None
    flow_run_state: str | None = None
    sync_flow_run_id: str | None = None
    started: datetime | None = None
    updated: datetime | None = None
    collections: list[CollectionStatus] = []
    changes_applied: int | None = None
    applied_up_to: str | None = None  # cluster time of the last applied change, as saved
    delay_s: float | None = None
    delay_from: str | None = None  # "sync" (its last report) or "saved position"
    oplog_window_left_s: float | None = None
    last_error: str | None = None
    # a run still going by its records whose process has not said it was alive for this long: the
    # process has stopped (killed, its machine down) or cannot reach the destination (tasks/state.py)
    process_silent_s: float | None = None
    throttle: list[ThrottleStatus] = []
    # the source refuses user writes (setUserWriteBlockMode, 6.0+; None: not said): a cutover blocked them,
    # and one interrupted after that leaves the application unable to write until they are unblocked
    source_writes_blocked: bool | None = None
    unavailable: list[str] = []


def read_status(spec: MigrationSpec) -> MigrationStatus:
    """The status of this spec's migration; NoRunError when the destination has none."""
    digest = spec.digest()
    meta = open_client(spec.destination.resolve())[META_DATABASE]
    run = meta[RUNS].find_one({"_id": digest})
    sync = meta[SYNC_STATE].find_one({"_id": digest})
    if run is None and sync is None:
        raise NoRunError(f"no run of this spec on the destination {spec.destination.display()}: "
                         "start one with `mongo-migrate run SPEC`")
    run, sync = run or {}, sync or {}
    status = MigrationStatus(source=spec.source.display(), destination=spec.destination.display(), stage="",
                             flow_run_id=run.get("flow_run_id"), sync_flow_run_id=sync.get("sync_flow_run_id"),
                             started=run.get("started"), updated=run.get("updated"),
                             collections=_collections(meta, digest), changes_applied=sync.get("events_applied"))
    position = sync.get("cluster_time") or sync.get("start_time")
    status.applied_up_to = ts_text(sync.get("cluster_time")) if sync.get("cluster_time") else None
    status.throttle = read_throttle(spec)

    states = _flow_run_states(status, [status.flow_run_id, status.sync_flow_run_id])
    migrate_state = states.get(status.flow_run_id)
    sync_state = states.get(status.sync_flow_run_id)
    status.flow_run_state = migrate_state[0] if migrate_state else None
    status.stage = _stage(run, sync, migrate_state, sync_state, status.collections)
    for state in (sync_state, migrate_state):
        if state and state[0] in ("FAILED", "CRASHED") and state[1]:
            status.last_error = state[1]
            break
    if run.get("abandoned"):
        status.last_error = run["abandoned"]
    if status.stage in WORKING_STAGES and run.get("alive") is not None:
        status.process_silent_s = process_silent_s(run, meta.client.admin.command("hello")["localTime"])

    _source_figures(spec, status, sync, position, digest)
    if status.stage not in ("finished", "cut over, verifying") and not _source_unavailable(status):
        # a cutover interrupted after blocking them leaves them blocked (after a finished one they are
        # meant to be, and the source may be gone); asked last: a source down is not waited for twice
        status.source_writes_blocked = source_writes_blocked(spec)
    return status


def _source_figures(spec: MigrationSpec, status: MigrationStatus, sync: dict, position, digest: str) -> None:
    # the delay means something once the sync has run (a failed one included); during the copy the
    # changes wait in the oplog, and only the window left matters
    live = status.stage in ("syncing", "waiting for approval")
    if position is None or status.stage in ("finished", "cut over, verifying", "abandoned"):
        return
    if live or status.stage == "stopped without cutover" or sync.get("cluster_time"):
        _sync_figures(spec, status, position, digest, live=live)
    else:
        _oplog_window(spec, status, position)


def _source_unavailable(status: MigrationStatus) -> bool:
    return any(part.startswith("source:") for part in status.unavailable)


def _collections(meta, digest: str) -> list[CollectionStatus]:
    found: dict[str, dict] = defaultdict(lambda: {"ranges": 1, "ranges_done": 0, "docs_copied": 0,
                                                  "target_ns": None})
    for unit in meta[COPY_UNITS].find({"_id": {"$regex": f"^{re.escape(digest)}:"}}):
        match = _UNIT.match(unit["_id"][len(digest) + 1:])
        if match is None:
            continue
        entry = found[match["ns"]]
        entry["ranges"] = int(match["total"])
        entry["ranges_done"] += bool(unit.get("done"))
        entry["docs_copied"] += int(unit.get("docs", 0))
        if unit.get("target_ns"):
            entry["target_ns"] = unit["target_ns"]
    return [CollectionStatus(source_ns=ns, **entry) for ns, entry in sorted(found.items())]


def _flow_run_states(status: MigrationStatus, run_ids: list[str | None]) -> dict[str, tuple[str, str]]:
    """{flow run id: (state type, state message)} from the Prefect API, for the ids it knows."""
    from prefect.settings import get_current_settings

    wanted = [r for r in run_ids if r]
    if not wanted:
        return {}
    if not get_current_settings().api.url:
        status.unavailable.append("Prefect: no PREFECT_API_URL, the runs' states are not read")
        return {}
    from prefect.client.orchestration import get_client

    out = {}
    try:
        with get_client(sync_client=True) as client:
            for run_id in wanted:
                try:
                    run = client.read_flow_run(UUID(run_id))
                except Exception:  # noqa: BLE001 - a run of another Prefect server: not known here
                    continue
                if run.state is not None:
                    out[run_id] = (run.state.type.value, run.state.message or "")
    except Exception as exc:  # noqa: BLE001 - the destination's state is the status; Prefect adds to it
        status.unavailable.append(f"Prefect: {type(exc).__name__}: {str(exc)[:200]}")
    return out


def _stage(run: dict, sync: dict, migrate_state, sync_state, collections: list[CollectionStatus]) -> str:
    if run.get("abandoned"):
        return "abandoned"
    sync_status = sync.get("status")
    if sync_status == "cut_over":
        return "finished" if run.get("finished") else "cut over, verifying"
    if sync_status in ("approval_timeout", "declined"):
        return "stopped without cutover"
    if run.get("finished"):
        return "finished"
    if sync_status == "syncing":
        kind = sync_state[0] if sync_state else None
        if kind == "PAUSED":
            return "waiting for approval"
        if kind in ("FAILED", "CRASHED", "CANCELLED"):
            return "failed"
        return "syncing"
    if migrate_state and migrate_state[0] in ("FAILED", "CRASHED", "CANCELLED"):
        return "failed"
    if collections and all(c.done for c in collections):
        return "indexes" if not sync else "starting the sync"
    return "copying" if collections else "starting"


def _sync_figures(spec: MigrationSpec, status: MigrationStatus, position, digest: str, live: bool) -> None:
    """Delay and oplog window left: the sync's last report when it is fresh, else from the saved
    position (the delay then includes up to a checkpoint interval, and counts idle time as delay)."""
    event = _last_sync_event(status, digest) if live else None
    if event is not None:
        status.delay_s = event.get("delay_s")
        status.oplog_window_left_s = event.get("oplog_window_left_s")
        status.delay_from = "sync"
    try:
        source = open_client(spec.source.resolve())
        if status.delay_from is None:
            now = source.admin.command("ping")["operationTime"]
            status.delay_s = float(max(now.time - position.time, 0))
            status.delay_from = "saved position"
    except Exception as exc:  # noqa: BLE001 - the source may be down; the rest still stands
        status.unavailable.append(f"source: {type(exc).__name__}: {str(exc)[:200]}")
        return
    if status.oplog_window_left_s is None:
        _oplog_window(spec, status, position)


def _oplog_window(spec: MigrationSpec, status: MigrationStatus, position) -> None:
    try:
        status.oplog_window_left_s = oplog_window_left_s(spec.source.resolve(), position)
    except Exception as exc:  # noqa: BLE001 - the source may be down; the rest still stands
        status.unavailable.append(f"source: {type(exc).__name__}: {str(exc)[:200]}")


def _last_sync_event(status: MigrationStatus, digest: str) -> dict | None:
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return None
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    try:
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(
                occurred=EventOccurredFilter(since=datetime.now(timezone.utc) - timedelta(seconds=FRESH_EVENT_S)),
                event=EventNameFilter(name=[SYNC_STATUS_EVENT]),
                resource=EventResourceFilter(id=[f"mongo-migrate.migration.{digest}"])), limit=20)
    except Exception as exc:  # noqa: BLE001
        status.unavailable.append(f"Prefect events: {type(exc).__name__}: {str(exc)[:200]}")
        return None
    events = sorted(page.events, key=lambda e: e.occurred)
    return dict(events[-1].payload) if events else None


def read_throttle(spec: MigrationSpec) -> list[ThrottleStatus]:
    now = datetime.now(timezone.utc)
    caps = effective_caps(spec.throttle, read_live(spec), now)
    paces = read_paces(spec)
    shown = []
    for d in DIRECTIONS:
        row = ThrottleStatus(direction=d, cap=caps[d].describe() if caps[d] else None)
        pace = paces.get(d)
        updated = pace.get("updated") if pace else None
        if updated is not None and now - updated.replace(tzinfo=timezone.utc) < timedelta(seconds=FRESH_PACE_S):
            row.docs_per_s, row.mb_per_s = pace.get("docs_per_s"), pace.get("mb_per_s")
        shown.append(row)
    return shown


def throttle_text(caps: dict[str, Cap | None] | list[ThrottleStatus]) -> str:
    """"load cap: copy 5,000 docs/s (live), achieved 4,990 docs/s (5.1 MB/s); sync none"."""
    rows = caps if isinstance(caps, list) else [
        ThrottleStatus(direction=d, cap=c.describe() if c else None) for d, c in caps.items()]
    parts = []
    for r in rows:
        achieved = (f", achieved {r.docs_per_s:,.0f} docs/s ({r.mb_per_s:,.1f} MB/s)"
                    if r.docs_per_s is not None and r.mb_per_s is not None else "")
        parts.append(f"{r.direction} {r.cap or 'none'}{achieved}")
    return "load cap: " + "; ".join(parts)


def status_text(s: MigrationStatus) -> str:
    lines = [f"{s.source} -> {s.destination}: {s.stage}"]
    if s.process_silent_s is not None:
        lines.append(f"the run's process has not been heard from for {format_duration(s.process_silent_s)}: "
                     "it has stopped (killed, or its machine is down) or cannot reach the destination; "
                     "`mongo-migrate run SPEC` continues the run")
    if s.flow_run_id:
        when = (f", started {s.started:%Y-%m-%d %H:%M} UTC" if s.started else "") + \
               (f", updated {s.updated:%Y-%m-%d %H:%M} UTC" if s.updated else "")
        lines.append(f"flow run {s.flow_run_id} ({s.flow_run_state or 'state not read'}){when}")
    if s.collections:
        done = sum(c.done for c in s.collections)
        lines.append(f"full copy: {done} of {len(s.collections)} collections copied, "
                     f"{sum(c.docs_copied for c in s.collections):,} documents")
        for c in s.collections:
            lines.append(f"  {c.source_ns:<40} {c.ranges_done}/{c.ranges} ranges {c.docs_copied:>14,} documents"
                         + ("  done" if c.done else ""))
    if s.changes_applied is not None or s.delay_s is not None:
        lines.append(f"sync: {s.changes_applied or 0:,} changes applied"
                     + (f" up to cluster time {s.applied_up_to}" if s.applied_up_to else "")
                     + (f"; {format_delay(s.delay_s)}" + (" (from the saved position)"
                                                          if s.delay_from == "saved position" else "")
                        if s.delay_s is not None else "")
                     + f"; oplog window left {format_duration(s.oplog_window_left_s)}")
    if s.throttle:
        lines.append(throttle_text(s.throttle))
    if s.source_writes_blocked:
        lines.append("the source refuses user writes (a cutover interrupted after blocking them leaves them "
                     f"so); to let the application write again: {UNBLOCK_HINT}")
    if s.last_error:
        lines.append(f"last error: {s.last_error}")
    for part in s.unavailable:
        lines.append(f"not read: {part}")
    return "\n".join(lines)
