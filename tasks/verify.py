"""Step 6: verification. Is every selected collection on the destination what it is on the source?

For each collection: the document count and an order-independent digest of every document's exact
bytes (tasks/digest.py), computed over `_id` ranges on both sides at once; the collection options, the
index specs, and view definitions.

In a full run the copy has hashed each range of the source as it read it, in `_id` order (tasks/copy.py),
so the source's documents are not read again: the destination's range, read in the same order, must
hash the same (a collection copied as one range is hashed by the destination server itself,
`dbHash`), and the source's documents in the range are counted from its `_id` index alone (a
covered scan), which is independent of the copy and so catches a document the copy never read. A range
where either differs, one the copy resumed or an earlier run finished, and every run of `verify` itself
digest both sides as above.

A range whose digests differ is digested again after a delay (a change still in flight, e.g. from the
incremental sync, settles) and, if it still differs, narrowed down to the exact `_id`s that are
missing, extra or different: documents are grouped by a hash of their `_id` into buckets, only the
buckets whose digests differ are held in memory, and the differences found are read once more by
`_id` before they are reported. Everything is streamed as raw batches: memory does not grow with the
collection.
"""
from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple

import bson
from bson import json_util
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.json_util import JSONMode, JSONOptions
from pydantic import BaseModel, computed_field
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import RAW, from_ejson, step, to_ejson
from mongo_migrate.tasks.copy import (CopyRange, CopyStats, document_offsets, read_raw_range, split_collection,
                                      splittable)
from mongo_migrate.tasks.digest import DIGEST_MOD, StreamHash, digest_raw_batch, document_hash
from mongo_migrate.tasks.namespaces import CollectionPlan, NamespaceMapper
from mongo_migrate.tasks.raw_batches import find_raw_batches
from mongo_migrate.tasks.schema import map_view_pipeline, view_source_name
from mongo_migrate.tasks.state import SKIPPED_DOCUMENTS, state_collection

Side = Literal["source", "destination"]
SIDES: tuple[Side, Side] = ("source", "destination")

VERIFY_BATCH_DOCS = 1000
ID_BATCH_DOCS = 50_000  # _ids only: a batch stays far under 16 MB
LIST_LIMIT = 100  # differences listed per collection
NARROW_BUDGET = 100_000  # source documents held as {_id: hash} while narrowing one range
RECHECK_DELAY_S = 5.0

# _ids decoded for people and for the skipped-documents records: dates beyond year 9999 stay DatetimeMS
_DECODED = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_DISPLAY_JSON = JSONOptions(json_mode=JSONMode.RELAXED, datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_INT32 = struct.Struct("<i")
# options listCollections reports that say nothing about the collection's content or behaviour
_IGNORED_OPTIONS = {"uuid", "autoIndexId"}


# -- raw BSON ------------------------------------------------------------------------------------

_FIXED_SIZE = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8,
               0x13: 16, 0xFF: 0, 0x7F: 0}


def _value_size(raw: bytes, kind: int, pos: int) -> int:
    size = _FIXED_SIZE.get(kind)
    if size is not None:
        return size
    if kind in (0x02, 0x0D, 0x0E):  # string, code, symbol
        return 4 + _INT32.unpack_from(raw, pos)[0]
    if kind in (0x03, 0x04, 0x0F):  # document, array, code with scope
        return _INT32.unpack_from(raw, pos)[0]
    if kind == 0x05:  # binary: length, subtype, bytes
        return 5 + _INT32.unpack_from(raw, pos)[0]
    if kind == 0x0B:  # regex: two C strings
        return raw.index(b"\x00", raw.index(b"\x00", pos) + 1) + 1 - pos
    if kind == 0x0C:  # DBPointer: string, ObjectId
        return 4 + _INT32.unpack_from(raw, pos)[0] + 12
    raise ValueError(f"unknown BSON type 0x{kind:02x}")


def id_element(raw: bytes, start: int) -> bytes:
    """The `_id` of the document at `start`, as its type byte and value bytes (an exact identity)."""
    pos, end = start + 4, start + _INT32.unpack_from(raw, start)[0] - 1
    while pos < end:
        kind = raw[pos]
        name_end = raw.index(b"\x00", pos + 1)
        value = name_end + 1
        size = _value_size(raw, kind, value)
        if raw[pos + 1:name_end] == b"_id":
            return raw[pos:pos + 1] + raw[value:value + size]
        pos = value + size
    raise ValueError("document without _id")


