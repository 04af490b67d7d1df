"""What the migration remembers on the destination, in the `mongo_migrate_meta` database. Every
collection of it is named and opened here, and its layout has a version, kept beside it:

- `runs`: one document per spec digest (started, finished, the flow run, abandoned and why, and when its
  process last said it was alive: RunAlive);
- `copy_ranges`: the `_id` ranges each collection was cut into, so that a rerun cuts the same ones;
- `copy_units`: the checkpoint of every copy range (resume point, documents, done);
- `skipped_documents`: documents the destination refused under `on_document_error: skip`;
- `sync_state`: one document per spec digest: the sync's start point and saved position, its status,
  the unique indexes waiting for cutover, parked unique-key conflicts;
- `throttle`: per spec digest, the live cap set by `mongo-migrate throttle` or the Prefect Variable
  (`{_id: digest}`), and the shared pace of each direction (`{_id: "<digest>:copy"}`, `":sync"`), which
  every process of the run advances (tasks/throttle.py);
- `schema`: `{_id: "layout", version: STATE_VERSION}`.

A rerun of an unfinished spec continues from them; a fresh run of the spec clears them first. State
written by an older mongo-migrate is upgraded as a run starts (before anything else is written);
state written by a newer one stops the run with one line that says what to do.
"""
from __future__ import annotations

import os
import re
import threading
from datetime import datetime, timezone
from typing import Callable

from pydantic import BaseModel
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mongo_migrate.blocks.errors import BadInput
from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import META_DATABASE, MigrationSpec
from mongo_migrate.tasks.common import step
from mongo_migrate.tasks.namespaces import MigrationPlan
from mongo_migrate.tasks.oplog import oldest_entry_time
from mongo_migrate.tasks.sync.events import token_time

RUNS = "runs"
COPY_RANGES = "copy_ranges"
COPY_UNITS = "copy_units"
SKIPPED_DOCUMENTS = "skipped_documents"
SYNC_STATE = "sync_state"
THROTTLE = "throttle"
SCHEMA = "schema"

# The layout of the collections above. 0 is the state of mongo-migrate before the layout had a version
# (the same documents as 1). A change of layout adds its upgrade to UPGRADES and bumps the version.
STATE_VERSION = 1
UPGRADES: dict[int, Callable[[Database], None]] = {0: lambda meta: None}


class StateTooNew(BadInput):
    """The destination's migration state was written by a newer mongo-migrate."""


def meta_database(spec: MigrationSpec) -> Database:
    return open_client(spec.destination.resolve())[META_DATABASE]


def state_collection(spec: MigrationSpec, name: str) -> Collection:
    return meta_database(spec)[name]


def sync_state_collection(spec: MigrationSpec) -> Collection:
    return state_collection(spec, SYNC_STATE)


def read_sync_state(spec: MigrationSpec) -> dict | None:
    return sync_state_collection(spec).find_one({"_id": spec.digest()})


def resumable_run(spec: MigrationSpec) -> dict | None:
    """The state of an unfinished earlier run of this same spec, if the destination has one."""
    return state_collection(spec, RUNS).find_one({"_id": spec.digest(), "finished": {"$ne": True}})


def lost_sync_position(spec: MigrationSpec) -> str | None:
    """Why the unfinished incremental run of this spec cannot resume, or None: its sync would go on from
    its saved position (the last change it applied, or its start point), and the source's oplog no
    longer holds that position once its oldest entry is later. The precheck says so before anything is
    written (its oplog-window item); a run that starts afresh instead abandons it (start_run). Where the
    oplog cannot be read here (through mongos, without the right), None: the sync finds out itself."""
    if not spec.incremental or resumable_run(spec) is None:
        return None
    state = read_sync_state(spec) or {}
    token = state.get("token") or state.get("start_token")
    if not token:
        return None
    try:
        position = token_time(token)
        oldest = oldest_entry_time(spec.source.resolve())
    except (PyMongoError, ValueError):
        return None
    if oldest is None or position >= oldest:
        return None
    return (f"the unfinished run's sync position ({_utc(position)}) has left the source's oplog, whose "
            f"oldest entry is {_utc(oldest)}")


def will_resume(spec: MigrationSpec) -> bool:
    """A run of this spec would continue the unfinished one (there is one, and it can resume)."""
    return resumable_run(spec) is not None and lost_sync_position(spec) is None


def _utc(ts) -> str:
    return ts.as_datetime().strftime("%Y-%m-%d %H:%M:%S UTC")


def ensure_state_version(meta: Database) -> int:
    """Upgrade the state to STATE_VERSION (returns the version found), or StateTooNew."""
    found = meta[SCHEMA].find_one({"_id": "layout"})
    version = found["version"] if found else (0 if meta.list_collection_names() else STATE_VERSION)
    if version > STATE_VERSION:
        raise StateTooNew(
            f"the migration state on the destination ({META_DATABASE}) was written by a newer "
            f"mongo-migrate (state version {version}, this one knows {STATE_VERSION}): run the newer "
            f"mongo-migrate, or drop the {META_DATABASE} database to start every migration over")
    for step_from in range(version, STATE_VERSION):
        UPGRADES[step_from](meta)
    if found is None or version != STATE_VERSION:
        meta[SCHEMA].replace_one({"_id": "layout"}, {"version": STATE_VERSION,
                                                    "updated": datetime.now(timezone.utc)}, upsert=True)
    return version


