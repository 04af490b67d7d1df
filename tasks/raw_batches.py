"""Server batches as raw bytes: pymongo's raw batch cursor without its per-reply decoding.

`Collection.find_raw_batches` hands each server batch over as the documents' bytes end to end, but on
the way pymongo decodes the reply selectively (`_OpMsg.raw_response`): the `cursor` sub-document and
its batch array are each copied into new objects, several times over, in Python-level loops that hold
the GIL. Reading 1 GB of 1 KB documents with 4 threads and hashing it, as the copy does, cost the
process 8.9 s of CPU that way and 3.5 s this way, in half the wall time (bench/raw_reads.py): walking
the reply's few elements and cutting the array out of the received buffer is all that is left, and
the readers no longer queue for the GIL behind each other.

`RawBatches` is pymongo's own `RawBatchCursor` (find, getMore, exhaust, min/max, hint, sessions, kill on
close: all pymongo's) with one method replaced: the unpacking of a reply that carries a batch. Any reply
it does not recognise (an error, no cursor, a legacy OP_REPLY, a BSON type it cannot step over) goes to
pymongo's own unpacking, so errors and odd replies behave exactly as pymongo's.
"""
from __future__ import annotations

import struct
from typing import Any, Optional

import bson
from pymongo.collection import Collection
from pymongo.cursor import RawBatchCursor

try:  # the C helper pymongo's own unpacking uses: an array's documents end to end, keys dropped
    from bson import _array_of_documents_to_buffer
except ImportError:  # a bson without it: pymongo's unpacking for every reply
    _array_of_documents_to_buffer = None

_INT32 = struct.Struct("<i").unpack_from
# bytes of a value of each fixed-size BSON type (double, undefined, ObjectId, bool, date, null, int32,
# timestamp, int64, decimal128, min key, max key)
_FIXED_SIZE = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8,
               0x13: 16, 0xFF: 0, 0x7F: 0}
_STRING_LIKE = (0x02, 0x0D, 0x0E)  # string, JavaScript code, symbol: int32 length, then the bytes
_SIZED = (0x03, 0x04, 0x0F)  # document, array, code with scope: the int32 counts itself
_BATCH_KEYS = (b"firstBatch", b"nextBatch")


class _Unrecognised(Exception):
    """A reply this module leaves to pymongo's own unpacking."""


def _cstring_end(buf: memoryview, i: int) -> int:
    while buf[i]:
        i += 1
    return i


def _elements(buf: memoryview, start: int):
    """(type, key, value start, value end, element start) of each element of the document at `start`."""
    end = start + _INT32(buf, start)[0] - 1  # the document's closing NUL
    pos = start + 4
    while pos < end:
        kind = buf[pos]
        key_end = _cstring_end(buf, pos + 1)
        value = key_end + 1
        if kind in _FIXED_SIZE:
            value_end = value + _FIXED_SIZE[kind]
        elif kind in _STRING_LIKE:
            value_end = value + 4 + _INT32(buf, value)[0]
        elif kind in _SIZED:
            value_end = value + _INT32(buf, value)[0]
        elif kind == 0x05:  # binary: int32 length, subtype byte, the bytes
            value_end = value + 5 + _INT32(buf, value)[0]
        elif kind == 0x0B:  # regex: pattern and options, two C strings
            value_end = _cstring_end(buf, _cstring_end(buf, value) + 1) + 1
        elif kind == 0x0C:  # DBPointer: a string, then an ObjectId
            value_end = value + 4 + _INT32(buf, value)[0] + 12
        else:
            raise _Unrecognised(f"BSON type {kind:#x}")
        if value_end > end:
            raise _Unrecognised("an element runs past its document")
        yield kind, bytes(buf[pos + 1:key_end]), value, value_end, pos
        pos = value_end
    if pos != end:
        raise _Unrecognised("elements do not end where the document does")


def _decode_elements(buf: memoryview, spans: list[tuple[int, int]]) -> dict[str, Any]:
    """A dict of some elements of a document (the small ones), decoded as pymongo decodes a reply."""
    body = b"".join(buf[a:b] for a, b in spans)
    return bson.decode(struct.pack("<i", len(body) + 5) + body + b"\x00")


def cursor_reply(payload: memoryview | bytes) -> dict[str, Any]:
    """A find or getMore reply as pymongo's cursor reads it: every field decoded but the batch, which is
    its documents' bytes end to end in a one-item list (none: an empty list). Raises _Unrecognised for a
    reply that is not a batch."""
    buf = memoryview(payload)
    rest: list[tuple[int, int]] = []
    cursor: dict[str, Any] | None = None
    for kind, key, value, value_end, element in _elements(buf, 0):
        if key != b"cursor" or kind != 0x03:
            rest.append((element, value_end))
            continue
        fields: list[tuple[int, int]] = []
        batch: tuple[str, bytes] | None = None
        for kind2, key2, value2, value_end2, element2 in _elements(buf, value):
            if key2 in _BATCH_KEYS and kind2 == 0x04:
                batch = key2.decode(), _array_of_documents_to_buffer(buf[value2:value_end2])
            else:
                fields.append((element2, value_end2))
        if batch is None:
            raise _Unrecognised("a cursor without a batch")
        cursor = _decode_elements(buf, fields)
        cursor[batch[0]] = [batch[1]] if batch[1] else []
    if cursor is None:
        raise _Unrecognised("no cursor")
    reply = _decode_elements(buf, rest)
    reply["cursor"] = cursor
    return reply


class RawBatches(RawBatchCursor):
    """`find_raw_batches`, each reply's batch cut out of the received bytes (the module's docstring)."""

    def _unpack_response(self, response, cursor_id: Optional[int], codec_options, user_fields=None,
                         legacy_response: bool = False):
        payload = getattr(response, "payload_document", None)
        if payload is not None and not legacy_response and _array_of_documents_to_buffer is not None:
            try:
                return [cursor_reply(payload)]
            except (_Unrecognised, IndexError, struct.error, bson.errors.BSONError):
                pass
        return super()._unpack_response(response, cursor_id, codec_options, user_fields, legacy_response)


def find_raw_batches(coll: Collection, filter: Any = None, projection: Any = None, **kwargs: Any) -> RawBatches:
    """`coll.find_raw_batches(filter, projection, **kwargs)`, as RawBatches."""
    return RawBatches(coll, filter, projection, **kwargs)
