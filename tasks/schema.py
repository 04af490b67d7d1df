"""Step 4, around the data: collection options before the copy, indexes and views after it."""
from __future__ import annotations

import logging

from pydantic import BaseModel
from pymongo.errors import CollectionInvalid, OperationFailure

from blocks.mongo import open_client
from blocks.spec import MigrationSpec
from tasks.common import step
from tasks.namespaces import CollectionPlan, NamespaceMapper

log = logging.getLogger("mongo_migrate.schema")

# listCollections options that `create` does not take back, or that 6.0+ refuses outside `local`
_NOT_CREATE_OPTIONS = {"autoIndexId", "uuid"}
NAMESPACE_EXISTS = 48


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
        db.command("create", plan.target_name, **create_options(plan))
        return "created"
    except (CollectionInvalid, OperationFailure) as exc:
        if getattr(exc, "code", None) == NAMESPACE_EXISTS:
            return "exists"
        raise


class IndexResult(BaseModel):
    target_ns: str
    built: list[str]


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


def build_indexes(spec: MigrationSpec, plan: CollectionPlan) -> IndexResult:
    """Build every secondary index of the source on the target, in one createIndexes (one scan)."""
    specs = index_specs(spec, plan)
    if specs:
        db = open_client(spec.destination.resolve())[plan.target_db]
        # createIndexes is idempotent for identical specs, so a retried build is harmless
        db.command("createIndexes", plan.target_name, indexes=specs)
    return IndexResult(target_ns=plan.target_ns, built=[s["name"] for s in specs])


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
            client[view.target_db].command("create", view.target_name, **opts)
        except OperationFailure as exc:
            if exc.code != NAMESPACE_EXISTS:
                raise
        created.append(view.target_ns)
    return created


create_target_collection_task = step(create_target_collection)
build_indexes_task = step(build_indexes)
create_views_task = step(create_views)
