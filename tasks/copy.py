"""Step 4: the full copy of documents, collection by collection and range by range.

Documents are read as raw BSON batches and inserted as they are (no decode, no re-encode), so what
arrives is byte for byte what was read. Each range keeps a checkpoint on the destination: a retried or
rerun range starts again from its last saved `_id`, and a range finished by an earlier run of the same
spec is not copied again. Inserts are unordered and a duplicate `_id` (a document a failed attempt had
already written) is not an error, so a retry neither loses nor duplicates documents.

A range copied in one pass from its start also hashes the bytes it read, in `_id` order (tasks/digest.py),
so that a full run's verification need not read the source's documents a second time (tasks/verify.py).
"""
from __future__ import annotations

import logging
import math
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import TypeVar

import bson
from bson import MaxKey
from bson.errors import InvalidDocument
from bson.raw_bson import _RAW_BSON_DOCUMENT_MARKER, RawBSONDocument
from pydantic import BaseModel
from pymongo import ASCENDING, CursorType
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, WriteConcernError

from mongo_migrate.blocks.errors import DocumentWriteError
from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import DUPLICATE_KEY, RAW, from_ejson, step, to_ejson, write_command
from mongo_migrate.tasks.digest import StreamHash
from mongo_migrate.tasks.namespaces import CollectionPlan
from mongo_migrate.tasks.raw_batches import find_raw_batches
from mongo_migrate.tasks.schema import create_target_collection
from mongo_migrate.tasks.state import COPY_RANGES, COPY_UNITS, SKIPPED_DOCUMENTS, state_collection
from mongo_migrate.tasks.throttle import COPY, limiter

log = logging.getLogger("mongo_migrate.copy")
T = TypeVar("T")

CHECKPOINT_EVERY_S = 5.0


class CopyRange(BaseModel):
    """A unit of the full copy: a whole collection, or an `_id` range of a big one."""

    plan: CollectionPlan
    index: int = 0
    total: int = 1
    lower_ejson: str | None = None  # inclusive, `{"_id": ...}` as Extended JSON
    upper_ejson: str | None = None  # exclusive
    estimated_docs: int = 0

    @property
    def unit_id(self) -> str:
        return f"{self.plan.source_ns}#{self.index + 1}/{self.total}"


class CopyStats(BaseModel):
    unit_id: str
    source_ns: str
    target_ns: str
    lower_ejson: str | None = None  # the range's bounds, as in CopyRange
    upper_ejson: str | None = None
    # what this attempt read from the source when it read the whole range from its start (None after a
    # resume from a checkpoint): the documents, and the hash of their bytes in the order read
    read_docs: int | None = None
    read_hash: str | None = None
    docs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    already_done: bool = False
    skipped: int = 0  # refused by the destination and recorded (on_document_error: skip)


def _capped(plan: CollectionPlan) -> bool:
    return bool(plan.options.get("capped"))


def splittable(plan: CollectionPlan) -> bool:
    # clustered collections (time-series buckets included) have no separate _id index to bound;
    # a capped collection is copied whole, in insertion order (see copy_collection_range)
    return plan.kind == "collection" and "clusteredIndex" not in plan.options and not _capped(plan)


def split_collection(spec: MigrationSpec, plan: CollectionPlan, remember: bool = True) -> list[CopyRange]:
    """Cut a big collection into about equal `_id` ranges, from a server-side sorted sample.

    The bounds are index bounds (`min`/`max`), which follow BSON order across types, so collections
    with mixed `_id` types split as safely as ObjectId ones.

    The sample is random, so the ranges are remembered on the destination (`copy_ranges`) and a
    rerun of the same spec cuts the same ones: a range checkpointed as done must cover what its
    number covers now, or the documents between the old and the new bounds would never be copied.
    """
    if not remember:
        return _cut_ranges(spec, plan)
    saved = state_collection(spec, COPY_RANGES)
    key = f"{spec.digest()}:{plan.source_ns}"
    found = saved.find_one({"_id": key})
    if found is None:
        ranges = _cut_ranges(spec, plan)
        saved.update_one({"_id": key}, {"$setOnInsert": {
            "ranges": [r.model_dump(exclude={"plan"}) for r in ranges],
            "created": datetime.now(timezone.utc),
        }}, upsert=True)
        found = saved.find_one({"_id": key})
    return [CopyRange(plan=plan, **r) for r in found["ranges"]]


