"""Progress artifacts of the full copy: "full-copy-progress" for the whole copy, one per collection.

They move while a collection copies, not only when one of its ranges ends: every few seconds the
flow reads the target collections' document counts (a metadata read, cheap for the server) and sets
each bar to copied / expected documents. A bar reaches 100 only when every range of its collection
has finished. Progress is best-effort: a count that cannot be read leaves a bar where it was.
"""
from __future__ import annotations

import logging
from collections import Counter
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pymongo.errors import PyMongoError

from blocks.mongo import open_client
from blocks.spec import MigrationSpec

log = logging.getLogger("mongo_migrate.progress")

PROGRESS_EVERY_S = 2.0
FULL_COPY_KEY = "full-copy-progress"
# one bar per collection for the biggest ones; the rest are in the overall bar
MAX_COLLECTION_BARS = 50


class CopyProgress:
    """Creates the progress artifacts; `range_finished(ns)` as each range ends, `update()` every
    PROGRESS_EVERY_S (and once at the end)."""

    def __init__(self, spec: MigrationSpec, ranges: list) -> None:
        self.spec = spec
        self.plans = {r.plan.source_ns: r.plan for r in ranges}
        self.expected: Counter[str] = Counter()
        self.remaining: Counter[str] = Counter()
        for r in ranges:
            self.expected[r.plan.source_ns] += r.estimated_docs
            self.remaining[r.plan.source_ns] += 1
        self.copied: dict[str, int] = dict.fromkeys(self.plans, 0)
        self._destination = None
        total = sum(self.expected.values())
        start = 0.0 if ranges else 100.0  # nothing to copy is a finished copy
        self.overall = create_progress_artifact(
            start, key=FULL_COPY_KEY,
            description=f"Full copy: {len(self.plans)} collection{'' if len(self.plans) == 1 else 's'}, "
            f"about {total:,} documents",
        )
        self.shown: dict[UUID, float] = {self.overall: start}
        biggest = sorted(self.plans, key=lambda ns: -self.expected[ns])[:MAX_COLLECTION_BARS]
        self.bars: dict[str, UUID] = {}
        for ns in biggest:
            plan = self.plans[ns]
            self.bars[ns] = create_progress_artifact(
                0.0, description=f"Full copy of {ns} -> {plan.target_ns} "
                f"(about {self.expected[ns]:,} documents)",
            )
            self.shown[self.bars[ns]] = 0.0

    def range_finished(self, source_ns: str) -> None:
        self.remaining[source_ns] -= 1

    def update(self) -> None:
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
        for ns, artifact in self.bars.items():
            self._show(artifact, self._percent([ns]))
        self._show(self.overall, self._percent(list(self.plans)))

    def _percent(self, names: list[str]) -> float:
        if all(self.remaining[ns] <= 0 for ns in names):
            return 100.0
        expected = sum(self.expected[ns] for ns in names)
        if not expected:
            return 0.0
        return min(99.9, 100.0 * sum(self.copied[ns] for ns in names) / expected)

    def _show(self, artifact: UUID, percent: float) -> None:
        percent = round(percent, 1)
        if percent != self.shown[artifact]:
            update_progress_artifact(artifact, percent)
            self.shown[artifact] = percent

    def _target(self, plan):
        if self._destination is None:
            self._destination = open_client(self.spec.destination.resolve())
        return self._destination[plan.target_db][plan.target_data_collection]
