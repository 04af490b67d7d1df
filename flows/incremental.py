"""The `incremental-sync` subflow: keep the destination in step, wait for approval, cut over.

The sync (tasks/sync/engine.py `ChangeSync`) runs in a background thread for the whole subflow, because
the approval pause blocks the flow's own thread: while the run waits for a person, changes keep flowing
and the delay stays current (flows/progress.py `SyncReporter`: logged every few seconds, kept in the
markdown artifact "sync-delay", sent as Prefect events, and the delay and oplog-window alarms).
"""
from __future__ import annotations

import contextvars
import threading
import time
from typing import Literal
from uuid import UUID

from prefect import get_run_logger, unmapped
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.runtime import flow_run
from prefect.states import Crashed
from pydantic import BaseModel
from pymongo import ReturnDocument

from mongo_migrate.blocks.errors import CutoverVerificationFailed, OplogWindowExceeded
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.flows.approval import SYNC_FLOW_NAME, tell_approval_listeners, wait_for_approval
from mongo_migrate.flows.progress import REPORT_EVERY_S, SyncReporter
from mongo_migrate.flows.spec_flow import spec_flow
from mongo_migrate.tasks.cutover import (UNBLOCK_HINT, CollectionCheck, abandon_run_task, block_source_writes_task,
                                         check_collection_task, drain_point_task, forget_deferred_unique,
                                         pending_unique, recopy_collection_task, source_writes_blocked,
                                         unblock_source_writes_task)
from mongo_migrate.tasks.namespaces import MigrationPlan, plan_namespaces_task
from mongo_migrate.tasks.schema import convert_to_unique_task
from mongo_migrate.tasks.state import sync_state_collection
from mongo_migrate.tasks.sync.engine import ChangeSync
from mongo_migrate.tasks.sync.events import format_delay
from mongo_migrate.tasks.sync.position import source_cluster_time
from mongo_migrate.tasks.verify import verify_collection_task


class SyncReport(BaseModel):
    status: Literal["cut_over", "approval_timeout", "declined"]
    note: str = ""
    events_applied: int
    ddl_applied: int
    batches: int
    delay_s: float | None
    writes_blocked: bool = False
    write_block_detail: str = ""
    drained_to: str | None = None
    checks: list[CollectionCheck] = []
    plan: MigrationPlan | None = None  # the selected collections at cutover (DDL may have changed them)
    seconds: float

    def describe(self) -> str:
        if self.status == "approval_timeout":
            return ("no cutover: approval timed out; the sync position is saved, run the spec again to "
                    "continue the sync")
        if self.status == "declined":
            return ("no cutover: declined" + (f" ({self.note})" if self.note else "")
                    + "; the sync position is saved, run the spec again to continue the sync")
        return (f"cut over at cluster time {self.drained_to}: {self.events_applied:,} changes applied, "
                f"{len(self.checks)} collections checked (counts and {sum(c.sampled for c in self.checks)} "
                f"sampled documents equal); source writes "
                + ("blocked" if self.writes_blocked else "not blocked by mongo-migrate"))


def _mark_sync_started(spec: MigrationSpec, run_id: str | None, parent_id: str | None) -> dict:
    """Record this subflow run on the sync state; returns the state as it was (earlier runs' ids)."""
    return sync_state_collection(spec).find_one_and_update(
        {"_id": spec.digest()},
        {"$set": {"sync_flow_run_id": run_id, "parent_flow_run_id": parent_id,
                  "copy_finished_at": source_cluster_time(spec), "status": "syncing"}},
        return_document=ReturnDocument.BEFORE,
    ) or {}


def _mark_sync_status(spec: MigrationSpec, status: str) -> None:
    sync_state_collection(spec).update_one({"_id": spec.digest()}, {"$set": {"status": status}})


def _supersede(previous: dict, current: str | None, logger) -> None:
    """An earlier run of this spec that did not end (its process was killed) is marked Crashed, so
    that it no longer shows as waiting for approval."""
    stale = {previous.get("sync_flow_run_id"), previous.get("parent_flow_run_id")} - {None, current}
    if not stale:
        return
    try:
        with get_client(sync_client=True) as client:
            for run_id in stale:
                run = client.read_flow_run(UUID(run_id))
                if run.state is not None and not run.state.is_final():
                    client.set_flow_run_state(run.id, Crashed(
                        message=f"superseded by flow run {current}: the process running it is gone"),
                        force=True)
                    logger.info("earlier flow run %s (%s) of this spec marked crashed", run.name, run_id)
    except Exception as exc:  # noqa: BLE001 - tidying the UI must not stop the sync
        logger.warning("could not mark earlier flow runs of this spec as crashed: %s", exc)