def iter_documents(raw: bytes) -> Iterator[tuple[bytes, int]]:
    """(_id element, document hash) of each document of a raw batch."""
    view = memoryview(raw)
    pos, end = 0, len(raw)
    while pos < end:
        size = _INT32.unpack_from(raw, pos)[0]
        yield id_element(raw, pos), document_hash(view[pos:pos + size])
        pos += size


def id_value(element: bytes, raw_documents: bool = True):
    """The `_id` value of an `id_element` (sub-documents kept as raw bytes when raw_documents)."""
    body = element[:1] + b"_id\x00" + element[1:]
    doc = _INT32.pack(len(body) + 5) + body + b"\x00"
    return bson.decode(doc, RAW if raw_documents else _DECODED)["_id"]


def id_display(element: bytes) -> str:
    """The `_id` as relaxed Extended JSON, for people."""
    return json_util.dumps(id_value(element, raw_documents=False), json_options=_DISPLAY_JSON)


def skipped_key(value) -> str:
    """How a skipped document's `_id` is recorded in META_DATABASE.skipped_documents."""
    return to_ejson(value)


# -- reading one side ----------------------------------------------------------------------------

def _collection(spec: MigrationSpec, plan: CollectionPlan, side: Side) -> Collection:
    if side == "source":
        return open_client(spec.source.resolve())[plan.source_db].get_collection(
            plan.data_collection, codec_options=RAW)
    return open_client(spec.destination.resolve())[plan.target_db].get_collection(
        plan.target_data_collection, codec_options=RAW)


class RangeDigest(NamedTuple):
    count: int
    digest: int
    bytes: int


def range_batches(spec: MigrationSpec, rng: CopyRange, side: Side, ids_only: bool = False) -> Iterator[bytes]:
    """The raw batches of one `_id` range on one side, bounded as the copy bounds it; with `ids_only`,
    documents of their `_id` alone, which the server reads from the `_id` index (a covered scan)."""
    return read_raw_range(_collection(spec, rng.plan, side), rng.plan,
                          from_ejson(rng.lower_ejson) if rng.lower_ejson else None,
                          from_ejson(rng.upper_ejson) if rng.upper_ejson else None,
                          ID_BATCH_DOCS if ids_only else VERIFY_BATCH_DOCS, {"_id": 1} if ids_only else None)


def count_range_ids(spec: MigrationSpec, rng: CopyRange) -> int:
    """The source's documents in one range, counted from the `_id` index without reading them: the
    server counts a whole collection's index keys itself (a COUNT_SCAN, not the collection's stored
    count, which an unclean shutdown can leave wrong); a range's `_id`s are sent and counted here."""
    if rng.lower_ejson is None and rng.upper_ejson is None:
        try:
            return int(_collection(spec, rng.plan, "source").database.command(
                "count", rng.plan.data_collection, query={}, hint={"_id": 1})["n"])
        except OperationFailure:
            pass  # no _id index to hint: counted from the documents' _ids below
    return sum(len(document_offsets(raw)) for raw in range_batches(spec, rng, "source", ids_only=True))


def hash_range(spec: MigrationSpec, rng: CopyRange, side: Side) -> str:
    """The hash of one range's bytes on one side, in `_id` order (tasks/digest.py:StreamHash)."""
    stream = StreamHash()
    for raw in range_batches(spec, rng, side):
        stream.update(raw)
    return stream.hexdigest()


def destination_range_hash(spec: MigrationSpec, rng: CopyRange) -> str:
    """hash_range of the destination; a range that is the whole collection is hashed by the server."""
    whole = rng.lower_ejson is None and rng.upper_ejson is None
    server_hash = destination_collection_hash(spec, rng.plan) if whole else None
    return server_hash if server_hash is not None else hash_range(spec, rng, "destination")


