"""What a change event means on the destination. Pure: no I/O.

`plan_change(event, mapper)` turns one change event into a document write (`DocWrite`) or a list of
DDL actions (`CreateCollection`, `DropCollection`, ...), with the spec's selection and name mapping
applied; `Batch` keeps one write per document; `partition_writes` spreads a batch over the apply
workers; `change_stream_pipeline` is the server-side half of the selection. The engine that reads the
stream and applies all this is tasks/sync/engine.py.

Why whole documents. An update event's `updateDescription` cannot always be replayed byte for byte: a
`$set` of "a.b" cannot tell a field named "a.b" from a nested path, "a.0" an array index from a field
named "0", and a pipeline update that adds or moves fields leaves them in an order that `$set` does not
reproduce (`$set` adds new fields in name order). So the stream asks for `fullDocument: "updateLookup"`
and every insert, replace and update becomes a replace-with-upsert of the whole raw document by its
`documentKey`; a delete is a delete. Every write states a document's whole state, which makes a replay
idempotent (an insert seen again is a replace; a document the full copy read after a change, then the
change replayed, end the same) and lets a batch keep only the last write of each document.

Reordering. The looked-up document is the document as it is when the event is read, possibly newer
than the event. Writes of one document are applied in stream order, and the last event of a document
carries (at least) its final state, so the destination converges to the source. A lookup that finds
nothing (the document was deleted later, or its collection dropped) writes nothing: the delete or drop
is further on in the stream. Lookups follow the collection's UUID, so a rename inside a database does
not hide documents; a rename across databases reaches the stream as inserts into a temporary collection
and a rename inside the target database. Intermediate states can be newer than their neighbours', so a
write refused by a unique index is retried after the documents holding that key are refreshed from the
source (tasks/sync/conflicts.py).
"""
from __future__ import annotations

import calendar
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Union

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from pymongo import DeleteOne, ReplaceOne

from mongo_migrate.blocks.spec import META_DATABASE, SYSTEM_DATABASES
from mongo_migrate.tasks.common import to_ejson
from mongo_migrate.tasks.namespaces import CollectionPlan, NamespaceMapper

log = logging.getLogger("mongo_migrate.changes")

_DICT = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)

Target = tuple[str, str]


# raised where changes are applied (engine, conflicts, ddl); defined here, below all three
@dataclass(slots=True)
class DocWrite:
    """The whole state of one document: `doc` to upsert, or None to delete."""

    source: Target
    target: Target
    key: RawBSONDocument  # the event's documentKey, {_id: ...}, kept as raw bytes
    doc: RawBSONDocument | None

    @property
    def ident(self) -> tuple[Target, bytes]:
        return self.target, self.key.raw

    def operation(self) -> ReplaceOne | DeleteOne:
        if self.doc is None:
            return DeleteOne(self.key)
        return ReplaceOne(self.key, self.doc, upsert=True)


@dataclass(slots=True)
class CreateCollection:
    """Create a collection, view or time-series collection (its options are read from the source
    catalog: the change event shows a time-series collection as a view on its buckets)."""

    plan: CollectionPlan

    def describe(self) -> str:
        return f"create {self.plan.kind} {self.plan.target_ns}"


@dataclass(slots=True)
class DropCollection:
    target: Target

    def describe(self) -> str:
        return f"drop {'.'.join(self.target)}"


@dataclass(slots=True)
class RenameCollection:
    """Rename on the destination; if the old target is not there, copy the new source name."""

    old_target: Target
    new_target: Target
    source_to: Target

    def describe(self) -> str:
        return f"rename {'.'.join(self.old_target)} to {'.'.join(self.new_target)}"


@dataclass(slots=True)
class RecopyCollection:
    """Drop the target and copy the source collection as it is now (data, options, indexes)."""

    source: Target
    target: Target

    def describe(self) -> str:
        return f"copy {'.'.join(self.source)} to {'.'.join(self.target)} again"


@dataclass(slots=True)
class CreateIndexes:
    source: Target
    target: Target
    indexes: list[dict]

    def describe(self) -> str:
        return f"create index {', '.join(i['name'] for i in self.indexes)} on {'.'.join(self.target)}"


@dataclass(slots=True)
class DropIndexes:
    target: Target
    names: list[str]

    def describe(self) -> str:
        return f"drop index {', '.join(self.names)} on {'.'.join(self.target)}"