def _notify_ready(spec: MigrationSpec, delay: float, logger) -> None:
    from mongo_migrate.tasks.notify import flow_run_url, notify_ready_for_cutover

    try:
        notify_ready_for_cutover(spec, delay, flow_run_url())
    except Exception as exc:  # noqa: BLE001 - a notification never stops the migration
        logger.warning("could not send 'ready for cutover': %s", exc)


def _wait_until_ready(sync: ChangeSync, worker: threading.Thread, threshold: float) -> float:
    while True:
        if sync.error is not None:
            raise sync.error
        if not worker.is_alive():
            raise RuntimeError("the sync stopped unexpectedly")
        delay = sync.delay_s
        # not before the stream's first reply: until then the delay is the saved position's age, and a
        # sync stopped then (approval timeout, declined) would have no position of its own to save
        if delay is not None and delay <= threshold and sync.stream_answered:
            return delay
        time.sleep(0.2)


def _with_document_ids(spec: MigrationSpec, plan: MigrationPlan, check: CollectionCheck) -> str:
    """A failed cutover check, with the documents that differ named: the collection is verified whole
    (only on this failure path; the source is still), so the error says which _ids to look at."""
    found = next((p for p in plan.data_plans if p.source_ns == check.source_ns and p.kind == "collection"), None)
    named = ""
    if found is not None:
        try:
            named = verify_collection_task(spec, found, recheck_delay_s=0).document_differences()
        except Exception as exc:  # noqa: BLE001 - the check's own finding is the error to report
            get_run_logger().warning("could not name the documents that differ in %s: %s", check.target_ns, exc)
    return f"{check.describe()}: {named}" if named else check.describe()


def _approval_description(run_id: str | None, sync: ChangeSync, spec: MigrationSpec) -> str:
    blocks = spec.incremental_options.block_source_writes_at_cutover
    return "\n".join([
        "**Ready for cutover.** The destination is "
        f"{format_delay(sync.delay_s, spec.incremental_options.ready_delay_s)}; changes keep flowing "
        "while this waits (see the artifact `sync-delay`).",
        "",
        "Approving " + ("blocks user writes on the source" if blocks else
                        "means you stop the application's writes to the source now")
        + ", drains the last changes, checks counts and a sample of documents, and ends the sync.",
        "",
        f"From a terminal: `mongo-migrate approve {run_id}`",
    ])


