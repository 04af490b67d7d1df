"""Step 5, the end: the cutover after approval, as tasks the incremental-sync flow composes.

Block user writes on the source (when the spec allows it and the account may), take the drain point
(the source's cluster time once writes have stopped), copy time-series collections again (they have no
change events), and check every collection after the drain: exact counts and a sample of documents
compared byte for byte. Unblock the source's writes when the cutover fails; mark the run abandoned when
its sync position left the oplog.
"""
from __future__ import annotations

import logging

from bson.timestamp import Timestamp
from pydantic import BaseModel
from pymongo.errors import OperationFailure, PyMongoError

from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import RAW, UNAUTHORIZED, step, to_ejson
from mongo_migrate.tasks.namespaces import CollectionPlan
from mongo_migrate.tasks.schema import IndexResult
from mongo_migrate.tasks.state import abandon_run, sync_state_collection
from mongo_migrate.tasks.sync.ddl import recopy_collection

log = logging.getLogger("mongo_migrate.cutover")

UNBLOCK_HINT = "db.adminCommand({setUserWriteBlockMode: 1, global: false})"


class WriteBlock(BaseModel):
    blocked: bool
    detail: str


def block_source_writes(spec: MigrationSpec) -> WriteBlock:
    """Block user writes on the source (setUserWriteBlockMode), if the spec allows it."""
    stop_writing = "stop the application's writes to the source now: writes after the approval may not be migrated"
    if not spec.incremental_options.block_source_writes_at_cutover:
        return WriteBlock(blocked=False, detail=stop_writing)
    try:
        open_client(spec.source.resolve()).admin.command("setUserWriteBlockMode", **{"global": True})
    except OperationFailure as exc:
        if exc.code == UNAUTHORIZED:
            why = "the source account may not block writes (it needs the setUserWriteBlockMode action)"
        else:
            why = f"writes could not be blocked on the source ({(exc.details or {}).get('errmsg', exc)})"
        return WriteBlock(blocked=False, detail=f"{why}: {stop_writing}")
    return WriteBlock(blocked=True, detail="user writes on the source are blocked; after switching the "
                      f"application over, unblock them if the source stays in use: {UNBLOCK_HINT}")


def unblock_source_writes(spec: MigrationSpec) -> None:
    """Undo `block_source_writes` (after a failed cutover, so the source can serve again)."""
    try:
        open_client(spec.source.resolve()).admin.command("setUserWriteBlockMode", **{"global": False})
    except PyMongoError as exc:
        log.warning("could not unblock writes on the source (%s): run %s", exc, UNBLOCK_HINT)


def source_writes_blocked(spec: MigrationSpec) -> bool | None:
    """Are user writes on the source blocked (setUserWriteBlockMode, 6.0+)? None when the server does
    not say (before 6.0) or cannot be asked (an account without serverStatus). A cutover that was interrupted
    after `block_source_writes` leaves them blocked: the application cannot write meanwhile."""
    try:
        mode = open_client(spec.source.resolve()).admin.command("serverStatus").get("repl", {}).get(
            "userWriteBlockMode")
    except PyMongoError:  # advisory: an account without serverStatus, a network blip
        return None
    return None if mode is None else mode == 2  # 1: writes allowed, 2: blocked


class DrainPoint(BaseModel):
    time: int
    inc: int

    @property
    def timestamp(self) -> Timestamp:
        return Timestamp(self.time, self.inc)

    def text(self) -> str:
        return f"{self.time}.{self.inc}"


def drain_point(spec: MigrationSpec) -> DrainPoint:
    """The source's cluster time now: the sync is drained when it has applied everything up to it.

    An oplog note (when the account may write one) moves the change stream past this point at once,
    even if nothing else is written; otherwise the source's periodic no-op does within seconds.
    """
    admin = open_client(spec.source.resolve()).admin
    try:
        reply = admin.command("appendOplogNote", data={"mongo-migrate": "cutover drain point"})
    except OperationFailure:
        reply = admin.command("ping")
    ts = reply["operationTime"]
    return DrainPoint(time=ts.time, inc=ts.inc)