@dataclass(slots=True)
class ModifyCollection:
    target: Target
    changes: dict

    def describe(self) -> str:
        return f"collMod {'.'.join(self.target)} {sorted(self.changes)}"


@dataclass(slots=True)
class DropDatabase:
    source_db: str

    def describe(self) -> str:
        return f"drop the targets of database {self.source_db}"


# the server's temporary collection of a rename across databases (src/mongo/db/catalog/rename_collection.cpp)
CROSS_DATABASE_RENAME_TEMP = re.compile(r"tmp[A-Za-z0-9]{5}\.renameCollection")

Action = Union[CreateCollection, DropCollection, RenameCollection, RecopyCollection, CreateIndexes,
               DropIndexes, ModifyCollection, DropDatabase]
Change = Union[DocWrite, list, None]


def _decode(raw: Any) -> dict:
    """A small raw subdocument (options, index specs) as a dict; BSON types are kept."""
    if isinstance(raw, RawBSONDocument):
        return bson.decode(raw.raw, _DICT)
    return dict(raw)


def _map_view_on(mapper: NamespaceMapper, db: str, target_db: str, options: dict) -> dict:
    # a view reads from its own database: map viewOn when its target stays there (as create_views)
    opts = dict(options)
    if "viewOn" in opts:
        on_db, on_name = mapper.target(db, opts["viewOn"])
        if on_db == target_db:
            opts["viewOn"] = on_name
    return opts


def _plan(mapper: NamespaceMapper, db: str, coll: str, kind: str, options: dict) -> CollectionPlan:
    tdb, tcoll = mapper.target(db, coll)
    return CollectionPlan(source_db=db, source_name=coll, target_db=tdb, target_name=tcoll,
                          kind=kind, options_ejson=to_ejson(options))


def plan_change(event: Any, mapper: NamespaceMapper,
                recopy_renames_before: Timestamp | None = None) -> Change:
    """What one change event means on the destination: a DocWrite, a list of DDL actions, or None.

    Selection and name mapping apply to every event, DDL included. `recopy_renames_before`: a rename
    that happened while the full copy ran may have cut that copy short, so the renamed collection is
    copied again instead of renamed on the destination.
    """
    op = event["operationType"]
    ns = event.get("ns") or {}
    db, coll = ns.get("db"), ns.get("coll")
    if op in ("insert", "replace", "update", "delete"):
        if not mapper.selected(db, coll):
            return None
        key = event["documentKey"]
        target = mapper.target(db, coll)
        if op == "delete":
            return DocWrite((db, coll), target, key, None)
        doc = event.get("fullDocument")
        if doc is None:
            # the document is gone by the time of the lookup: its delete (or the collection's
            # drop) comes later in the stream
            return None
        return DocWrite((db, coll), target, key, doc)

    if op == "dropDatabase":
        return [DropDatabase(db)] if mapper.database_selected(db) else None

    if op == "rename":
        to = event.get("to") or (event.get("operationDescription") or {}).get("to")
        to_db, to_coll = to["db"], to["coll"]
        from_selected, to_selected = mapper.selected(db, coll), mapper.selected(to_db, to_coll)
        old_target, new_target = mapper.target(db, coll), mapper.target(to_db, to_coll)
        if from_selected and to_selected:
            during_copy = (recopy_renames_before is not None
                           and event["clusterTime"] < recopy_renames_before)
            # a rename across databases fills a temporary collection in the target database, then
            # renames it; before 6.0 those inserts are marked fromMigrate, which change streams
            # leave out, so the renamed collection is copied from the source instead
            if during_copy or CROSS_DATABASE_RENAME_TEMP.fullmatch(coll):
                return [DropCollection(old_target), RecopyCollection((to_db, to_coll), new_target)]
            if old_target == new_target:
                return None
            return [RenameCollection(old_target, new_target, (to_db, to_coll))]
        if from_selected:
            return [DropCollection(old_target)]  # renamed out of the selection
        if to_selected:
            return [RecopyCollection((to_db, to_coll), new_target)]  # renamed into it
        return None

    if coll is None or not mapper.selected(db, coll):
        return None
    target = mapper.target(db, coll)
    desc = _decode(event.get("operationDescription") or {})
    if op == "create":
        view_on = desc.get("viewOn", "")
        if view_on.startswith("system.buckets.") and any(
                "$_internalUnpackBucket" in stage for stage in desc.get("pipeline", [])):
            return [CreateCollection(_plan(mapper, db, coll, "timeseries", {}))]
        if "viewOn" in desc:
            return [CreateCollection(_plan(mapper, db, coll, "view", desc))]
        return [CreateCollection(_plan(mapper, db, coll, "collection", desc))]
    if op == "drop":
        return [DropCollection(target)]
    if op == "createIndexes":
        indexes = [{k: v for k, v in ix.items() if k != "ns"} for ix in desc.get("indexes", [])]
        return [CreateIndexes((db, coll), target, indexes)]
    if op == "dropIndexes":
        return [DropIndexes(target, [ix["name"] for ix in desc.get("indexes", [])])]
    if op == "modify":
        return [ModifyCollection(target, _map_view_on(mapper, db, target[0], desc))]
    # shardCollection, reshardCollection, refineCollectionShardKey: about the source's sharding
    log.warning("change %s on %s.%s is not applied to the destination", op, db, coll)
    return None


