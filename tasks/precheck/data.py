"""Item 12: data the destination cannot take, found by reading the source's documents (documents too
large for a change event only for incremental runs, field names only for destinations before 5.0; _id
types, TTL-expired documents, views)."""
from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Optional

import bson
from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING

from mongo_migrate.blocks.mongo import open_client, server_hello
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import version_tuple
from mongo_migrate.tasks.connect import EndpointInfo
from mongo_migrate.tasks.copy import document_offsets
from mongo_migrate.tasks.namespaces import CollectionPlan, MigrationPlan
from mongo_migrate.tasks.precheck.inventory import CollectionFacts, SourceInventory, inventory_unreadable
from mongo_migrate.tasks.precheck.report import CheckResult, MiB, check_item, failed, listing, passed, warning
from mongo_migrate.tasks.raw_batches import find_raw_batches

DATA_COMPATIBILITY = "data compatibility"
MAX_BSON_SIZE = 16 * MiB
# What can stop the incremental sync is a change event too large to send, not a large document. An
# event is its document, ~0.5 KB of names and times, and the document's _id three times more (the
# event's key, and its resume token, which hex-encodes it); the getMore reply that carries it holds the
# token once more: about five times the _id over the document's own size. A reply may be 16 MiB + 16 KiB,
# and the sync's stream leaves out updateDescription (tasks/sync/events.py change_stream_pipeline), so a
# 16 MiB document's insert, update and replace all go through unless its _id is over ~3 KB. Measured here:
# beside a 16 MiB document, an _id string of 3,147 characters went through and 3,155 did not on 6.0.5
# (3,155 / 3,163 on 5.0.4, 5,381 / 5,388 on 4.2.6); with a small _id, events of 16 MiB documents went
# through on 4.2.6, 4.4.2, 5.0.4 and 6.0.5 (with updateDescription, the update's event was 32 MB and failed).
EVENT_REPLY_LIMIT = MAX_BSON_SIZE + 16 * 1024
EVENT_ID_COPIES = 5
EVENT_OVERHEAD = 1024  # names and times, with room for long database and collection names
# a document whose {_id: ...} is at most this size cannot make an event too large, whatever its own size
SAFE_ID_BYTES = (EVENT_REPLY_LIMIT - MAX_BSON_SIZE - EVENT_OVERHEAD) // EVENT_ID_COPIES


# -- 12: data compatibility scan ---------------------------------------------------------------


def _documents(batch: bytes) -> Iterator[tuple[int, int]]:
    """(offset, size) of each document of a raw batch."""
    starts = document_offsets(batch)
    return ((start, end - start) for start, end in zip(starts, [*starts[1:], len(batch)]))


def _event_bytes(doc_bytes: int, id_bytes: int) -> int:
    """The reply that carries a change event of a document of this size, with this {_id: ...} size, at most."""
    return doc_bytes + EVENT_ID_COPIES * id_bytes + EVENT_OVERHEAD


# BSON types of a fixed size (double, ObjectId, bool, date, null, int32, timestamp, int64, decimal128, min
# and max key): an _id of one of them is at most 16 bytes
_FIXED_SIZE_TYPES = {0x01, 0x07, 0x08, 0x09, 0x0A, 0x10, 0x11, 0x12, 0x13, 0xFF, 0x7F}


def _index_order_type(bson_type: int) -> object:
    # numbers compare (and sort) as one type in an index; so do strings and symbols
    return "number" if bson_type in (0x01, 0x10, 0x12, 0x13) else "string" if bson_type in (0x02, 0x0E) \
        else bson_type


def _id_index_end_types(coll) -> list[int]:
    """The BSON types of the first and the last _id of the `_id` index (none: an empty collection). The
    index is sorted by type first, so every _id between two of one index-order type is of that type."""
    ends = []
    for direction in (ASCENDING, DESCENDING):
        for batch in find_raw_batches(coll, {}, {"_id": 1}, sort=[("_id", direction)], limit=1):
            ends += [batch[4]] if batch else []  # {_id: ...}'s first element's type
    return ends


def fixed_size_ids(coll) -> bool:
    """Every _id of the collection is of one fixed-size type (ObjectId, a number, a date...): read from
    the two ends of its `_id` index alone. An empty collection's are."""
    ends = _id_index_end_types(coll)
    return all(t in _FIXED_SIZE_TYPES for t in ends) and len({_index_order_type(t) for t in ends}) <= 1


