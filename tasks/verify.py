"""Step 6: check the destination against the source."""
from __future__ import annotations

from pydantic import BaseModel

from blocks.mongo import open_client
from blocks.spec import MigrationSpec
from tasks.common import step
from tasks.namespaces import CollectionPlan


class CountCheck(BaseModel):
    source_ns: str
    target_ns: str
    source_docs: int
    target_docs: int

    @property
    def equal(self) -> bool:
        return self.source_docs == self.target_docs


def count_check(spec: MigrationSpec, plan: CollectionPlan) -> CountCheck:
    """Exact document counts on both sides (time-series count measurements, not buckets)."""
    src = open_client(spec.source.resolve())[plan.source_db][plan.source_name]
    dst = open_client(spec.destination.resolve())[plan.target_db][plan.target_name]
    return CountCheck(
        source_ns=plan.source_ns, target_ns=plan.target_ns,
        source_docs=src.count_documents({}), target_docs=dst.count_documents({}),
    )


count_check_task = step(count_check)
