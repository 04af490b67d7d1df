"""What the migration remembers on the destination, in the `mongo_migrate_meta` database.

`runs` holds one document per spec digest (started, finished, the flow run); `copy_ranges` the _id
ranges each collection was cut into; `copy_units` the checkpoint of every copy range;
`skipped_documents` the documents the destination refused under `on_document_error: skip`. A rerun of
an unfinished spec continues from them; a fresh run of the spec clears them first.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from pydantic import BaseModel

from blocks.mongo import open_client
from blocks.spec import META_DATABASE, MigrationSpec
from tasks.common import step
from tasks.copy import COPY_RANGES, COPY_UNITS, SKIPPED_DOCUMENTS
from tasks.namespaces import MigrationPlan
from tasks.precheck import RUNS, resumable_run


class RunState(BaseModel):
    digest: str
    resumed: bool


def start_run(spec: MigrationSpec, plan: MigrationPlan, flow_run_id: str | None) -> RunState:
    """Record the run; a fresh run (not a resumed one) first clears stale state and, when the spec
    says so, drops target collections that hold data."""
    dest = open_client(spec.destination.resolve())
    meta = dest[META_DATABASE]
    digest = spec.digest()
    resumed = resumable_run(spec) is not None
    if not resumed:
        meta[COPY_UNITS].delete_many({"_id": {"$regex": f"^{re.escape(digest)}:"}})
        meta[SKIPPED_DOCUMENTS].delete_many({"run": digest})
        meta[COPY_RANGES].delete_many({"_id": {"$regex": f"^{re.escape(digest)}:"}})
        if spec.copy_options.drop_existing_targets:
            # exactly the plan's targets, which the precheck listed; never the state database, admin
            # or local (the spec refuses mappings into them: this keeps it so if that ever slips)
            for p in plan.collections:
                if p.target_db in (META_DATABASE, "admin", "local"):
                    raise RuntimeError(f"refusing to drop {p.target_ns}: {p.target_db} is not a target database")
                dest[p.target_db].drop_collection(p.target_name)
    now = datetime.now(timezone.utc)
    meta[RUNS].update_one(
        {"_id": digest},
        {"$set": {"flow_run_id": flow_run_id, "source": spec.source.display(),
                  "destination": spec.destination.display(), "finished": False, "updated": now},
         "$setOnInsert": {"started": now}},
        upsert=True,
    )
    return RunState(digest=digest, resumed=resumed)


def finish_run(spec: MigrationSpec) -> None:
    dest = open_client(spec.destination.resolve())
    dest[META_DATABASE][RUNS].update_one(
        {"_id": spec.digest()}, {"$set": {"finished": True, "updated": datetime.now(timezone.utc)}}
    )


start_run_task = step(start_run)
finish_run_task = step(finish_run)
