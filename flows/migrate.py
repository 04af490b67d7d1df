"""The `migrate` and `precheck` flows: the console's steps, composed."""
from __future__ import annotations

import queue
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack

from prefect import unmapped
from prefect.runtime import flow_run
from pydantic import BaseModel

from mongo_migrate.blocks.errors import PrecheckFailed, VerificationDiffers
from mongo_migrate.blocks.spec import MigrationSpec, forget_loaded_blocks
from mongo_migrate.flows import artifacts
from mongo_migrate.flows.incremental import SyncReport, incremental_sync
from mongo_migrate.flows.progress import PROGRESS_EVERY_S, CopyProgress
from mongo_migrate.flows.runners import range_runner
from mongo_migrate.flows.spec_flow import spec_flow
from mongo_migrate.flows.throttle import VariableWatcher
from mongo_migrate.flows.verify import VerificationReport, verify_plan
from mongo_migrate.tasks.connect import check_connectivity_task
from mongo_migrate.tasks.copy import CopyStats, copy_collection_ranges_task, copy_units, prepare_copy_task
from mongo_migrate.tasks.cutover import record_deferred_unique_task
from mongo_migrate.tasks.namespaces import CollectionPlan, MigrationPlan
from mongo_migrate.tasks.notify import flow_run_url, notify_finished, notify_migration_failed, notify_precheck_failed
from mongo_migrate.tasks.precheck import PrecheckReport, list_selected_objects_task, run_prechecks_task
from mongo_migrate.tasks.schema import build_indexes_of_task, create_views_task
from mongo_migrate.tasks.state import RunAlive, finish_run_task, start_run_task
from mongo_migrate.tasks.sync.position import save_start_point_task
from mongo_migrate.tasks.verify import CollectionVerification


class PrecheckOutcome(BaseModel):
    report: PrecheckReport
    plan: MigrationPlan | None


class CollectionSummary(BaseModel):
    source_ns: str
    target_ns: str
    kind: str
    source_docs: int
    target_docs: int
    copied_docs: int
    bytes: int
    indexes: int
    skipped: int = 0  # refused by the destination, left out as on_document_error: skip allows


class MigrationSummary(BaseModel):
    spec_digest: str
    source: str
    destination: str
    resumed: bool
    collections: list[CollectionSummary]
    views: list[str]
    docs: int
    bytes: int
    seconds: float
    copy_seconds: float
    index_seconds: float
    # wall seconds of each step, in the order they ran: precheck, prepare (the run's record), copy (the
    # targets created and ranges cut, then copied; a collection's indexes start as its copy ends), indexes
    # (the builds still running after the copy), sync, verify
    phases: dict[str, float] = {}
    counts_match: bool
    sync: SyncReport | None = None  # incremental: the sync and its cutover

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.copy_seconds if self.copy_seconds else 0.0


def precheck_table(report: PrecheckReport) -> list[dict]:
    return [i.model_dump() for i in report.items]


@spec_flow(name="precheck", description="Connectivity and precheck items; writes nothing.")
def precheck(spec: MigrationSpec) -> PrecheckOutcome:
    forget_loaded_blocks()  # endpoint and Slack blocks are loaded once per run (blocks/spec.py)
    return precheck_steps(spec)


def precheck_steps(spec: MigrationSpec) -> PrecheckOutcome:
    """The precheck's items as tasks of the calling flow run: the `precheck` flow's body, and the first
    step of `migrate`, where it is not a subflow for the reason full_copy gives (a subflow cost ~1 s
    of a 20,000-document run on a running server, 2-3 s on the temporary one)."""
    src_f = check_connectivity_task.submit(spec.source, "source")
    dst_f = check_connectivity_task.submit(spec.destination, "destination")
    source, destination = src_f.result(), dst_f.result()
    listing = list_selected_objects_task(spec) if source.reachable else None
    plan = listing.plan if listing else None
    # the check items, side by side in one task (tasks/precheck/: ITEMS)
    report = run_prechecks_task(spec, source, destination, plan, listing.error if listing else None)
    artifacts.table("precheck", precheck_table(report), f"Precheck: {'passed' if report.passed else 'FAILED'}")
    if not report.passed:
        # always sent (not switchable); links to the top-level run, the migration when there is one
        notify_precheck_failed(spec, report, flow_run_url())
    return PrecheckOutcome(report=report, plan=plan)


