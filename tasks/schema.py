"""Step 4, around the data: collection options before the copy, indexes and views after it."""
from __future__ import annotations

import logging

from pydantic import BaseModel
from pymongo.errors import CollectionInvalid, OperationFailure

from mongo_migrate.blocks.errors import UniqueConversionFailed
from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import NAMESPACE_EXISTS, step, to_ejson, write_command
from mongo_migrate.tasks.namespaces import CollectionPlan, NamespaceMapper

log = logging.getLogger("mongo_migrate.schema")

# listCollections options that `create` does not take back, or that 6.0+ refuses outside `local`
_NOT_CREATE_OPTIONS = {"autoIndexId", "uuid"}


def create_options(plan: CollectionPlan) -> dict:
    opts = {k: v for k, v in plan.options.items() if k not in _NOT_CREATE_OPTIONS}
    ts = opts.get("timeseries")
    if ts and "granularity" in ts:
        # the server derives bucketMaxSpanSeconds from granularity and rejects it given alongside
        opts["timeseries"] = {k: v for k, v in ts.items() if k != "bucketMaxSpanSeconds"}
    return opts


def create_target_collection(spec: MigrationSpec, plan: CollectionPlan) -> str:
    """Create the target collection with the source's options (capped, collation, validator, ...).

    Returns "created" or "exists". An existing target is left as it is: the precheck has already
    made sure it is empty or belongs to a resumed run of this spec.
    """
    db = open_client(spec.destination.resolve())[plan.target_db]
    try:
        write_command(db, "create", plan.target_name, **create_options(plan))
        return "created"
    except (CollectionInvalid, OperationFailure) as exc:
        if getattr(exc, "code", None) == NAMESPACE_EXISTS:
            return "exists"
        raise


class IndexResult(BaseModel):
    target_ns: str
    built: list[str]
    # unique on the source, built without `unique` (an incremental migration converts them at cutover)
    deferred_unique: list[str] = []


def index_specs(spec: MigrationSpec, plan: CollectionPlan) -> list[dict]:
    """The source's index specs as createIndexes takes them (the _id and clustered index excluded)."""
    src = open_client(spec.source.resolve())[plan.source_db][plan.source_name]
    default_collation = "collation" in plan.options
    specs = []
    for ix in src.list_indexes():
        if ix["name"] == "_id_" or ix.get("clustered"):
            continue
        ix_spec = {k: v for k, v in ix.items() if k != "ns"}
        if default_collation and "collation" not in ix_spec:
            # listIndexes leaves out a simple collation; given without one, the index would take the
            # collection's default instead (and a text or geo index would be refused)
            ix_spec["collation"] = {"locale": "simple"}
        specs.append(ix_spec)
    return specs


def build_indexes(spec: MigrationSpec, plan: CollectionPlan, defer_unique: bool = False) -> IndexResult:
    """Build every secondary index of the source on the target, in one createIndexes (one scan).

    `defer_unique` (an incremental migration): a full copy of a live source captures documents at
    different moments, so two of them may briefly share a key the source holds unique (A's email moved
    to B between the reads); the sync settles that later. Unique indexes are therefore built without
    `unique` (same name, key and other options) and made unique at cutover (`convert_to_unique`).
    """
    specs = index_specs(spec, plan)
    deferred: list[str] = []
    if specs:
        db = open_client(spec.destination.resolve())[plan.target_db]
        wanted = specs
        if defer_unique:
            existing = {ix["name"]: ix for ix in db[plan.target_name].list_indexes()}
            wanted = []
            for s in specs:
                if not s.get("unique"):
                    wanted.append(s)
                elif not (built := existing.get(s["name"], {})).get("unique"):
                    if built.get("prepareUnique"):
                        # a cutover killed between convert_to_unique's two collMods: the index is
                        # put back as built (it would refuse the sync's passing duplicates, and
                        # createIndexes would call the spec without prepareUnique a conflict)
                        write_command(db, "collMod", plan.target_name,
                                      index={"name": s["name"], "prepareUnique": False})
                    wanted.append({k: v for k, v in s.items() if k != "unique"})
                    deferred.append(s["name"])
                # else: made unique already by an earlier attempt of this run; rebuilding it without
                # `unique` would conflict with it (IndexKeySpecsConflict)
        if wanted:
            # createIndexes is idempotent for identical specs, so a retried build is harmless
            write_command(db, "createIndexes", plan.target_name, indexes=wanted)
    return IndexResult(target_ns=plan.target_ns, built=[s["name"] for s in specs], deferred_unique=deferred)


CANNOT_CONVERT_INDEX_TO_UNIQUE = 359


def unique_indexes_to_convert(spec: MigrationSpec, plan: CollectionPlan) -> list[str]:
    """The source's unique indexes that the target has, but not unique (built by `defer_unique`)."""
    if plan.kind == "timeseries":
        return []  # time-series indexes cannot be unique
    src = open_client(spec.source.resolve())[plan.source_db][plan.source_name]
    dst = open_client(spec.destination.resolve())[plan.target_db][plan.target_name]
    unique = {ix["name"] for ix in src.list_indexes() if ix.get("unique") and ix["name"] != "_id_"}
    return [ix["name"] for ix in dst.list_indexes() if ix["name"] in unique and not ix.get("unique")]