def _cut_ranges(spec: MigrationSpec, plan: CollectionPlan) -> list[CopyRange]:
    coll = open_client(spec.source.resolve())[plan.source_db][plan.data_collection]
    estimated = coll.estimated_document_count()
    per_range = spec.copy_options.range_docs
    if not splittable(plan) or estimated <= per_range:
        return [CopyRange(plan=plan, estimated_docs=estimated)]
    wanted = math.ceil(estimated / per_range)
    sample_size = min(wanted * 20, 20_000)
    # RAW decodes _id values any date can hold (years past 9999 too)
    ids = [d["_id"] for d in coll.with_options(codec_options=RAW).aggregate(
        [{"$sample": {"size": sample_size}}, {"$project": {"_id": 1}}, {"$sort": {"_id": 1}}],
        allowDiskUse=True,
    )]
    bounds = []
    for i in range(1, wanted):
        candidate = ids[i * len(ids) // wanted]
        if not bounds or candidate != bounds[-1]:
            bounds.append(candidate)
    edges = [None, *bounds, None]
    total = len(edges) - 1
    return [
        CopyRange(
            plan=plan, index=i, total=total,
            lower_ejson=None if lo is None else to_ejson({"_id": lo}),
            upper_ejson=None if hi is None else to_ejson({"_id": hi}),
            estimated_docs=estimated // total,
        )
        for i, (lo, hi) in enumerate(zip(edges, edges[1:]))
    ]


def _prefetch(batches: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Read the next batches in a thread while the current one is written."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def reader() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(b)
            q.put(done)
        except BaseException as exc:  # handed to the writer, which raises it
            q.put(exc)

    t = threading.Thread(target=reader, daemon=True, name="copy-prefetch")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def read_raw_range(coll: Collection, plan: CollectionPlan, lower: dict | None, upper: dict | None,
                   batch_docs: int, projection: dict | None = None) -> Iterator[bytes]:
    """The raw server batches of a collection's documents from `lower` (inclusive, `{"_id": v}`) to
    `upper` (exclusive), in `_id` order: the one reader of the copy, verification and the cutover's
    re-copy. Each batch is the documents' bytes end to end, at most `batch_docs` documents and never
    over 16 MB, so memory stays bounded whatever the documents' sizes.

    A capped collection is read whole in natural (insertion) order, which is part of its data. Time-
    series buckets are clustered (natural order is `_id` order) and list no `_id` index on 5.0 to hint
    or bound: `lower` becomes a filter, exact as bucket `_id`s are all ObjectIds. Anything else walks
    the `_id` index (the clustered one too) with index bounds: min/max follow BSON order across types,
    where a {$gte: ...} query would only match the bound's own type."""
    if _capped(plan):
        return iter(find_raw_batches(coll, {}, projection, batch_size=batch_docs, cursor_type=CursorType.EXHAUST))
    if plan.kind == "timeseries":
        query = {} if lower is None else {"_id": {"$gte": lower["_id"]}}
        return iter(find_raw_batches(coll, query, projection, batch_size=batch_docs,
                                          cursor_type=CursorType.EXHAUST))
    cursor = find_raw_batches(coll, {}, projection, batch_size=batch_docs, cursor_type=CursorType.EXHAUST)
    cursor = cursor.hint([("_id", ASCENDING)])
    if lower is not None:
        cursor = cursor.min(list(lower.items()))
    if upper is not None:
        cursor = cursor.max(list(upper.items()))
    elif lower is not None:
        return with_max_key(cursor, coll, projection)
    return iter(cursor)


def with_max_key(batches: Iterable[bytes], coll: Collection, projection: dict | None = None) -> Iterator[bytes]:
    """The batches of an `_id` index scan from `min` with no `max`, and the document whose _id is
    MaxKey: a regular index's scan stops before it (seen on 6.0), a clustered one's does not."""
    last = b""
    for batch in batches:
        last = batch or last
        yield batch
    if not last or last_document(last)["_id"] != MaxKey():
        yield from find_raw_batches(coll, {"_id": MaxKey()}, projection)


def _already_there(error: dict) -> bool:
    """A duplicate `_id`: the document was written by an earlier attempt. A duplicate on another
    unique index is a refused document, not one that is already there."""
    if error.get("code") != DUPLICATE_KEY:
        return False
    key_pattern = error.get("keyPattern")
    if key_pattern is not None:
        return list(key_pattern) == ["_id"]
    return " index: _id_ " in error.get("errmsg", "")


class _DocumentSequence:
    """BSON documents laid end to end, as `find_raw_batches` returns a server batch.

    bson's encoder writes the bytes of an object marked as a RawBSONDocument into a message as they
    are, so in an insert command's `documents` this one object becomes the whole OP_MSG document
    sequence, which the server reads as the documents it holds. The batch goes from the source's
    reply to the destination without a Python object per document: that per-document work was most
    of the copy's client CPU (bench/full_copy.py). If a pymongo release stops passing the bytes
    through, `insert_raw_stream` notices at once and falls back to one RawBSONDocument per document.
    """

    _type_marker = _RAW_BSON_DOCUMENT_MARKER
    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


_SEQUENCE_PASSES_THROUGH = True
_BSON_SIZE = struct.Struct("<i").unpack_from


def document_offsets(stream: bytes) -> list[int]:
    """Where each document of a stream of BSON documents starts (each begins with its length)."""
    offsets, pos, end = [], 0, len(stream)
    while pos < end:
        offsets.append(pos)
        pos += _BSON_SIZE(stream, pos)[0]
    if pos != end:
        raise bson.errors.InvalidBSON("a document's length runs past the end of its batch")
    return offsets


def insert_raw_stream(target: Collection, stream: bytes, target_ns: str,
                      skip_refused: Callable[[object, dict], None] | None = None) -> tuple[int, int]:
    """Insert a stream of raw BSON documents unordered, bytes unchanged; documents already there are
    not an error. Returns (documents in the stream, documents inserted).

    A document refused for another reason raises DocumentWriteError, or is handed to `skip_refused`
    (its _id and the write error) when refused documents are to be skipped."""
    global _SEQUENCE_PASSES_THROUGH
    offsets = document_offsets(stream)
    if not offsets:
        return 0, 0
    if not _SEQUENCE_PASSES_THROUGH:
        return len(offsets), _insert_documents(target, stream, offsets, target_ns, skip_refused)
    inserted = 0
    for first, last in _chunks(offsets, len(stream)):
        end = offsets[last] if last < len(offsets) else len(stream)
        chunk = stream if (first, end) == (0, len(stream)) else stream[offsets[first]:end]
        try:
            reply = write_command(target.database, "insert", target.name, documents=[_DocumentSequence(chunk)],
                                  ordered=False, bypassDocumentValidation=True)
        except (InvalidDocument, TypeError) as exc:
            _SEQUENCE_PASSES_THROUGH = False
            log.warning("this pymongo does not pass raw document sequences through (%s); copying "
                        "document by document", exc)
            return len(offsets), inserted + _insert_documents(
                target, stream, offsets[first:], target_ns, skip_refused)
        if reply.get("writeConcernError"):
            raise WriteConcernError(reply["writeConcernError"].get("errmsg", "write concern error"),
                                    reply["writeConcernError"].get("code"), reply)
        inserted += reply.get("n", 0)
        refused = [e for e in reply.get("writeErrors", []) if not _already_there(e)]
        _report_refused(refused, lambda e: stream_document(stream, offsets[first + e["index"]]),
                        target_ns, skip_refused)
    return len(offsets), inserted


# what one insert command may carry: pymongo refuses a command over the maximum BSON object size
# (16 MiB on every server version) plus 16 KiB; a server batch is under it, a recopy's list may not be
MAX_COMMAND_DOCUMENTS = 16 * 1024 * 1024


def _chunks(offsets: list[int], end: int, limit: int = MAX_COMMAND_DOCUMENTS) -> Iterator[tuple[int, int]]:
    """Runs of consecutive documents [first, last) of at most `limit` bytes (or one document)."""
    if end <= limit:
        yield 0, len(offsets)
        return
    first = 0
    for i in range(len(offsets)):
        stop = offsets[i + 1] if i + 1 < len(offsets) else end
        if i > first and stop - offsets[first] > limit:
            yield first, i
            first = i
    yield first, len(offsets)


def stream_document(stream: bytes, offset: int) -> RawBSONDocument:
    return RawBSONDocument(stream[offset:offset + _BSON_SIZE(stream, offset)[0]], RAW)


def last_document(stream: bytes) -> RawBSONDocument:
    return stream_document(stream, document_offsets(stream)[-1])


def _report_refused(refused: list[dict], document_of: Callable[[dict], RawBSONDocument], target_ns: str,
                    skip_refused: Callable[[object, dict], None] | None) -> None:
    if refused and skip_refused is not None:
        for error in refused:
            skip_refused(document_of(error)["_id"], error)
    elif refused:
        first = refused[0]
        doc_id = document_of(first)["_id"] if "index" in first else None
        raise DocumentWriteError(target_ns, doc_id, first.get("code"), first.get("errmsg", ""))


def _insert_documents(target: Collection, stream: bytes, offsets: list[int], target_ns: str,
                      skip_refused: Callable[[object, dict], None] | None) -> int:
    """The same insert with pymongo's bulk API, one RawBSONDocument per document."""
    docs = [stream_document(stream, o) for o in offsets]
    try:
        target.insert_many(docs, ordered=False, bypass_document_validation=True)
        return len(docs)
    except BulkWriteError as exc:
        if exc.details.get("writeConcernErrors"):
            raise  # not durable yet: the range's retry writes them again (as the raw path does)
        refused = [e for e in exc.details.get("writeErrors", []) if not _already_there(e)]
        _report_refused(refused, lambda e: docs[e["index"]], target_ns, skip_refused)
        return exc.details.get("nInserted", 0)


def copy_collection_range(spec: MigrationSpec, rng: CopyRange) -> CopyStats:
    """Copy one range of one collection, resuming from its checkpoint."""
    plan = rng.plan
    started = time.monotonic()
    stats = CopyStats(unit_id=rng.unit_id, source_ns=plan.source_ns, target_ns=plan.target_ns,
                      lower_ejson=rng.lower_ejson, upper_ejson=rng.upper_ejson)
    dest = open_client(spec.destination.resolve())
    units = state_collection(spec, COPY_UNITS)
    key = f"{spec.digest()}:{rng.unit_id}"
    state = units.find_one({"_id": key}) or {}
    if state.get("done"):
        stats.docs, stats.bytes, stats.already_done = state.get("docs", 0), state.get("bytes", 0), True
        return stats

    source = open_client(spec.source.resolve())[plan.source_db].get_collection(
        plan.data_collection, codec_options=RAW
    )
    target = dest[plan.target_db].get_collection(plan.target_data_collection, codec_options=RAW)
    lower = from_ejson(state["resume_from"]) if state.get("resume_from") else (
        from_ejson(rng.lower_ejson) if rng.lower_ejson else None
    )
    upper = from_ejson(rng.upper_ejson) if rng.upper_ejson else None
    batch_docs = spec.copy_options.batch_docs
    capped = _capped(plan)
    if capped:
        # insertion (natural) order is part of a capped collection's data. An attempt that failed
        # part way may have left documents out of order (unordered inserts go on past a refused one),
        # so every attempt empties the target (it holds only this run's documents) and starts over
        target.delete_many({})
        state, lower = {}, None
    batches = read_raw_range(source, plan, lower, upper, batch_docs)
    skip_refused = None
    if spec.copy_options.on_document_error == "skip":
        skipped = state_collection(spec, SKIPPED_DOCUMENTS)

        def record_skipped(doc_id: object, error: dict) -> None:
            stats.skipped += 1
            log.warning("%s: skipped document _id=%r, refused by the destination (code %s): %s",
                        plan.target_ns, doc_id, error.get("code"), error.get("errmsg", ""))
            id_ejson = to_ejson(doc_id)
            skipped.update_one({"_id": f"{spec.digest()}:{plan.target_ns}:{id_ejson}"}, {"$set": {
                "run": spec.digest(), "source_ns": plan.source_ns, "target_ns": plan.target_ns,
                "id_ejson": id_ejson, "doc_id": doc_id, "code": error.get("code"),
                "error": error.get("errmsg", ""), "at": datetime.now(timezone.utc),
            }}, upsert=True)
        skip_refused = record_skipped

    docs_before, bytes_before = state.get("docs", 0), state.get("bytes", 0)
    # the hash of one pass over the whole range; a resumed attempt's pass is not one, and hashes nothing
    whole_range = not state.get("resume_from")
    read_hash, read_docs = StreamHash(), 0
    if whole_range:
        # each batch is hashed by the reading thread (hashlib lets go of the GIL for long inputs), while
        # the previous one's insert is in flight
        batches = read_hash.passing(batches)
    last_checkpoint = time.monotonic()
    # the run's load cap on the source (tasks/throttle.py): each batch read books its slot; the
    # prefetch reads at most two batches ahead of the slots
    pace = limiter(spec)
    for stream in _prefetch(batches):
        if not stream:
            continue
        # count what was inserted: after a resume, documents already there are not counted twice
        in_stream, inserted = insert_raw_stream(target, stream, plan.target_ns, skip_refused)
        pace.take(COPY, in_stream, len(stream))
        stats.docs += inserted
        stats.bytes += len(stream)
        read_docs += in_stream
        if time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
            units.update_one({"_id": key}, {"$set": {
                "resume_from": None if capped else to_ejson({"_id": last_document(stream)["_id"]}),
                "docs": docs_before + stats.docs, "bytes": bytes_before + stats.bytes,
                "updated": datetime.now(timezone.utc),
            }}, upsert=True)
            last_checkpoint = time.monotonic()
    stats.docs += docs_before
    stats.bytes += bytes_before
    if whole_range:
        stats.read_docs, stats.read_hash = read_docs, read_hash.hexdigest()
    units.update_one({"_id": key}, {"$set": {
        "done": True, "docs": stats.docs, "bytes": stats.bytes, "target_ns": plan.target_ns,
        "updated": datetime.now(timezone.utc),
    }}, upsert=True)
    stats.seconds = time.monotonic() - started
    log.info("copied %s: %d documents, %.1f MB in %.1fs", rng.unit_id, stats.docs, stats.bytes / 1e6,
             stats.seconds)
    return stats


def prepare_copy(spec: MigrationSpec, plans: list[CollectionPlan]) -> list[CopyRange]:
    """The copy's one step before the data: every target collection created with its options
    (tasks/schema.py), and each collection cut into its ranges, `parallel_workers` collections at a time.

    One task for all the collections, not two per collection: a task run costs the Prefect client and
    server several milliseconds of CPU each, and with many small collections those runs were most of
    the copy (bench/full_copy.py --collections 200)."""
    def prepare(plan: CollectionPlan) -> list[CopyRange]:
        create_target_collection(spec, plan)
        return split_collection(spec, plan)

    with ThreadPoolExecutor(max_workers=max(1, spec.copy_options.parallel_workers),
                            thread_name_prefix="prepare") as pool:
        return [r for ranges in pool.map(prepare, plans) for r in ranges]


prepare_copy_task = step(prepare_copy)


def copy_collection_ranges(spec: MigrationSpec, rngs: list[CopyRange]) -> list[CopyStats]:
    """copy_collection_range for each of `rngs` in turn: a copy unit, one range of a collection, or
    several small collections copied whole (copy_units)."""
    return [copy_collection_range(spec, rng) for rng in rngs]


# at most this many units per copy worker are made of small whole collections
SMALL_UNITS_PER_WORKER = 4


def copy_units(ranges: list[CopyRange], spec: MigrationSpec) -> list[list[CopyRange]]:
    """The copy's tasks, biggest first: each range of a collection alone, except that collections small
    enough to be copied whole (at most a tenth of `range_docs`), when there are more of them than
    SMALL_UNITS_PER_WORKER per worker, share tasks of about equal size. A task run costs the Prefect
    client and server several milliseconds of CPU, more than copying a small collection
    (bench/full_copy.py --collections 200)."""
    workers = max(1, spec.copy_options.parallel_workers)
    small = [r for r in ranges if r.lower_ejson is None and r.upper_ejson is None
             and r.estimated_docs <= spec.copy_options.range_docs // 10]
    wanted = SMALL_UNITS_PER_WORKER * workers
    if len(small) <= wanted:
        small = []
    shared_ids = {id(r) for r in small}
    units = [[r] for r in ranges if id(r) not in shared_ids]
    shared: list[list[CopyRange]] = [[] for _ in range(min(wanted, len(small)))]
    load = [0] * len(shared)
    for rng in sorted(small, key=lambda r: -r.estimated_docs):  # each to the lightest unit so far
        i = load.index(min(load))
        shared[i].append(rng)
        load[i] += rng.estimated_docs + 1
    units += shared
    units.sort(key=lambda unit: -sum(r.estimated_docs for r in unit))
    return units


# a refused document fails at once (tasks/common.py worth_retrying); an outage gets 3 tries over ~40 s
copy_collection_ranges_task = step(copy_collection_ranges, retries=3, retry_delay_seconds=(2, 10, 30))