def full_copy(spec: MigrationSpec, plans: list[CollectionPlan],
              collections_copied: Callable[[list[CollectionPlan]], None] = lambda plans: None) -> list[CopyStats]:
    """Create the target collections, then copy every selected collection, big ones range by range,
    `parallel_workers` ranges at once; `collections_copied(plans)` is called (on the calling thread)
    with the collections whose last range a copy task has just ended well, while the others still copy.

    The ranges are tasks of the calling flow run, on the task runner of copy_options.runner (a thread
    pool sized by the spec, or Dask workers: flows/runners.py). (A subflow would do the sizing too, but
    costs seconds per run: its tracking task run is a write that a local SQLite server often answers 503
    "database is locked", and the client retries it after 2 s; its heartbeat thread takes up to another
    second to stop.)"""
    # the targets created (with their options) and the ranges cut, in one task (tasks/copy.py says why)
    ranges = prepare_copy_task(spec, plans)
    with range_runner(spec) as runner:
        # biggest first, so that the last workers to finish are not stuck with a giant; small
        # collections several to a task (tasks/copy.py copy_units)
        units = copy_units(ranges, spec)
        futures = runner.map(copy_collection_ranges_task, {"spec": unmapped(spec), "rngs": units})
        # "full-copy-progress" and a bar per collection, once the ranges are on their way: the bars'
        # API writes (flows/artifacts.py) never hold up the copy's start
        progress = CopyProgress(spec, ranges)
        return _settle_ranges(futures, units, progress, collections_copied)


def _settle_ranges(futures, units, progress: CopyProgress,
                   collections_copied: Callable[[list[CollectionPlan]], None] = lambda plans: None) -> list[CopyStats]:
    """Wait for every copy unit (its ranges) before failing, so that each range has saved its
    checkpoint; move the progress as units end and every PROGRESS_EVERY_S; call `collections_copied`
    with the plans of the collections whose ranges have all ended well, as each unit ends.

    Not prefect.futures.wait(timeout=...): on the main thread (the command's flow runs there) it arms
    a process alarm (SIGALRM) for its timeout, and an alarm that fires while the wait is inside its
    lock raised "RuntimeError: release unlocked lock" and failed a migration (seen at 20,000
    documents). Each future puts itself on a queue when it ends, on any task runner."""
    unit_of = dict(zip(futures, units))
    ended: queue.SimpleQueue = queue.SimpleQueue()
    for fut in futures:
        fut.add_done_callback(ended.put)
    results: list[CopyStats] = []
    errors: list[BaseException] = []
    ranges_left = Counter(r.plan.source_ns for unit in units for r in unit)
    failed: set[str] = set()
    left = len(futures)
    shown = time.monotonic()
    while left:
        try:
            fut = ended.get(timeout=max(0.0, shown + PROGRESS_EVERY_S - time.monotonic()))
        except queue.Empty:
            fut = None
        if fut is not None:
            left -= 1
            unit = unit_of[fut]
            try:
                results += fut.result()
            except BaseException as exc:  # noqa: BLE001 - reported below, after all ranges settle
                errors.append(exc)
                failed.update(r.plan.source_ns for r in unit)
            copied = []
            for rng in unit:
                ns = rng.plan.source_ns
                progress.range_finished(ns)
                ranges_left[ns] -= 1
                if not ranges_left[ns] and ns not in failed:
                    copied.append(rng.plan)
            if copied:
                collections_copied(copied)
        if not left or time.monotonic() - shown >= PROGRESS_EVERY_S:
            progress.update()
            shown = time.monotonic()
    if errors:
        raise errors[0]
    return results


