"""Progress of the full copy and of the incremental sync, as Prefect artifacts and events.

The full copy: "full-copy-progress" for the whole copy, one progress artifact per collection.

They move while a collection copies, not only when one of its ranges ends: every few seconds the
flow reads the target collections' document counts (a metadata read, cheap for the server) and sets
each bar to copied / expected documents. A bar reaches 100 only when every range of its collection
has finished. Progress is best-effort: a count that cannot be read leaves a bar where it was.

The sync: `SyncReporter` (below) keeps the "sync-delay" artifact, emits `mongo-migrate.sync.*`
events and raises the delay and oplog-window alarms.
"""
from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.events import emit_event
from prefect.flow_runs import resume_flow_run
from pydantic import BaseModel
from pymongo.errors import PyMongoError

from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.flows.artifacts import ProgressBar
from mongo_migrate.tasks.notify import flow_run_url, notify_sync_alarm
from mongo_migrate.tasks.sync.events import format_delay
from mongo_migrate.tasks.sync.position import oplog_window_left_s
from mongo_migrate.tasks.throttle import COPY, SYNC, limiter

log = logging.getLogger("mongo_migrate.progress")

PROGRESS_EVERY_S = 2.0
# each bar's move is a write to the Prefect API (≈25 ms of the server's CPU): the overall bar moves every
# PROGRESS_EVERY_S, a collection's bar every COLLECTION_BARS_EVERY_S and when it ends (at 1,000,000
# documents in four collections that was 55 writes of the run's 75 when every bar moved every 2 s)
COLLECTION_BARS_EVERY_S = 10.0
FULL_COPY_KEY = "full-copy-progress"
# one bar per collection for the biggest ones; the rest are in the overall bar
MAX_COLLECTION_BARS = 50


class CollectionProgress(BaseModel):
    source_ns: str
    copied: int
    expected: int
    finished: bool


class CopySnapshot(BaseModel):
    """The full copy's progress as the terminal (flows/terminal.py) draws it."""

    collections: list[CollectionProgress]
    seconds: float  # since the copy started
    docs_per_s: float
    eta_s: float | None
    cap: str | None = None  # the load cap on the copy's reads now ("1,000 docs/s (spec)"), None: none
    recent_docs_per_s: float | None = None  # since the previous update (the rate the cap is held to)

    def cap_text(self) -> str:
        """"; load cap 1,000 docs/s (spec), now 998 docs/s", or nothing without a cap."""
        if self.cap is None:
            return ""
        return f"; load cap {self.cap}" + (
            "" if self.recent_docs_per_s is None else f", now {self.recent_docs_per_s:,.0f} docs/s")


# What this process's terminal display listens to (flows/terminal.py, added by the CLI): objects with
# copy_progress(CopySnapshot) and sync_progress(line: str, ready: bool).
_watchers: list = []


def add_progress_watcher(watcher) -> None:
    _watchers.append(watcher)


def remove_progress_watcher(watcher) -> None:
    if watcher in _watchers:
        _watchers.remove(watcher)