def transaction_of(event: Any) -> bytes | None:
    """Identifies the transaction an event belongs to (lsid + txnNumber), None outside one."""
    lsid = event.get("lsid")
    if lsid is None:
        return None
    raw = lsid.raw if isinstance(lsid, RawBSONDocument) else bson.encode(lsid)
    return raw + bson.encode({"n": event.get("txnNumber")})


class Batch:
    """Changes read since the last apply, reduced to one write per document (its last state)."""

    def __init__(self) -> None:
        self.writes: dict[tuple[Target, bytes], DocWrite] = {}
        self.events = 0
        self.last_event: Any = None
        self.transaction: bytes | None = None

    def add(self, write: DocWrite | None, event: Any, transaction: bytes | None = None) -> None:
        if write is not None:
            # the last state of a document wins; its earlier states in the batch need no write
            self.writes[write.ident] = write
        self.events += 1
        self.last_event = event
        self.transaction = transaction


def partition_writes(writes: Iterable[DocWrite], partitions: int) -> list[dict[Target, list[DocWrite]]]:
    """Spread writes over `partitions` by namespace and _id: a document always lands in the same
    partition, so the writes of one document stay in order however partitions run."""
    parts: list[dict[Target, list[DocWrite]]] = [defaultdict(list) for _ in range(partitions)]
    for w in writes:
        parts[hash(w.ident) % partitions][w.target].append(w)
    return parts


def token_time(token: Any) -> Timestamp:
    """The cluster time a resume token stands for (its KeyString starts with the timestamp)."""
    data = token["_data"]
    if not isinstance(data, str) or not data.startswith("82") or len(data) < 18:
        raise ValueError(f"not a resume token of MongoDB 4.2 or later: {data!r}")
    return Timestamp(int(data[2:10], 16), int(data[10:18], 16))


def wall_seconds(value: Any) -> float | None:
    if isinstance(value, datetime):
        return calendar.timegm(value.utctimetuple()) + value.microsecond / 1e6
    return None


def format_delay(delay_s: float | None, ready_s: float | None = None) -> str:
    """"3.2 s behind", or "not delayed" at or under the spec's threshold."""
    if delay_s is None:
        return "delay not measured yet"
    if delay_s <= 0:
        return "not delayed"
    if ready_s is not None and delay_s <= ready_s:
        return f"not delayed ({delay_s:.1f} s)"
    if delay_s < 60:
        return f"{delay_s:.1f} s behind"
    minutes, seconds = divmod(int(delay_s), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s") + " behind"


def change_stream_pipeline(mapper: NamespaceMapper) -> list[dict]:
    """Server-side selection (exact selection and mapping happen in plan_change) and no update
    descriptions: the sync writes whole documents."""

    def matches(prefix: str) -> list[dict]:
        if mapper.select_all:
            return [{f"{prefix}.db": {"$exists": True, "$nin": [*SYSTEM_DATABASES, META_DATABASE]}}]
        out: list[dict] = []
        if mapper.whole_databases:
            out.append({f"{prefix}.db": {"$in": sorted(mapper.whole_databases)}})
        for db, colls in sorted(mapper.some_collections.items()):
            out.append({f"{prefix}.db": db, f"{prefix}.coll": {"$in": sorted(colls)}})
            if prefix == "ns":
                # dropping the database drops its views without a drop event each
                out.append({"ns.db": db, "operationType": "dropDatabase"})
        return out

    # renames match on either side: into or out of the selection
    return [{"$match": {"$or": matches("ns") + matches("to")}}, {"$project": {"updateDescription": 0}}]