def documents_too_large_for_an_event(spec: MigrationSpec, plan: CollectionPlan,
                                     source_version: str = "6.0") -> tuple[int, int]:
    """(how many documents a change event could not carry, the largest of them in bytes). None when the
    collection's _ids are of one fixed-size type (the `_id` index's two ends tell); otherwise every
    document is sized, by the server from 4.4 (0.63-0.70 s at 500,000 documents here, where reading the
    whole `_id` index, covered, for its largest _id took 0.64-0.89 s: bench/precheck.py). Before 4.4
    the client reads the `_id` index first, and the documents only when an _id is over SAFE_ID_BYTES:
    it would read them whole over the network."""
    coll = open_client(spec.source.resolve())[plan.source_db][plan.data_collection]
    if fixed_size_ids(coll):
        return 0, 0
    if version_tuple(source_version) >= (4, 4):
        out = list(coll.aggregate([
            {"$project": {"_id": 0, "size": {"$bsonSize": "$$ROOT"}, "id": {"$bsonSize": {"_id": "$_id"}}}},
            {"$match": {"$expr": {"$gt": [{"$add": ["$size", {"$multiply": [EVENT_ID_COPIES, "$id"]}]},
                                          EVENT_REPLY_LIMIT - EVENT_OVERHEAD]}}},
            {"$group": {"_id": None, "n": {"$sum": 1}, "max": {"$max": "$size"}}},
        ]))
        return (out[0]["n"], out[0]["max"]) if out else (0, 0)
    largest_id = max((size for batch in find_raw_batches(coll, {}, {"_id": 1}).hint([("_id", ASCENDING)])
                      for _, size in _documents(batch)), default=0)
    if largest_id <= SAFE_ID_BYTES:
        return 0, 0
    over = []
    at_least = EVENT_REPLY_LIMIT - _event_bytes(0, largest_id)  # no smaller document can be too large
    for batch in find_raw_batches(coll, {}):
        for start, size in _documents(batch):
            if size > at_least:
                id_bytes = len(bson.encode({"_id": bson.decode(batch[start:start + size])["_id"]}))
                if _event_bytes(size, id_bytes) > EVENT_REPLY_LIMIT:
                    over.append(size)
    return len(over), max(over, default=0)


# field names are what is looked at: a string value that is not valid UTF-8 must not stop the scan
_LENIENT = CodecOptions(unicode_decode_error_handler="replace")


def _bad_field_name(key: str) -> bool:
    return key.startswith("$") and key not in ("$ref", "$id", "$db") or "." in key


