"""The `verify` flow: compare every selected collection and view with its target.

Run on its own (`mongo-migrate verify SPEC`) or as the last step of `migrate`. The result is a table
artifact with key "verification".
"""
from __future__ import annotations

import time

from prefect import unmapped
from pydantic import BaseModel, computed_field

from mongo_migrate.blocks.errors import VerificationUnavailable
from mongo_migrate.blocks.spec import MigrationSpec, forget_loaded_blocks
from mongo_migrate.flows import artifacts
from mongo_migrate.flows.runners import range_runner
from mongo_migrate.flows.spec_flow import spec_flow
from mongo_migrate.tasks.connect import check_connectivity_task
from mongo_migrate.tasks.copy import CopyStats
from mongo_migrate.tasks.namespaces import MigrationPlan, plan_namespaces_task
from mongo_migrate.tasks.verify import RECHECK_DELAY_S, CollectionVerification, verify_collections_task


class VerificationReport(BaseModel):
    collections: list[CollectionVerification]
    seconds: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def equal(self) -> bool:
        return all(c.equal for c in self.collections)

    @property
    def unequal(self) -> list[CollectionVerification]:
        return [c for c in self.collections if not c.equal]

    def describe(self) -> str:
        """One line: what differs, or that nothing does."""
        if self.equal:
            docs = sum(c.source_docs for c in self.collections)
            return f"{len(self.collections)} collections and views equal ({docs:,} documents)"
        return "; ".join(c.describe() for c in self.unequal)


def verification_table(report: VerificationReport) -> list[dict]:
    return [
        {
            "source": c.source_ns, "target": c.target_ns, "kind": c.kind,
            "status": "equal" if c.equal else "DIFFERENT",
            "source docs": c.source_docs, "target docs": c.target_docs,
            "missing": c.missing, "extra": c.extra, "different": c.different, "skipped": c.skipped,
            "first differences": ", ".join(f"{d.kind} {d.id}" for d in c.differences[:10]),
            "problems": "; ".join(c.problems),
            "digest": c.source_digest if c.source_digest == c.target_digest
            else f"{c.source_digest} / {c.target_digest}",
        }
        for c in report.collections
    ]


def verification_text(report: VerificationReport) -> str:
    """The report for a terminal: one line per collection, then the differences and the verdict."""
    width = max((len(c.source_ns) for c in report.collections), default=10)
    lines = [f"{'source':<{width}}  {'target':<{width}}  {'documents':>12}  status"]
    for c in report.collections:
        docs = f"{c.source_docs:,}" if c.source_docs == c.target_docs else f"{c.source_docs:,}/{c.target_docs:,}"
        lines.append(f"{c.source_ns:<{width}}  {c.target_ns:<{width}}  {docs:>12}  "
                     f"{'equal' if c.equal else 'DIFFERENT'}")
    for c in report.unequal:
        lines.append(f"  {c.describe()}")
        lines += [f"    {d.kind:<9} _id {d.id}" for d in c.differences if d.kind != "skipped"]
    skipped = [(c, d) for c in report.collections for d in c.differences if d.kind == "skipped"]
    lines += [f"  skipped by on_document_error: {c.target_ns} _id {d.id}" for c, d in skipped]
    lines.append("verification: " + ("equal" if report.equal else "DIFFERENT"))
    return "\n".join(lines)


@spec_flow(name="verify", description="Compare the destination with the source: counts, document bytes, "
           "options, indexes, views.")
def verify(spec: MigrationSpec, plan: MigrationPlan | None = None,
           recheck_delay_s: float = RECHECK_DELAY_S) -> VerificationReport:
    forget_loaded_blocks()  # endpoint and Slack blocks are loaded once per run (blocks/spec.py)
    if plan is None:
        endpoints = [check_connectivity_task.submit(spec.source, "source"),
                     check_connectivity_task.submit(spec.destination, "destination")]
        problems = [info.problem for info in (f.result() for f in endpoints) if not info.reachable]
        if problems:
            raise VerificationUnavailable("; ".join(p or "unreachable" for p in problems))
        plan = plan_namespaces_task(spec)
        if plan.missing:
            raise VerificationUnavailable("selected but not on the source: " + ", ".join(plan.missing))
    return verify_plan(spec, plan, recheck_delay_s)


GROUPS_PER_WORKER = 4


def in_groups(items: list, groups: int) -> list[list]:
    """`items` in order, cut into at most `groups` runs of about equal length."""
    n = min(len(items), max(1, groups))
    size, extra = divmod(len(items), n) if n else (0, 0)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def verify_plan(spec: MigrationSpec, plan: MigrationPlan, recheck_delay_s: float = RECHECK_DELAY_S,
                copied: list[CopyStats] | None = None) -> VerificationReport:
    """Verify every collection and view of the plan, as tasks of the calling flow run (`verify`, or
    `migrate` as its last step: not a subflow, for the reason flows/migrate.py:full_copy gives).

    `copied`: the ranges a full run's copy read, with their digests (tasks/verify.py says how they
    spare a second read of the source)."""
    started = time.monotonic()
    # at most two range reads per copy worker at any time, however the collections are sized: a
    # collection alone gets every read, several share them (memory stays flat, see bench/verify.py)
    workers = spec.copy_options.parallel_workers
    at_once = max(1, min(workers, len(plan.data_plans)))
    scan_threads = max(2, 2 * workers // at_once)
    # in groups: a task run per collection cost more than verifying a small one (tasks/verify.py), and
    # with a few groups per worker a big collection does not hold many small ones up for long
    groups = in_groups(plan.collections, GROUPS_PER_WORKER * workers)
    copied_by_ns: dict[str, list[CopyStats]] = {}
    for stats in copied or []:
        copied_by_ns.setdefault(stats.source_ns, []).append(stats)
    with range_runner(spec) as runner:  # where the copy ran (copy_options.runner)
        futures = runner.map(verify_collections_task, {
            "spec": unmapped(spec), "plans": groups,
            "recheck_delay_s": unmapped(recheck_delay_s), "scan_threads": unmapped(scan_threads),
            "copied": [[copied_by_ns.get(p.source_ns, []) for p in group] for group in groups]})
        report = VerificationReport(collections=[c for f in futures for c in f.result()])
    report.seconds = round(time.monotonic() - started, 3)
    artifacts.table("verification", verification_table(report), "Verification: " + (
        "equal" if report.equal else f"{len(report.unequal)} collections DIFFER"))
    return report