def destination_collection_hash(spec: MigrationSpec, plan: CollectionPlan) -> str | None:
    """The target collection's StreamHash as the destination computes it: `dbHash` is the MD5 of its
    documents' bytes in `_id` index order, the order the copy reads a range in, so a collection the copy
    read whole is checked without its bytes crossing the network (a copy's last verification read
    them all back before). None where the server does not give one (a mongos, a collection without an
    `_id` index, a user without the dbHash action): the range is then read as before.

    dbHash holds the target database's lock without yielding while it hashes, so it only runs where
    nothing else writes: a full run's last step, before anyone is told the destination is ready. (So
    a collection cannot be hashed while others of its database are still copied or indexed: 6.0
    refuses the snapshot read concern, which would take intent locks, for dbHash outside a
    transaction, and a plain one held a write to another collection for the whole 0.9 s hash of
    200,000 documents.)"""
    coll = plan.target_data_collection
    try:
        reply = open_client(spec.destination.resolve())[plan.target_db].command(
            "dbHash", collections=[coll])
    except OperationFailure:
        return None
    value = reply.get("collections", {}).get(coll)
    return value if isinstance(value, str) and len(value) == 32 else None


class CopiedRange(NamedTuple):
    docs: int
    hash: str
    bytes: int


def copied_ranges(plan: CollectionPlan, copied: list[CopyStats]) -> tuple[list[CopyRange], list[CopiedRange]] | None:
    """The ranges this run's copy cut the collection into, with what it read in each; None unless
    they cover the whole collection and each was read whole, in one pass, by this run."""
    if not splittable(plan) or not copied:
        return None
    by_lower = {s.lower_ejson: s for s in copied if s.source_ns == plan.source_ns}
    ranges, read = [], []
    lower: str | None = None
    for _ in by_lower:  # follow the bounds from the open start: each range once, ending open
        s = by_lower.get(lower)
        if s is None or (ranges and lower is None) or s.already_done or s.read_hash is None:
            return None
        ranges.append(CopyRange(plan=plan, index=len(ranges), total=len(by_lower),
                                lower_ejson=s.lower_ejson, upper_ejson=s.upper_ejson))
        read.append(CopiedRange(s.read_docs, s.read_hash, s.bytes))
        lower = s.upper_ejson
    return (ranges, read) if lower is None else None


def digest_range(spec: MigrationSpec, rng: CopyRange, side: Side) -> RangeDigest:
    count = total = size = 0
    for raw in range_batches(spec, rng, side):
        n, s = digest_raw_batch(raw)
        count, total, size = count + n, total + s, size + len(raw)
    return RangeDigest(count, total % DIGEST_MOD, size)


def _bucket_of(element: bytes, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(element, digest_size=8).digest(), "little") % buckets


def bucket_digests(spec: MigrationSpec, rng: CopyRange, side: Side, buckets: int) -> list[tuple[int, int]]:
    """(count, digest) per `_id` bucket of one range."""
    counts, sums = [0] * buckets, [0] * buckets
    for raw in range_batches(spec, rng, side):
        for element, h in iter_documents(raw):
            b = _bucket_of(element, buckets)
            counts[b] += 1
            sums[b] += h
    return [(c, s % DIGEST_MOD) for c, s in zip(counts, sums)]


# -- results -------------------------------------------------------------------------------------

class DocumentDifference(BaseModel):
    id: str  # the _id, relaxed Extended JSON
    kind: Literal["missing", "extra", "different", "skipped"]


class CollectionVerification(BaseModel):
    source_ns: str
    target_ns: str
    kind: str
    source_docs: int = 0
    target_docs: int = 0
    source_digest: str = ""
    target_digest: str = ""
    ranges: int = 0
    mismatched_ranges: int = 0  # still different after the recheck
    rechecked_ranges: int = 0  # different at first, so read again after the delay
    missing: int = 0
    extra: int = 0
    different: int = 0
    skipped: int = 0  # missing, but recorded as skipped by copy_options.on_document_error: skip
    differences: list[DocumentDifference] = []  # the first LIST_LIMIT
    problems: list[str] = []  # options, indexes, views, ranges left unexplained
    notes: list[str] = []  # differences that lose nothing (an extra index on the target)
    seconds: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def equal(self) -> bool:
        return not self.problems and not (self.missing or self.extra or self.different)

    def document_differences(self) -> str:
        """"1 missing, 2 extra (missing _id 7, extra _id 9, ...)", or "" when the documents are equal."""
        counts = [f"{n} {k}" for n, k in ((self.missing, "missing"), (self.extra, "extra"),
                                          (self.different, "different")) if n]
        if not counts:
            return ""
        ids = ", ".join(f"{d.kind} _id {d.id}" for d in self.differences if d.kind != "skipped")
        return ", ".join(counts) + (f" ({ids[:300]})" if ids else "")

    def describe(self) -> str:
        """One line on what differs."""
        named = self.document_differences()
        parts = ([named] if named else []) + self.problems
        return f"{self.source_ns} -> {self.target_ns}: " + ("; ".join(parts) or "equal")