def _tell_watchers(method: str, *args, **kwargs) -> None:
    for watcher in list(_watchers):
        try:
            getattr(watcher, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a display is never worth failing the migration for
            log.debug("progress display failed: %s", exc)


class CopyProgress:
    """Creates the progress artifacts (flows/artifacts.py writes them); `range_finished(ns)` as each
    range ends, `update()` every PROGRESS_EVERY_S (and once at the end)."""

    def __init__(self, spec: MigrationSpec, ranges: list) -> None:
        self.spec = spec
        self.plans = {r.plan.source_ns: r.plan for r in ranges}
        self.expected: Counter[str] = Counter()
        self.remaining: Counter[str] = Counter()
        for r in ranges:
            self.expected[r.plan.source_ns] += r.estimated_docs
            self.remaining[r.plan.source_ns] += 1
        self.copied: dict[str, int] = dict.fromkeys(self.plans, 0)
        self.started = time.monotonic()
        self._previous: tuple[float, int] | None = None  # (when, documents) at the previous update
        self._bars_moved = self.started  # when the collections' bars last moved
        self._destination = None
        total = sum(self.expected.values())
        start = 0.0 if ranges else 100.0  # nothing to copy is a finished copy
        self.overall = ProgressBar(
            start, key=FULL_COPY_KEY,
            description=f"Full copy: {len(self.plans)} collection{'' if len(self.plans) == 1 else 's'}, "
            f"about {total:,} documents",
        )
        # a bar for each of the biggest collections still being copied COLLECTION_BARS_EVERY_S into the
        # copy (there is nothing to watch in one copied sooner: the summary and the overall bar have
        # it); each bar is an API write that a small migration's run would wait for at its end
        self.biggest = sorted(self.plans, key=lambda ns: -self.expected[ns])[:MAX_COLLECTION_BARS]
        self.bars: dict[str, ProgressBar] = {}

    def range_finished(self, source_ns: str) -> None:
        self.remaining[source_ns] -= 1

    def update(self) -> None:
        """Read the target collections' document counts, move the bars (the overall one's description
        with docs/s and the time left), and tell this process's terminal display."""
        for ns, plan in self.plans.items():
            if self.remaining[ns] <= 0:
                self.copied[ns] = max(self.copied[ns], self.expected[ns])
                continue
            try:
                count = self._target(plan).estimated_document_count()
            except PyMongoError as exc:
                log.debug("progress of %s not read: %s", ns, exc)
                continue
            # never 100 before the last range ends (the source estimate may be low)
            self.copied[ns] = min(count, max(self.expected[ns] - 1, 0))
        snapshot = self.snapshot()
        now = time.monotonic()
        bars_due = now - self._bars_moved >= COLLECTION_BARS_EVERY_S
        for ns in self.biggest:
            percent = round(self._percent([ns]), 1)
            if ns in self.bars:
                if bars_due or percent == 100.0:
                    self.bars[ns].move(percent)
            elif bars_due and percent < 100.0:
                self.bars[ns] = ProgressBar(percent, description=f"Full copy of {ns} -> {self.plans[ns].target_ns} "
                                            f"(about {self.expected[ns]:,} documents)")
        if bars_due:
            self._bars_moved = now
        finished = all(c.finished for c in snapshot.collections)
        eta = ", done" if finished else ("" if snapshot.eta_s is None else
                                         f", about {format_duration(snapshot.eta_s)} left")
        self.overall.move(round(self._percent(list(self.plans)), 1),
                          f"Full copy: {len(self.plans)} collection{'' if len(self.plans) == 1 else 's'}, "
                          f"{sum(self.copied.values()):,} of about {sum(self.expected.values()):,} documents, "
                          f"{snapshot.docs_per_s:,.0f} docs/s{eta}{snapshot.cap_text()}")
        _tell_watchers("copy_progress", snapshot)

    def snapshot(self) -> CopySnapshot:
        copied, expected = sum(self.copied.values()), sum(self.expected.values())
        seconds = max(time.monotonic() - self.started, 1e-6)
        rate = copied / seconds
        finished = all(self.remaining[ns] <= 0 for ns in self.plans)
        eta = 0.0 if finished else (max(expected - copied, 0) / rate if rate > 0 else None)
        now, recent = time.monotonic(), None
        if self._previous is not None and now - self._previous[0] > 0.5:
            recent = (copied - self._previous[1]) / (now - self._previous[0])
        if self._previous is None or now - self._previous[0] > 0.5:
            self._previous = (now, copied)
        cap = limiter(self.spec).current(COPY)
        return CopySnapshot(
            collections=[CollectionProgress(source_ns=ns, copied=self.copied[ns], expected=self.expected[ns],
                                            finished=self.remaining[ns] <= 0) for ns in self.plans],
            seconds=seconds, docs_per_s=rate, eta_s=eta, cap=cap.describe() if cap else None,
            recent_docs_per_s=recent)

    def _percent(self, names: list[str]) -> float:
        if all(self.remaining[ns] <= 0 for ns in names):
            return 100.0
        expected = sum(self.expected[ns] for ns in names)
        if not expected:
            return 0.0
        return min(99.9, 100.0 * sum(self.copied[ns] for ns in names) / expected)

    def _target(self, plan):
        if self._destination is None:
            self._destination = open_client(self.spec.destination.resolve())
        return self._destination[plan.target_db][plan.target_data_collection]


# -- the incremental sync ----------------------------------------------------------------------------
REPORT_EVERY_S = 5.0
OPLOG_WINDOW_EVERY_S = 30.0  # a count of the source's recent oplog entries each time
DELAY_ARTIFACT = "sync-delay"
# Prefect events: people who run Prefect can point Automations at them (the Slack alarms below are
# sent on the same transitions)
SYNC_STATUS_EVENT = "mongo-migrate.sync.status"
DELAY_ALARM_EVENT = "mongo-migrate.sync.delay-alarm"
DELAY_RECOVERED_EVENT = "mongo-migrate.sync.delay-recovered"
OPLOG_WINDOW_LOW_EVENT = "mongo-migrate.sync.oplog-window-low"


def format_duration(seconds: float | None) -> str:
    """"45 s", "4 min", "2 h 05 min", "3 d 4 h"; "-" when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if days:
        return f"{days} d {hours - 24 * days} h"
    if hours:
        return f"{hours} h {minutes - 60 * hours:02d} min"
    return f"{minutes} min"


class ThresholdAlarm:
    """Raised once a value has stayed past `threshold` (above it, or below with above=False) for
    `for_s` seconds; cleared as soon as it is back. `observe` says when either happens."""

    def __init__(self, threshold: float, for_s: float = 0.0, above: bool = True) -> None:
        self.threshold, self.for_s, self.above = threshold, for_s, above
        self.past_since: float | None = None  # wall time the value went past the threshold
        self.raised = False

    def observe(self, value: float | None, now: float) -> str | None:
        """"raised", "cleared" or None. An unknown value (None) is not past the threshold."""
        past = value is not None and (value > self.threshold if self.above else value < self.threshold)
        if past:
            if self.past_since is None:
                self.past_since = now
            if not self.raised and now - self.past_since >= self.for_s:
                self.raised = True
                return "raised"
            return None
        self.past_since = None
        if self.raised:
            self.raised = False
            return "cleared"
        return None


class SyncReporter:
    """From a thread of its own (the flow's thread may be blocked in the approval pause), every
    REPORT_EVERY_S: logs the delay, keeps the "sync-delay" artifact current, emits a Prefect event
    with the delay and the oplog window left, and raises or clears the delay and oplog-window alarms
    (a Prefect event and a Slack message each). If the sync fails while the run waits for approval,
    it ends the wait (approve: false, with the reason) so that the failure surfaces."""

    def __init__(self, sync, spec: MigrationSpec, logger) -> None:
        self.sync, self.spec, self.logger = sync, spec, logger
        opts = spec.incremental_options
        self.threshold = opts.ready_delay_s
        self.phase = "catching up"
        self.paused_run: str | None = None
        self.window_left_s: float | None = None
        self.delay_alarm = (ThresholdAlarm(opts.delay_alarm_s, opts.delay_alarm_for_s)
                            if opts.delay_alarm_s is not None else None)
        self.window_alarm = ThresholdAlarm(opts.oplog_window_alarm_s, above=False)
        self.resource = {"prefect.resource.id": f"mongo-migrate.migration.{spec.digest()}",
                         "prefect.resource.name": f"{spec.source.display()} -> {spec.destination.display()}"}
        self._window_read = 0.0
        self._stop = threading.Event()
        self._last_events = sync.events_applied
        self._last_time = time.monotonic()
        self.rate = 0.0
        self.artifact_id = create_markdown_artifact(
            key=DELAY_ARTIFACT, markdown=self.markdown(), description="Incremental sync delay")
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        daemon=True, name="sync-reporter")
        self._thread.start()

    def line(self) -> str:
        cap = limiter(self.spec).current(SYNC)
        return (f"sync delay: {format_delay(self.sync.delay_s, self.threshold)}; "
                f"{self.sync.events_applied:,} changes applied ({self.rate:,.0f}/s"
                + (f", load cap {cap.describe()}" if cap else "") + "); "
                f"oplog window left {format_duration(self.window_left_s)}; {self.phase}")

    def _measure_rate(self) -> None:
        now = time.monotonic()
        self.rate = (self.sync.events_applied - self._last_events) / max(now - self._last_time, 1e-6)
        self._last_events, self._last_time = self.sync.events_applied, now

    def markdown(self) -> str:
        delay = self.sync.delay_s
        alarm = "off" if self.delay_alarm is None else (
            f"RAISED (over {format_duration(self.delay_alarm.threshold)} since "
            f"{_clock(self.delay_alarm.past_since)})" if self.delay_alarm.raised
            else f"at {format_duration(self.delay_alarm.threshold)} for {format_duration(self.delay_alarm.for_s)}")
        return "\n".join([
            f"# Sync delay: {format_delay(delay, self.threshold)}",
            "",
            "| | |", "|---|---|",
            f"| delay (s) | {'-' if delay is None else f'{delay:.1f}'} |",
            f"| ready for cutover at | ≤ {self.threshold:g} s |",
            f"| phase | {self.phase} |",
            f"| changes applied | {self.sync.events_applied:,} ({self.sync.ddl_applied} DDL) |",
            f"| applied up to cluster time | {self.sync.position_time or '-'} |",
            f"| oplog window left | {format_duration(self.window_left_s)} (at the source's current write "
            f"rate; warning under {format_duration(self.window_alarm.threshold)}) |",
            f"| delay alarm | {alarm} |",
            f"| updated | {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC |",
        ])

    def update(self) -> None:
        self._read_oplog_window()
        self._measure_rate()
        line = self.line()
        self.logger.info(line)
        _tell_watchers("sync_progress", line, ready=self.phase.startswith("ready for cutover"))
        self._emit(SYNC_STATUS_EVENT)
        self._check_alarms()
        try:
            with get_client(sync_client=True) as client:
                client.update_artifact(self.artifact_id, ArtifactUpdate(data=self.markdown()))
        except Exception as exc:  # noqa: BLE001 - the UI's copy of the delay is not worth failing for
            self.logger.debug("could not update the sync-delay artifact: %s", exc)

    def _read_oplog_window(self) -> None:
        position = self.sync.position_time
        if position is None or time.monotonic() - self._window_read < OPLOG_WINDOW_EVERY_S:
            return
        self._window_read = time.monotonic()
        try:
            self.window_left_s = oplog_window_left_s(self.spec.source.resolve(), position)
        except PyMongoError as exc:
            self.logger.debug("oplog window not read: %s", exc)

    def _check_alarms(self) -> None:
        now = time.time()
        delay = self.sync.delay_s
        if self.delay_alarm is not None:
            change = self.delay_alarm.observe(delay, now)
            if change == "raised":
                since = _clock(self.delay_alarm.past_since)
                self._alarm(DELAY_ALARM_EVENT, ":warning: Sync behind",
                            f"the sync is {format_duration(delay)} behind since {since} (alarm over "
                            f"{format_duration(self.delay_alarm.threshold)})")
            elif change == "cleared":
                self._alarm(DELAY_RECOVERED_EVENT, ":white_check_mark: Sync caught up again",
                            f"the sync is {format_delay(delay, self.threshold)}, under the "
                            f"{format_duration(self.delay_alarm.threshold)} alarm again")
        if self.window_alarm.observe(self.window_left_s, now) == "raised":
            self._alarm(OPLOG_WINDOW_LOW_EVENT, ":hourglass: Oplog window low",
                        f"at the source's current write rate, its oplog overwrites the sync's position "
                        f"in {format_duration(self.window_left_s)} (warning under "
                        f"{format_duration(self.window_alarm.threshold)}): then the migration must start "
                        "over. Give the source a bigger oplog (replSetResizeOplog) or lower its writes.")

    def _alarm(self, event: str, title: str, detail: str) -> None:
        self.logger.warning("%s: %s", title.split(" ", 1)[1], detail)
        self._emit(event, detail=detail)
        notify_sync_alarm(self.spec, title, detail, flow_run_url())  # never raises

    def _emit(self, event: str, **extra) -> None:
        try:
            emit_event(event=event, resource=self.resource, payload={
                "delay_s": self.sync.delay_s, "oplog_window_left_s": self.window_left_s,
                "changes_applied": self.sync.events_applied, "phase": self.phase, **extra})
        except Exception as exc:  # noqa: BLE001 - events are for watching, never worth failing for
            self.logger.debug("could not emit %s: %s", event, exc)

    def _loop(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            if self.sync.error is not None and self.paused_run:
                self._withdraw(f"the sync failed: {self.sync.error}")
            self.update()

    def _withdraw(self, reason: str) -> None:
        run, self.paused_run = self.paused_run, None
        try:
            resume_flow_run(UUID(run), run_input={"approve": False, "note": reason[:500]})
        except Exception as exc:  # noqa: BLE001 - already resumed by a person
            self.logger.debug("could not end the approval wait: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.update()


def _clock(wall: float | None) -> str:
    return "-" if wall is None else f"{datetime.fromtimestamp(wall, timezone.utc):%H:%M} UTC"