@spec_flow(name="migrate", description="Full (and incremental) migration of a MongoDB deployment.")
def migrate(spec: MigrationSpec) -> MigrationSummary:
    forget_loaded_blocks()  # endpoint and Slack blocks are loaded once per run (blocks/spec.py)
    try:
        with artifacts.artifacts_written_behind():  # all written when the run ends (flows/artifacts.py)
            summary = migrate_steps(spec)
    except PrecheckFailed:
        raise  # the precheck has told Slack already
    except Exception as exc:
        # Slack is told, within a bounded time and without ever raising, then the run fails as it would
        text = str(exc).strip().splitlines()
        notify_migration_failed(spec, (text[0] if text else type(exc).__name__)[:500], flow_run_url())
        raise
    if summary.sync is None or summary.sync.status == "cut_over":
        # an incremental run that ended without cutover (approval timed out, declined) is not finished
        notify_finished(spec, summary, flow_run_url())
    return summary


def migrate_steps(spec: MigrationSpec) -> MigrationSummary:
    """The migration's steps in order; the `migrate` flow around them tells Slack how it ended."""
    phases = PhaseClock()
    outcome = precheck_steps(spec)
    phases.lap("precheck")
    if not outcome.report.passed or outcome.plan is None:
        raise PrecheckFailed(outcome.report)
    plan = outcome.plan
    run = start_run_task(spec, plan, str(flow_run.get_id() or ""))
    if spec.incremental:
        # before the copy reads anything: every write from here on is in the change stream
        save_start_point_task(spec, run.resumed)

    phases.lap("prepare")

    with ExitStack() as keep:
        # the run's process says it is alive on the destination while it works (`mongo-migrate status`)
        keep.callback(RunAlive(spec).stop)
        # the load cap set from the Prefect UI, copied onto the destination while the run lasts
        keep.callback(VariableWatcher(spec).stop)
        if not spec.incremental:
            # the copy's task runner serves the verification too (a Dask cluster is started once); an
            # incremental run's sync may last days, and its verification starts one of its own
            keep.enter_context(range_runner(spec))
        return copy_to_verification(spec, outcome, run, plan, phases)


def copy_to_verification(spec: MigrationSpec, outcome: PrecheckOutcome, run, plan: MigrationPlan,
                         phases: PhaseClock) -> MigrationSummary:
    """migrate_steps from the full copy on."""
    data_plans = plan.data_plans
    # A collection's indexes are built as soon as its last range is copied, beside the ranges of the
    # collections still copying: the build reads only that collection, and a destination with cores to
    # spare builds it meanwhile instead of after the whole copy. Incremental: unique indexes are built
    # without `unique` and made unique at cutover, once the sync has settled the keys a copy of a live
    # source may hold twice for a moment (tasks/schema.py).
    index_futures = []
    try:
        stats = full_copy(spec, data_plans, collections_copied=lambda copied: index_futures.append(
            build_indexes_of_task.submit(spec, copied, spec.incremental)))
    except BaseException:
        for building in index_futures:  # a failed copy leaves no index build running behind it
            building.wait()
        raise
    phases.lap("copy")

    views = create_views_task(spec, plan.views)
    index_results = [r for f in index_futures for r in f.result()]
    indexes = {r.target_ns: len(r.built) for r in index_results}
    if spec.incremental:
        record_deferred_unique_task(spec, index_results)
    phases.lap("indexes")
    sync = None
    if spec.incremental:
        # the changes made since the start point, then until cutover (flows/incremental.py)
        sync = incremental_sync(spec, plan)
        phases.lap("sync")
        if sync.status != "cut_over":
            # no cutover (approval timed out or declined): nothing to verify yet; the sync position
            # is saved and the run stays unfinished, so running the spec again continues the sync
            return summarize(spec, run.resumed, plans=[], stats=stats, verified=None, indexes=indexes,
                             views=views, phases=phases, sync=sync)
        plan = sync.plan or plan  # collections may have been created, dropped or renamed meanwhile
        data_plans = plan.data_plans
    # the last step: counts, every document's bytes, options, indexes and views (flows/verify.py). A
    # full run's copy has digested the source as it read it; after a sync the source has moved on
    # since, and a resumed run's earlier share was read long ago: both sides are read again then
    fresh_copy = not spec.incremental and not run.resumed
    verification = verify_plan(spec, plan, copied=stats if fresh_copy else None)
    phases.lap("verify")
    if not spec.incremental:
        flag_emptied_sources(verification, outcome.report.source_docs)
    summary = summarize(spec, run.resumed, plans=data_plans, stats=stats, verified=verification.collections,
                        indexes=indexes, views=views, phases=phases, sync=sync)
    artifacts.markdown("migration-summary", summary_markdown(summary), "What was migrated")
    if not summary.counts_match:
        raise VerificationDiffers("verification found differences: " + verification.describe())
    finish_run_task(spec)
    return summary