# -- comparisons ---------------------------------------------------------------------------------

def _canonical(doc: dict) -> bytes:
    """Bytes to compare by: top-level fields in name order, nested order kept (it can matter)."""
    return bson.encode(dict(sorted(doc.items())))


def _collection_info(coll: Collection) -> dict | None:
    found = list(coll.database.list_collections(filter={"name": coll.name}))
    return found[0] if found else None


def compare_options(spec: MigrationSpec, plan: CollectionPlan) -> list[str]:
    source = {k: v for k, v in plan.options.items() if k not in _IGNORED_OPTIONS}
    if plan.kind == "view":
        # the definition create_views wrote: mapped names in viewOn and in the pipeline
        mapper = NamespaceMapper(spec)
        source["viewOn"] = view_source_name(plan, source["viewOn"], mapper)
        if "pipeline" in source:
            source["pipeline"] = map_view_pipeline(source["pipeline"], plan, mapper)
    dest = open_client(spec.destination.resolve())[plan.target_db][plan.target_name]
    info = _collection_info(dest)
    if info is None:
        return [f"the target {'view' if plan.kind == 'view' else 'collection'} does not exist"]
    if info.get("type", "collection") != plan.kind:
        return [f"the target is a {info.get('type', 'collection')}, the source a {plan.kind}"]
    target = {k: v for k, v in info.get("options", {}).items() if k not in _IGNORED_OPTIONS}
    for options in (source, target):
        if "validator" in options:  # collMod writes the defaults out, create does not
            options.setdefault("validationLevel", "strict")
            options.setdefault("validationAction", "error")
    if _canonical(source) == _canonical(target):
        return []
    what = "view definition differs" if plan.kind == "view" else "collection options differ"
    names = sorted(k for k in set(source) | set(target)
                   if k not in source or k not in target or _canonical({k: source[k]}) != _canonical({k: target[k]}))
    return [f"{what}: {', '.join(names)}"]


def _index_spec(ix: dict) -> dict:
    spec = {k: v for k, v in ix.items() if k != "ns"}
    if "2d" in spec.get("key", {}).values():
        # 5.0+ store a 2d index's bounds as doubles, whatever number they were given (4.2 and 4.4 keep
        # its type): a 4.x source's `min: -180` is `min: -180.0` on the target, the same index
        for bound in ("min", "max"):
            if isinstance(spec.get(bound), int) and not isinstance(spec[bound], bool):
                spec[bound] = float(spec[bound])
    return spec


def _index_specs(coll: Collection) -> dict[str, bytes]:
    return {ix["name"]: _canonical(_index_spec(ix)) for ix in coll.list_indexes()}


def compare_indexes(spec: MigrationSpec, plan: CollectionPlan) -> tuple[list[str], list[str]]:
    """(problems, notes): a missing or different index is a problem; an extra index on a target
    that existed before the migration loses nothing and is only noted."""
    source = _index_specs(open_client(spec.source.resolve())[plan.source_db][plan.source_name])
    target = _index_specs(open_client(spec.destination.resolve())[plan.target_db][plan.target_name])
    problems = []
    for label, names in (("missing on the target", sorted(set(source) - set(target))),
                         ("different", sorted(n for n in set(source) & set(target) if source[n] != target[n]))):
        if names:
            problems.append(f"indexes {label}: {', '.join(names)}")
    extra = sorted(set(target) - set(source))
    return problems, ([f"indexes only on the target: {', '.join(extra)}"] if extra else [])


class _RangeDifferences(NamedTuple):
    missing: list[bytes]
    extra: list[bytes]
    different: list[bytes]
    complete: bool


