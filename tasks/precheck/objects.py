"""Objects and names: the selection read from the source, item 10 (selected objects, the config
database) and 11 (name mapping, target namespaces)."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel
from pymongo.errors import PyMongoError

from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import (MAX_NAMESPACE_BYTES, META_DATABASE, MigrationSpec, collection_name_problem,
                                       database_name_problem)
from mongo_migrate.tasks.namespaces import MigrationPlan, plan_namespaces
from mongo_migrate.tasks.precheck.report import (CheckResult, check_item, failed, listing, passed, source_read_problem,
                                                 warning)
from mongo_migrate.tasks.state import lost_sync_position, resumable_run

OBJECTS = "selected objects"
CONFIG_DATABASE = "config database"
NAME_MAPPING = "name mapping"
TARGET_NAMESPACES = "target namespaces"
INTERNAL_DATABASES = ("admin", "local", "config")


# -- selection: the plan, or why it cannot be read ---------------------------------------------

class ObjectListing(BaseModel):
    plan: Optional[MigrationPlan] = None
    error: Optional[str] = None


def list_selected_objects(spec: MigrationSpec) -> ObjectListing:
    """The migration plan read from the source; a refusal (privileges) is reported, not raised."""
    try:
        return ObjectListing(plan=plan_namespaces(spec))
    except PyMongoError as exc:
        return ObjectListing(error=source_read_problem(exc))


def occupied_targets(spec: MigrationSpec, plan: MigrationPlan) -> dict[str, Optional[int]]:
    """{target namespace: documents (None for a view)} for each target that exists and holds data."""
    dest = open_client(spec.destination.resolve())
    occupied: dict[str, Optional[int]] = {}
    existing_by_db: dict[str, set[str]] = {}
    for p in plan.collections:
        if p.target_db not in existing_by_db:
            existing_by_db[p.target_db] = set(dest[p.target_db].list_collection_names())
        if p.target_name not in existing_by_db[p.target_db]:
            continue
        if p.kind == "view":
            occupied[p.target_ns] = None
            continue
        target = dest[p.target_db][p.target_name]
        if target.find_one({}, {"_id": 1}) is not None:
            occupied[p.target_ns] = target.estimated_document_count()
    return occupied


# -- 10: objects -------------------------------------------------------------------------------

@check_item(OBJECTS)
def check_objects(spec: MigrationSpec, plan: MigrationPlan) -> list[CheckResult]:
    """Item 10: every selected database/collection exists; admin and local never; config only when
    named (warning); system collections are skipped (listed)."""
    items = []
    internal = sorted({p.source_db for p in plan.collections if p.source_db in ("admin", "local")})
    if internal:
        items.append(failed(OBJECTS, f"{', '.join(internal)} cannot be migrated",
                            "remove admin and local from objects: users and roles are created on the "
                            "destination, the oplog is its own"))
    elif plan.missing:
        items.append(failed(OBJECTS, "not on the source: " + ", ".join(plan.missing),
                            "fix the names in objects, or remove them"))
    elif not plan.collections:
        items.append(failed(OBJECTS, "nothing to migrate: no collection is selected",
                            "select databases or collections that exist on the source"))
    else:
        client = open_client(spec.source.resolve())
        skipped = []
        for db in sorted({p.source_db for p in plan.collections}):
            skipped += [f"{db}.{n}" for n in sorted(client[db].list_collection_names(
                filter={"name": {"$regex": r"^system\."}}))
                if n != "system.views" and not n.startswith("system.buckets.")]
        n_views = len(plan.views)
        detail = f"{len(plan.collections) - n_views} collections, {n_views} views"
        if skipped:
            detail += "; system collections skipped: " + listing(skipped)
        items.append(passed(OBJECTS, detail))
    if plan.config_selected:
        items.append(warning(CONFIG_DATABASE, "config is selected explicitly: it holds the "
                             "deployment's own metadata (sessions, sharding)",
                             "migrate config only if you know its collections are yours"))
    return items


# -- 11: name mapping --------------------------------------------------------------------------

def target_name_problems(plan: MigrationPlan) -> list[str]:
    """Target names the destination would refuse: characters, length, case clashes."""
    problems = []
    for db in sorted({p.target_db for p in plan.collections}):
        problem = database_name_problem(db)
        if problem:
            problems.append(problem)
    for p in plan.collections:
        problem = collection_name_problem(p.target_name)
        if problem and not p.target_name.startswith("system."):
            problems.append(f"{p.source_ns} -> {p.target_ns}: {problem}")
        # time-series data lives in system.buckets.<name>, which must fit too
        longest = p.target_db + "." + (p.target_data_collection if p.kind == "timeseries" else p.target_name)
        if len(longest.encode()) > MAX_NAMESPACE_BYTES:
            problems.append(f"{p.source_ns} -> {p.target_ns}: {longest!r} is longer than "
                            f"{MAX_NAMESPACE_BYTES} bytes")
    by_folded: dict[str, set[str]] = {}
    for db in {p.target_db for p in plan.collections}:
        by_folded.setdefault(db.lower(), set()).add(db)
    for names in by_folded.values():
        if len(names) > 1:
            problems.append(f"target databases {' and '.join(sorted(names))} differ only in case, "
                            "which MongoDB refuses")
    return problems


@check_item(NAME_MAPPING)
def check_name_mapping(spec: MigrationSpec, plan: MigrationPlan) -> CheckResult:
    """Item 11: one target per source, names the destination accepts (also against the databases it
    already has: names differing only in case are refused)."""
    name = NAME_MAPPING
    by_target: dict[str, list[str]] = {}
    for p in plan.collections:
        by_target.setdefault(p.target_ns, []).append(p.source_ns)
    clashes = {t: s for t, s in by_target.items() if len(s) > 1}
    if clashes:
        detail = "; ".join(f"{' and '.join(s)} -> {t}" for t, s in clashes.items())
        return failed(name, f"several sources map to one target: {detail}",
                      "change name_mapping so every target name is used once")
    problems = target_name_problems(plan)
    existing = open_client(spec.destination.resolve()).list_database_names()
    for db in sorted({p.target_db for p in plan.collections}):
        clash = [e for e in existing if e.lower() == db.lower() and e != db]
        if clash:
            problems.append(f"target database {db} differs only in case from the destination's "
                            f"existing {clash[0]}, which MongoDB refuses")
    if problems:
        return failed(name, "the destination would refuse: " + "; ".join(problems[:5]),
                      "map those to other names in name_mapping")
    renamed = sum(1 for p in plan.collections if p.source_ns != p.target_ns)
    return passed(name, f"{len(by_target)} target namespaces ({renamed} renamed), no conflict")


@check_item(TARGET_NAMESPACES)
def check_targets_empty(spec: MigrationSpec, plan: MigrationPlan) -> CheckResult:
    """Item 11, continued: a target namespace that holds data fails, unless the spec says to drop
    it (then each one is named with its document count, before anything is dropped) or it belongs
    to an unfinished run of this same spec (which resumes)."""
    name = TARGET_NAMESPACES
    occupied = occupied_targets(spec, plan)
    if not occupied:
        return passed(name, "every target namespace is empty")
    lost = lost_sync_position(spec)
    if not lost and resumable_run(spec):
        return passed(name, f"resuming an unfinished run of this spec ({len(occupied)} targets hold its data)")
    if spec.copy_options.drop_existing_targets:
        dropped = [f"{ns} ({'view' if n is None else f'{n:,} document' + 's' * (n != 1)})"
                   for ns, n in occupied.items()]
        return warning(name, "drop_existing_targets: will drop " + "; ".join(dropped)
                       + f" (nothing else: not {META_DATABASE}, nor any collection outside the plan)",
                       "nothing to do, unless that data must be kept: then set drop_existing_targets: "
                       "false or map to other names")
    unfinished = " (an unfinished run of this spec copied them, and cannot resume: see the oplog window)" if lost else ""
    return failed(name, "already hold data: " + listing(list(occupied)) + unfinished,
                  "drop them, map to other names, or set copy_options.drop_existing_targets: true")