class PhaseClock:
    """Wall seconds per step: each lap() closes the step that ran since the previous one."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.started = self._last = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def flag_emptied_sources(verification: VerificationReport, precheck_docs: dict[str, int]) -> None:
    """An empty target of an empty source is equal, but not a migration when the precheck counted
    documents there: the source was emptied or dropped while it ran. Full migrations only: an
    incremental sync replays deletes, so an emptied source is followed on purpose there."""
    for c in verification.collections:
        before = precheck_docs.get(c.source_ns, 0)
        if before and c.source_docs == 0 and c.target_docs == 0:
            c.problems.append(f"the source held {before:,} documents at the precheck and holds none "
                              "now, and none were copied: was it emptied or dropped during the migration?")


def summarize(spec: MigrationSpec, resumed: bool, *, plans: list[CollectionPlan], stats: list[CopyStats],
              verified: list[CollectionVerification] | None, indexes: dict[str, int], views: list[str],
              phases: PhaseClock, sync: SyncReport | None) -> MigrationSummary:
    """The summary of a run: per collection, what the copy moved and what verification counted
    (`verified` None: the run ended before verification, a sync that was not cut over)."""
    by_ns: dict[str, list[CopyStats]] = {}
    for s in stats:
        by_ns.setdefault(s.source_ns, []).append(s)
    count_by_ns = {c.source_ns: c for c in verified or []}
    rows = []
    for p in plans:
        c = count_by_ns[p.source_ns]
        rows.append(CollectionSummary(
            source_ns=p.source_ns, target_ns=p.target_ns, kind=p.kind,
            source_docs=c.source_docs, target_docs=c.target_docs,
            copied_docs=sum(s.docs for s in by_ns.get(p.source_ns, [])),
            bytes=sum(s.bytes for s in by_ns.get(p.source_ns, [])),
            indexes=indexes.get(p.target_ns, 0), skipped=getattr(c, "skipped", 0),
        ))
    return MigrationSummary(
        spec_digest=spec.digest(), source=spec.source.display(), destination=spec.destination.display(),
        resumed=resumed, collections=rows, views=views,
        docs=sum(r.copied_docs for r in rows) if plans else sum(s.docs for s in stats),
        bytes=sum(r.bytes for r in rows) if plans else sum(s.bytes for s in stats),
        seconds=round(time.monotonic() - phases.started, 3), copy_seconds=phases.laps.get("copy", 0.0),
        index_seconds=phases.laps.get("indexes", 0.0), phases=phases.laps,
        counts_match=verified is not None and all(c.equal for c in verified), sync=sync,
    )


def summary_markdown(s: MigrationSummary) -> str:
    lines = [
        f"# Migration {'(resumed) ' if s.resumed else ''}{s.source} -> {s.destination}",
        "",
        f"{s.docs:,} documents, {s.bytes / 1e6:,.1f} MB copied in {s.copy_seconds:.1f}s "
        f"({s.docs_per_s:,.0f} docs/s); total {s.seconds:.1f}s; counts "
        f"{'match' if s.counts_match else 'DIFFER'}.",
        "",
        "Steps: " + ", ".join(f"{name} {sec:.1f}s" for name, sec in s.phases.items()),
        "",
        "| source | target | kind | source docs | target docs | indexes |",
        "|---|---|---|---:|---:|---:|",
    ]
    lines += [f"| {c.source_ns} | {c.target_ns} | {c.kind} | {c.source_docs:,} | {c.target_docs:,} | "
              f"{c.indexes} |" for c in s.collections]
    if s.views:
        lines += ["", "Views: " + ", ".join(s.views)]
    return "\n".join(lines)