def convert_to_unique(spec: MigrationSpec, plan: CollectionPlan) -> list[str]:
    """Make the target's deferred unique indexes unique (collMod prepareUnique, then unique), once no
    more changes are applied. Returns the names converted; raises `UniqueConversionFailed` with the
    duplicated documents' _ids when documents still share a key."""
    names = unique_indexes_to_convert(spec, plan)
    db = open_client(spec.destination.resolve())[plan.target_db]
    for name in names:
        write_command(db, "collMod", plan.target_name, index={"name": name, "prepareUnique": True})
        try:
            write_command(db, "collMod", plan.target_name, index={"name": name, "unique": True})
        except OperationFailure as exc:
            if exc.code != CANNOT_CONVERT_INDEX_TO_UNIQUE:
                raise
            try:  # leave the index as it was
                write_command(db, "collMod", plan.target_name, index={"name": name, "prepareUnique": False})
            except OperationFailure:
                pass
            ids = [to_ejson(i) for v in (exc.details or {}).get("violations", []) for i in v.get("ids", [])]
            raise UniqueConversionFailed(
                f"{plan.target_ns}: index {name} cannot be made unique as on the source: destination "
                f"documents share a key (_id {', '.join(ids[:5]) or 'unknown'}"
                f"{', ...' if len(ids) > 5 else ''})") from None
        ix = next((i for i in db[plan.target_name].list_indexes() if i["name"] == name), {})
        if "prepareUnique" in ix:  # 6.0 drops it on conversion; should a server keep it, the specs differ
            write_command(db, "collMod", plan.target_name, index={"name": name, "prepareUnique": False})
    return names


def view_creation_order(views: list[CollectionPlan]) -> list[CollectionPlan]:
    """Views on views are created after the views they read from."""
    by_ns = {v.source_ns: v for v in views}
    ordered: list[CollectionPlan] = []
    done: set[str] = set()

    def visit(v: CollectionPlan, path: tuple[str, ...] = ()) -> None:
        if v.source_ns in done or v.source_ns in path:
            return
        parent = by_ns.get(f"{v.source_db}.{v.options.get('viewOn')}")
        if parent:
            visit(parent, path + (v.source_ns,))
        done.add(v.source_ns)
        ordered.append(v)

    for v in views:
        visit(v)
    return ordered


def view_source_name(view: CollectionPlan, coll: str, mapper: NamespaceMapper) -> str:
    """What a collection a view reads is called beside the view on the destination."""
    target_db, target_name = mapper.target(view.source_db, coll)
    if target_db != view.target_db:
        # a view reads from its own database only; the precheck warns about this mapping
        log.warning("view %s reads %s, which is mapped to another database", view.source_ns, coll)
        return coll
    return target_name


def map_view_pipeline(pipeline: list, view: CollectionPlan, mapper: NamespaceMapper) -> list:
    """The pipeline with the collections it reads ($lookup, $graphLookup, $unionWith, at any depth,
    in $facet too) under their target names."""

    def rewrite(value):
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {}
        for key, v in value.items():
            v = rewrite(v)
            if key == "$unionWith" and isinstance(v, str):
                v = view_source_name(view, v, mapper)
            elif key in ("$lookup", "$graphLookup", "$unionWith") and isinstance(v, dict):
                field = "coll" if key == "$unionWith" else "from"
                if isinstance(v.get(field), str):
                    v[field] = view_source_name(view, v[field], mapper)
            out[key] = v
        return out

    return rewrite(pipeline)


def create_views(spec: MigrationSpec, views: list[CollectionPlan]) -> list[str]:
    """Create the selected views on the destination, reading from the mapped collection names."""
    mapper = NamespaceMapper(spec)
    client = open_client(spec.destination.resolve())
    created = []
    for view in view_creation_order(views):
        opts = dict(view.options)
        opts["viewOn"] = view_source_name(view, opts["viewOn"], mapper)
        if "pipeline" in opts:
            opts["pipeline"] = map_view_pipeline(opts["pipeline"], view, mapper)
        try:
            write_command(client[view.target_db], "create", view.target_name, **opts)
        except OperationFailure as exc:
            if exc.code != NAMESPACE_EXISTS:
                raise
        created.append(view.target_ns)
    return created


def build_indexes_of(spec: MigrationSpec, plans: list[CollectionPlan], defer_unique: bool = False) -> list[IndexResult]:
    """build_indexes for each of `plans` in turn: the collections one copy unit copied
    (tasks/copy.py copy_units), in one task."""
    return [build_indexes(spec, plan, defer_unique) for plan in plans]


build_indexes_of_task = step(build_indexes_of)
convert_to_unique_task = step(convert_to_unique)
create_views_task = step(create_views)