class CollectionCheck(BaseModel):
    source_ns: str
    target_ns: str
    source_docs: int
    target_docs: int
    sampled: int
    differing: list[str] = []  # _ids (Extended JSON) of sampled documents that differ or are missing

    @property
    def ok(self) -> bool:
        return self.source_docs == self.target_docs and not self.differing

    def describe(self) -> str:
        parts = []
        if self.source_docs != self.target_docs:
            parts.append(f"{self.source_docs} documents on the source, {self.target_docs} on the destination")
        if self.differing:
            parts.append(f"{len(self.differing)} of {self.sampled} sampled documents differ "
                         f"(_id {', '.join(self.differing[:3])})")
        return f"{self.source_ns} -> {self.target_ns}: " + ("; ".join(parts) or "equal")


def check_collection(spec: MigrationSpec, plan: CollectionPlan, sample_docs: int) -> CollectionCheck:
    """Exact counts on both sides and `sample_docs` random source documents compared byte for byte
    with the destination's documents of the same _id."""
    src = open_client(spec.source.resolve())[plan.source_db].get_collection(plan.source_name, codec_options=RAW)
    dst = open_client(spec.destination.resolve())[plan.target_db].get_collection(
        plan.target_name, codec_options=RAW)
    check = CollectionCheck(source_ns=plan.source_ns, target_ns=plan.target_ns,
                            source_docs=src.count_documents({}), target_docs=dst.count_documents({}),
                            sampled=0)
    if plan.kind != "collection" or not sample_docs or not check.source_docs:
        return check  # time-series measurements have no stable _id to look up
    sample = list(src.aggregate([{"$sample": {"size": sample_docs}}]))
    wanted = {to_ejson(d["_id"]): d.raw for d in sample}
    found = {to_ejson(d["_id"]): d.raw for d in dst.find({"_id": {"$in": [d["_id"] for d in sample]}})}
    check.sampled = len(wanted)
    check.differing = sorted(k for k, raw in wanted.items() if found.get(k) != raw)[:20]
    return check


# -- unique indexes built without `unique` after the copy (tasks/schema.py build_indexes) -----------
UNIQUE_PENDING = "unique_pending"  # field of the spec's sync state: "ns/index" awaiting conversion


def record_deferred_unique(spec: MigrationSpec, results: list[IndexResult]) -> list[str]:
    """Note on the sync state which indexes wait to be made unique at cutover. A resumed run keeps
    the sync state (and rebuilds and records them again); the cutover finds them on the destination
    by comparing with the source (`unique_indexes_to_convert`), which also follows renames."""
    pending = [f"{r.target_ns}/{name}" for r in results for name in r.deferred_unique]
    if pending:
        sync_state_collection(spec).update_one(
            {"_id": spec.digest()}, {"$addToSet": {UNIQUE_PENDING: {"$each": pending}}})
    return pending


def pending_unique(spec: MigrationSpec) -> list[str]:
    state = sync_state_collection(spec).find_one({"_id": spec.digest()}, {UNIQUE_PENDING: 1}) or {}
    return state.get(UNIQUE_PENDING, [])


def forget_deferred_unique(spec: MigrationSpec) -> None:
    sync_state_collection(spec).update_one({"_id": spec.digest()}, {"$unset": {UNIQUE_PENDING: ""}})


record_deferred_unique_task = step(record_deferred_unique)
block_source_writes_task = step(block_source_writes, retries=0)
drain_point_task = step(drain_point)
check_collection_task = step(check_collection)
unblock_source_writes_task = step(unblock_source_writes)
recopy_collection_task = step(recopy_collection)  # drops the target first: a retry starts over
abandon_run_task = step(abandon_run)