@spec_flow(name=SYNC_FLOW_NAME, description="Apply the source's changes until cutover is approved, then cut over.")
def incremental_sync(spec: MigrationSpec, plan: MigrationPlan) -> SyncReport:
    logger = get_run_logger()
    started = time.monotonic()
    opts = spec.incremental_options
    run_id = flow_run.get_id()
    previous = _mark_sync_started(spec, run_id, flow_run.get_parent_flow_run_id())
    _supersede(previous, run_id, logger)
    if source_writes_blocked(spec):
        logger.warning("user writes on the source are blocked (setUserWriteBlockMode), as a cutover that was "
                       "interrupted leaves them: the application cannot write to the source until this "
                       "cutover is approved, or until they are unblocked: %s", UNBLOCK_HINT)
    timeseries = [p.source_ns for p in plan.data_plans if p.kind == "timeseries"]
    if timeseries:
        logger.warning("time-series collections have no change events; they are copied again at "
                       "cutover: %s", ", ".join(timeseries))

    # a rename that happened while the full copy ran may have cut that copy short: copy it again
    sync = ChangeSync(spec, logger=logger, recopy_renames_before=source_cluster_time(spec))
    worker = threading.Thread(target=contextvars.copy_context().run, args=(sync.run_recording_failure,),
                              daemon=True, name="incremental-sync")
    worker.start()
    reporter = SyncReporter(sync, spec, logger)

    def report(status: str, **extra) -> SyncReport:
        return SyncReport(status=status, events_applied=sync.events_applied, ddl_applied=sync.ddl_applied,
                          batches=sync.batches, delay_s=sync.delay_s,
                          seconds=round(time.monotonic() - started, 3), **extra)

    def end_sync() -> None:
        sync.stop()
        worker.join()
        if sync.error is not None:
            raise sync.error

    try:
        delay = _wait_until_ready(sync, worker, opts.ready_delay_s)
        reporter.phase = "ready for cutover: waiting for approval"
        reporter.update()
        logger.info("ready for cutover (%s): approve in the Prefect UI (resume this flow run) or run "
                    "`mongo-migrate approve %s`", format_delay(delay, opts.ready_delay_s), run_id)
        _notify_ready(spec, delay, logger)
        tell_approval_listeners(run_id, delay)
        reporter.paused_run = run_id
        try:
            approval = wait_for_approval(_approval_description(run_id, sync, spec), opts.approval_timeout_s,
                                         lambda: sync.error, logger)
        except FlowPauseTimeout:
            reporter.paused_run = None
            logger.warning("no approval within %d s: the sync stops with its position saved; run the "
                           "spec again to continue it", opts.approval_timeout_s)
            reporter.phase = "stopped: approval timed out"
            end_sync()
            _mark_sync_status(spec, "approval_timeout")
            return report("approval_timeout")
        reporter.paused_run = None
        if sync.error is not None:
            raise sync.error
        if not approval.approve:
            logger.warning("cutover declined%s: the sync stops with its position saved",
                           f" ({approval.note})" if approval.note else "")
            reporter.phase = "stopped: cutover declined"
            end_sync()
            _mark_sync_status(spec, "declined")
            return report("declined", note=approval.note)

        logger.info("cutover approved%s", f": {approval.note}" if approval.note else "")
        reporter.phase = "cutover: draining"
        block = block_source_writes_task(spec)
        (logger.info if block.blocked else logger.warning)("cutover: %s", block.detail)
        try:
            point = drain_point_task(spec)
            while not sync.wait_until_applied(point.timestamp, timeout_s=REPORT_EVERY_S):
                logger.info("cutover: draining up to cluster time %s", point.text())
            end_sync()
            logger.info("cutover: every change up to cluster time %s is applied", point.text())
            reporter.phase = "cutover: verifying"
            final_plan = plan_namespaces_task(spec)
            for p in final_plan.data_plans:
                if p.kind == "timeseries":
                    n = recopy_collection_task(spec, (p.source_db, p.source_name), (p.target_db, p.target_name))
                    logger.info("cutover: copied time-series %s again (%d buckets)", p.source_ns, n)
            # no change is applied any more: the unique indexes built without `unique` after the copy
            # can be made unique now (a duplicate left would fail here, with its _ids)
            if pending_unique(spec):
                futures = convert_to_unique_task.map(unmapped(spec), final_plan.data_plans)
                converted = [f"{p.target_ns}/{name}" for p, f in zip(final_plan.data_plans, futures)
                             for name in f.result()]
                forget_deferred_unique(spec)
                logger.info("cutover: made unique: %s", ", ".join(converted) or "-")
            checks = [f.result() for f in check_collection_task.map(
                unmapped(spec), final_plan.data_plans, unmapped(opts.verify_sample_docs))]
            bad = [c for c in checks if not c.ok]
            if bad:
                hint = "" if block.blocked else (
                    " (was the source still written? stop the application's writes before approving, "
                    "or set incremental_options.block_source_writes_at_cutover)")
                raise CutoverVerificationFailed("cutover check found differences: " + "; ".join(
                    _with_document_ids(spec, final_plan, c) for c in bad[:5]) + hint)
        except BaseException:
            if block.blocked:
                unblock_source_writes_task(spec)
                logger.warning("cutover failed: user writes on the source are unblocked again")
            raise
        _mark_sync_status(spec, "cut_over")
        reporter.phase = "cut over: sync ended"
        result = report("cut_over", note=approval.note, writes_blocked=block.blocked,
                        write_block_detail=block.detail, drained_to=point.text(), checks=checks,
                        plan=final_plan)
        logger.info(result.describe())
        return result
    except OplogWindowExceeded as exc:
        abandon_run_task(spec, str(exc))
        raise
    finally:
        sync.stop()
        worker.join(30)
        reporter.stop()