class RunState(BaseModel):
    digest: str
    resumed: bool


def start_run(spec: MigrationSpec, plan: MigrationPlan, flow_run_id: str | None) -> RunState:
    """Record the run; a fresh run (not a resumed one) first clears stale state and, when the spec
    says so, drops target collections that hold data."""
    dest = open_client(spec.destination.resolve())
    meta = dest[META_DATABASE]
    ensure_state_version(meta)
    digest = spec.digest()
    resumed = resumable_run(spec) is not None
    lost = lost_sync_position(spec) if resumed else None
    if lost:
        # the precheck has passed, which it does here only with drop_existing_targets (its oplog-window
        # item): the unfinished run is over, and this one starts the migration afresh
        abandon_run(spec, lost)
        resumed = False
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
    record = {"flow_run_id": flow_run_id, "source": spec.source.display(),
              "destination": spec.destination.display(), "finished": False, "updated": now}
    if resumed:
        meta[RUNS].update_one({"_id": digest}, {"$set": record}, upsert=True)
    else:
        # nothing of an earlier run of the spec stays on a fresh one: not its start, nor why it was
        # abandoned (`mongo-migrate status` would show the new run as abandoned)
        meta[RUNS].replace_one({"_id": digest}, {**record, "started": now}, upsert=True)
    return RunState(digest=digest, resumed=resumed)


def finish_run(spec: MigrationSpec) -> None:
    state_collection(spec, RUNS).update_one(
        {"_id": spec.digest()}, {"$set": {"finished": True, "updated": datetime.now(timezone.utc)}}
    )


def abandon_run(spec: MigrationSpec, reason: str) -> None:
    """The run cannot continue (its sync position left the oplog): mark it over, so that running the
    spec again starts a fresh full migration instead of resuming this one."""
    meta = meta_database(spec)
    meta[RUNS].update_one({"_id": spec.digest()}, {"$set": {
        "finished": True, "abandoned": reason, "updated": datetime.now(timezone.utc)}})
    meta[SYNC_STATE].update_one({"_id": spec.digest()}, {"$set": {"status": "abandoned"}})


# How often a run's process says it is alive (MONGO_MIGRATE_ALIVE_EVERY_S: the tests' shorter one), and
# after how many of those intervals without a word `mongo-migrate status` says the process has stopped.
ALIVE_EVERY_S = 30.0
SILENT_AFTER_INTERVALS = 3


def alive_every_s() -> float:
    given = os.environ.get("MONGO_MIGRATE_ALIVE_EVERY_S")
    if given is None:
        return ALIVE_EVERY_S
    try:
        every_s = float(given)
    except ValueError:
        every_s = 0.0
    if not 0 < every_s <= 3600:
        raise BadInput(f"MONGO_MIGRATE_ALIVE_EVERY_S={given!r}: give seconds between 0 and 3600, such as 30 "
                       "(or unset it)")
    return every_s


class RunAlive:
    """While the run's process lives, a thread of its own sets `alive` on the run's `runs` document to
    the destination's clock every ALIVE_EVERY_S, and the interval beside it.

    A run whose process was killed (SIGKILL, the OOM killer, a machine that went down) stays RUNNING in
    Prefect, whose flow runs send no heartbeats unless configured to, and its checkpoints only say when
    a range or the sync last moved, which an idle source or a long index build also leave old: this is
    what tells `mongo-migrate status` that nobody is working on the run. The destination's own clock
    (`$currentDate`), so that a status read from another machine compares like with like."""

    def __init__(self, spec: MigrationSpec) -> None:
        self.every_s = alive_every_s()
        self._runs = state_collection(spec, RUNS)
        self._digest = spec.digest()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="run-alive")
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self._runs.update_one({"_id": self._digest}, {"$currentDate": {"alive": True},
                                                              "$set": {"alive_every_s": self.every_s}})
            except PyMongoError:
                pass  # the destination away: the run's own steps wait for it and say so
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def process_silent_s(run: dict, destination_now: datetime) -> float | None:
    """Seconds since the run's process last said it was alive, when that is more than
    SILENT_AFTER_INTERVALS of its intervals (None: heard from lately, or a run that never said)."""
    alive, every_s = run.get("alive"), run.get("alive_every_s")
    if alive is None or not every_s:
        return None
    silent = (destination_now.replace(tzinfo=None) - alive.replace(tzinfo=None)).total_seconds()
    return silent if silent > SILENT_AFTER_INTERVALS * every_s else None


start_run_task = step(start_run)
finish_run_task = step(finish_run)