def _walk_names(value, path: str, found: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if _bad_field_name(k):
                found.append(f"{path}{k}")
            _walk_names(v, f"{path}{k}.", found)
    elif isinstance(value, list):
        for v in value:
            _walk_names(v, path, found)


def rejected_field_names(spec: MigrationSpec, plan: CollectionPlan, destination_version: str) -> tuple[int, list[str]]:
    """Documents whose field names a destination older than 5.0 refuses ('$'-prefixed or dotted), and
    some of the names. 5.0+ accepts them, so nothing is read then."""
    if version_tuple(destination_version) >= (5, 0):
        return 0, []
    coll = open_client(spec.source.resolve())[plan.source_db][plan.data_collection]
    count, names = 0, []
    for raw in find_raw_batches(coll, {}):
        for doc in bson.decode_all(raw, _LENIENT):
            found: list[str] = []
            _walk_names(doc, "", found)
            if found:
                count += 1
                names += [n for n in found if n not in names][: 5 - len(names)]
    return count, names


def id_types(spec: MigrationSpec, plan: CollectionPlan) -> dict[str, int]:
    """{BSON type: documents} when the collection's _id values are of several types, else {}.
    The _id index is sorted by type first, so its two ends tell whether there is more than one."""
    coll = open_client(spec.source.resolve())[plan.source_db][plan.data_collection]
    if len({_index_order_type(t) for t in _id_index_end_types(coll)}) <= 1:
        return {}
    return {d["_id"]: d["n"] for d in coll.aggregate(
        [{"$group": {"_id": {"$type": "$_id"}, "n": {"$sum": 1}}}, {"$sort": {"n": -1, "_id": 1}}])}


def expired_by_ttl(spec: MigrationSpec, plan: CollectionPlan, index: dict, now: datetime) -> int:
    """Documents a TTL index will delete as soon as the destination's TTL monitor sees them."""
    field = next(iter(index["key"]))
    cutoff = now - timedelta(seconds=int(index["expireAfterSeconds"]))
    query = {field: {"$lt": cutoff}}
    if index.get("partialFilterExpression"):
        query = {"$and": [query, index["partialFilterExpression"]]}
    coll = open_client(spec.source.resolve())[plan.source_db][plan.source_name]
    return coll.count_documents(query)


def views_without_source(spec: MigrationSpec, plan: MigrationPlan) -> list[str]:
    """Views reading a collection that is not on the source, or not selected (empty on arrival)."""
    client = open_client(spec.source.resolve())
    selected = {p.source_ns for p in plan.collections}
    found = []
    names_by_db: dict[str, set[str]] = {}
    for v in plan.views:
        view_on = v.options.get("viewOn")
        if v.source_db not in names_by_db:
            names_by_db[v.source_db] = set(client[v.source_db].list_collection_names())
        if view_on not in names_by_db[v.source_db]:
            found.append(f"{v.source_ns} reads {v.source_db}.{view_on}, which does not exist")
        elif f"{v.source_db}.{view_on}" not in selected:
            found.append(f"{v.source_ns} reads {v.source_db}.{view_on}, which is not selected")
    return found


@check_item(DATA_COMPATIBILITY)
def check_data_compatibility(spec: MigrationSpec, plan: MigrationPlan, destination: EndpointInfo,
                             inventory: SourceInventory,
                             source: Optional[EndpointInfo] = None) -> list[CheckResult]:
    """Item 12: a scan of the source data for what would break on arrival or during the sync."""
    if inventory.error:
        return [inventory_unreadable(DATA_COMPATIBILITY, inventory)]
    rows: list[CheckResult] = []
    name = DATA_COMPATIBILITY
    collections = [c for c in inventory.collections if c.plan.kind == "collection"]

    def scan(c: CollectionFacts) -> tuple[tuple[int, int], tuple[int, list[str]], dict[str, int]]:
        # only the sync carries change events: a full run copies any document as it is
        large = documents_too_large_for_an_event(spec, c.plan, source.version if source else "6.0") \
            if spec.incremental else (0, 0)
        names = rejected_field_names(spec, c.plan, destination.version or "0")
        types = {} if "clusteredIndex" in c.plan.options else id_types(spec, c.plan)
        return large, names, types

    # the collections side by side: each scan is the server's work (or, for old versions, a read)
    with ThreadPoolExecutor(max_workers=spec.copy_options.parallel_workers) as pool:
        scans = list(pool.map(scan, collections))

    large = [f"{c.plan.source_ns}: {n} (largest {biggest / MiB:.1f} MiB)"
             for c, ((n, biggest), _, _) in zip(collections, scans) if n]
    if large:
        rows.append(warning(f"{name}: large documents",
                            "documents so near 16 MB, with an _id so large (over "
                            f"{SAFE_ID_BYTES:,} bytes), that a change event carrying one would exceed "
                            "what the server sends: " + "; ".join(large),
                            "they copy as they are, but a change to one during the incremental sync "
                            "stops it: give them a shorter _id or split them (e.g. GridFS), or keep "
                            "them unchanged until cutover"))

    bad_names = [f"{c.plan.source_ns}: {n} documents ({', '.join(names)})"
                 for c, (_, (n, names), _) in zip(collections, scans) if n]
    if bad_names:
        rows.append(failed(f"{name}: field names",
                           f"MongoDB {destination.version} refuses '$'-prefixed and dotted field names: "
                           + "; ".join(bad_names),
                           "use a destination of MongoDB 5.0 or later, or rename those fields on the source"))

    mixed = [f"{c.plan.source_ns}: " + ", ".join(f"{t} {n:,}" for t, n in types.items())
             for c, (_, _, types) in zip(collections, scans) if types]
    if mixed:
        rows.append(warning(f"{name}: mixed _id types", "_id values of several BSON types: "
                            + "; ".join(mixed[:5]),
                            "nothing to do for the copy (ranges follow BSON order); check that "
                            "applications expecting one _id type are ready for the others"))

    series = [c.plan.source_ns for c in inventory.collections if c.plan.kind == "timeseries"]
    if series and spec.incremental:
        rows.append(warning(f"{name}: time-series",
                            "time-series collections are copied, but change streams do not cover "
                            "them: writes after the copy starts are not carried over: " + listing(series),
                            "stop writes to those collections before the migration starts, or "
                            "migrate them in a separate full run at cutover"))

    orphans = views_without_source(spec, plan)
    if orphans:
        rows.append(warning(f"{name}: views", "views whose source is missing: " + "; ".join(orphans[:5]),
                            "select the collections they read, or drop the views: on the destination "
                            "they return nothing"))

    now = server_hello(open_client(spec.source.resolve()))["localTime"].replace(tzinfo=None)
    expiring = []
    for c in inventory.collections:
        if c.plan.kind != "collection":
            continue
        ttl_indexes = [ix for ix in c.indexes if "expireAfterSeconds" in ix and len(ix.get("key", {})) == 1]
        if "clusteredIndex" in c.plan.options and "expireAfterSeconds" in c.plan.options:
            # a clustered collection's own TTL works on its _id (a date)
            ttl_indexes.append({"name": "clustered _id", "key": {"_id": 1},
                                "expireAfterSeconds": c.plan.options["expireAfterSeconds"]})
        for ix in ttl_indexes:
            n = expired_by_ttl(spec, c.plan, ix, now)
            if n:
                expiring.append(f"{c.plan.source_ns}: {n:,} documents past the TTL of index "
                                f"{ix['name']} ({int(ix['expireAfterSeconds'])} s)")
    if expiring:
        rows.append(warning(f"{name}: TTL indexes",
                            "would be deleted by the destination soon after they arrive: " + "; ".join(expiring),
                            "expected if the source's TTL monitor is behind; the verification will then "
                            "count fewer documents on the destination. Delete them on the source first "
                            "for equal counts"))

    if rows:
        return rows
    return [passed(name, f"{len(inventory.collections)} collections scanned: "
                   + ("no document too large for a change event, " if spec.incremental else "")
                   + "no field name the destination refuses, one _id type each, no view without its "
                   "source, nothing past a TTL" + (f"; {len(series)} time-series" if series else ""))]