def narrow_range(spec: MigrationSpec, rng: CopyRange, larger_side: int, pool: ThreadPoolExecutor,
                 budget: int = NARROW_BUDGET) -> _RangeDifferences:
    """The `_id`s that differ in one range: bucket digests on both sides, then the differing buckets
    held as {_id: hash} (the source side only, within `budget`) and matched against the destination."""
    buckets = 1
    while buckets < min(larger_side // 16, 1 << 16):
        buckets *= 2
    src_f, dst_f = (pool.submit(bucket_digests, spec, rng, side, buckets) for side in SIDES)
    src, dst = src_f.result(), dst_f.result()
    mismatched = [b for b in range(buckets) if src[b] != dst[b]]
    chosen: set[int] = set()
    held = 0
    for b in mismatched:
        if chosen and held + src[b][0] > budget:
            break
        chosen.add(b)
        held += src[b][0]
    source_docs: dict[bytes, int] = {}
    for raw in range_batches(spec, rng, "source"):
        for element, h in iter_documents(raw):
            if _bucket_of(element, buckets) in chosen:
                source_docs[element] = h
    extra, different = [], []
    for raw in range_batches(spec, rng, "destination"):
        for element, h in iter_documents(raw):
            if _bucket_of(element, buckets) in chosen:
                theirs = source_docs.pop(element, None)
                if theirs is None:
                    extra.append(element)
                elif theirs != h:
                    different.append(element)
    return _RangeDifferences(list(source_docs), extra, different, len(chosen) == len(mismatched))


def _current_hashes(spec: MigrationSpec, plan: CollectionPlan, side: Side, elements: list[bytes]) -> dict[bytes, int]:
    coll = _collection(spec, plan, side)
    found: dict[bytes, int] = {}
    for start in range(0, len(elements), 1000):
        values = [id_value(e) for e in elements[start:start + 1000]]
        for raw in find_raw_batches(coll, {"_id": {"$in": values}}):
            found.update(iter_documents(raw))
    return found


def recheck_differences(spec: MigrationSpec, plan: CollectionPlan, found: _RangeDifferences) -> _RangeDifferences:
    """Read the documents found different once more, by `_id`: those now equal were in flight."""
    elements = found.missing + found.extra + found.different
    src = _current_hashes(spec, plan, "source", elements)
    dst = _current_hashes(spec, plan, "destination", elements)
    missing, extra, different = [], [], []
    for e in elements:
        s, d = src.get(e), dst.get(e)
        if s is not None and d is None:
            missing.append(e)
        elif d is not None and s is None:
            extra.append(e)
        elif s is not None and s != d:
            different.append(e)
    return _RangeDifferences(missing, extra, different, found.complete)


def _recorded_skips(spec: MigrationSpec, plan: CollectionPlan, elements: list[bytes]) -> set[bytes]:
    if not elements:
        return set()
    records = state_collection(spec, SKIPPED_DOCUMENTS)
    keys = {skipped_key(id_value(e, raw_documents=False)): e for e in elements}
    recorded = records.find({"run": spec.digest(), "target_ns": plan.target_ns,
                             "id_ejson": {"$in": list(keys)}}, {"id_ejson": 1})
    return {keys[r["id_ejson"]] for r in recorded}


def verify_collection(spec: MigrationSpec, plan: CollectionPlan, recheck_delay_s: float = RECHECK_DELAY_S,
                      scan_threads: int | None = None, copied: list[CopyStats] | None = None) -> CollectionVerification:
    """Compare one selected collection (or view) with its mapped target. See the module docstring.

    Up to `scan_threads` range reads run at once (a source and a destination read per range);
    by default two per copy worker. `copied`: what this run's copy read of the collection, range by
    range (a full run's last step), so that the source's documents need not be read again.
    """
    started = time.monotonic()
    result = CollectionVerification(source_ns=plan.source_ns, target_ns=plan.target_ns, kind=plan.kind)
    result.problems += compare_options(spec, plan)
    if plan.kind == "view" or any(p.startswith("the target is a") for p in result.problems):
        # a view has no documents of its own; a target of another kind has none to compare
        result.seconds = round(time.monotonic() - started, 3)
        return result
    if not result.problems or "does not exist" not in result.problems[0]:
        problems, notes = compare_indexes(spec, plan)
        result.problems += problems
        result.notes += notes

    read_by_copy = copied_ranges(plan, copied or [])
    # else any cut will do for comparing; verification writes nothing on the destination
    ranges = read_by_copy[0] if read_by_copy else split_collection(spec, plan, remember=False)
    workers = max(2, min(2 * len(ranges), scan_threads or 2 * spec.copy_options.parallel_workers))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        def digest_all(rngs: list[CopyRange]) -> list[tuple[RangeDigest, RangeDigest]]:
            futures = [(pool.submit(digest_range, spec, r, "source"), pool.submit(digest_range, spec, r, "destination"))
                       for r in rngs]
            return [(s.result(), d.result()) for s, d in futures]

        def digest_against_copy(rngs: list[CopyRange],
                                read: list[CopiedRange]) -> list[tuple[RangeDigest, RangeDigest]]:
            futures = [(pool.submit(count_range_ids, spec, r), pool.submit(destination_range_hash, spec, r))
                       for r in rngs]
            equal = [count_f.result() == copy_read.docs and hash_f.result() == copy_read.hash
                     for copy_read, (count_f, hash_f) in zip(read, futures)]
            # a range where either differs is digested on both sides, as `verify` does, to be narrowed
            unequal = iter(digest_all([r for r, same in zip(rngs, equal) if not same]))
            return [(RangeDigest(c.docs, int(c.hash, 16), c.bytes),) * 2 if same else next(unequal)
                    for c, same in zip(read, equal)]

        digests = digest_against_copy(*read_by_copy) if read_by_copy else digest_all(ranges)
        mismatched = [i for i, (s, d) in enumerate(digests) if s[:2] != d[:2]]
        rechecked = len(mismatched)
        if mismatched and recheck_delay_s > 0:
            # a change still in flight (the sync applying it) settles before anything is reported
            time.sleep(recheck_delay_s)
            for i, pair in zip(mismatched, digest_all([ranges[i] for i in mismatched])):
                digests[i] = pair
            mismatched = [i for i in mismatched if digests[i][0][:2] != digests[i][1][:2]]

        listed: list[DocumentDifference] = []
        unexplained = 0
        for i in mismatched:
            if len(listed) >= LIST_LIMIT:
                unexplained += 1
                continue
            src, dst = digests[i]
            found = recheck_differences(spec, plan, narrow_range(spec, ranges[i], max(src.count, dst.count), pool))
            skipped = _recorded_skips(spec, plan, found.missing)
            missing = [e for e in found.missing if e not in skipped]
            result.missing += len(missing)
            result.extra += len(found.extra)
            result.different += len(found.different)
            result.skipped += len(skipped)
            if not found.complete:
                unexplained += 1
            for kind, elements in (("missing", missing), ("extra", found.extra),
                                   ("different", found.different), ("skipped", sorted(skipped))):
                for e in elements[:LIST_LIMIT - len(listed)]:
                    listed.append(DocumentDifference(id=id_display(e), kind=kind))

    result.differences = listed
    result.ranges, result.mismatched_ranges, result.rechecked_ranges = len(ranges), len(mismatched), rechecked
    result.source_docs = sum(s.count for s, _ in digests)
    result.target_docs = sum(d.count for _, d in digests)
    result.source_digest = f"{sum(s.digest for s, _ in digests) % DIGEST_MOD:032x}"
    result.target_digest = f"{sum(d.digest for _, d in digests) % DIGEST_MOD:032x}"
    if unexplained:
        result.problems.append(
            f"{unexplained} of {len(ranges)} _id ranges differ beyond the {LIST_LIMIT} differences listed"
            if len(listed) >= LIST_LIMIT else
            f"{unexplained} of {len(ranges)} _id ranges differ in more documents than could be narrowed down"
        )
    result.seconds = round(time.monotonic() - started, 3)
    return result


verify_collection_task = step(verify_collection)


def verify_collections(spec: MigrationSpec, plans: list[CollectionPlan], recheck_delay_s: float = RECHECK_DELAY_S,
                       scan_threads: int | None = None,
                       copied: list[list[CopyStats]] | None = None) -> list[CollectionVerification]:
    """verify_collection for each of `plans` in turn (`copied`: each one's, in the same order). A task
    verifies a group of collections rather than one: each task run costs the Prefect client and server
    several milliseconds of CPU, which for small collections is more than their verification
    (flows/verify.py groups them)."""
    return [verify_collection(spec, plan, recheck_delay_s, scan_threads, stats)
            for plan, stats in zip(plans, copied or [None] * len(plans))]


verify_collections_task = step(verify_collections)
