"""RawBatches: the same server batches, byte for byte, as pymongo's find_raw_batches (getMore, exhaust,
hint and bounds, projection, empty), every reply field but the batch decoded as pymongo decodes it, and
anything it does not recognise (an error, an unknown BSON type) left to pymongo's own unpacking."""
from __future__ import annotations

import bson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from pymongo import ASCENDING, CursorType
from pymongo.cursor import RawBatchCursor
from pymongo.errors import OperationFailure
from pymongo.message import _OpMsg

from mongo_migrate.tasks.common import RAW
from mongo_migrate.tasks.raw_batches import RawBatches, _Unrecognised, cursor_reply, find_raw_batches

# what pymongo's server code passes to a cursor's unpacking for a find or getMore reply
CURSOR_FIELDS = {"cursor": {"firstBatch": 1, "nextBatch": 1}}
DOCS = [{"_id": i, "s": "é" * (i % 50), "b": Binary(bytes(range(i % 256)), 0), "d": Decimal128("1.10"),
         "l": Int64(-i), "r": Regex("^a", "i"), "ts": Timestamp(i + 1, 1), "n": None,
         "sub": {"a": [1, {"x": MinKey()}], "y": MaxKey()}} for i in range(1000)]


@pytest.fixture
def coll(src_client):
    src_client.rb.t.insert_many(DOCS)
    src_client.rb.create_collection("empty")
    return src_client.rb.get_collection("t", codec_options=RAW)


def both(coll, *args, **kwargs) -> tuple[list[bytes], list[bytes]]:
    ours = find_raw_batches(coll, *args, **kwargs)
    assert type(ours) is RawBatches
    return list(coll.find_raw_batches(*args, **kwargs)), list(ours)


@pytest.mark.parametrize("options", [
    {"batch_size": 7},  # a find and 142 getMores
    {"batch_size": 300, "cursor_type": CursorType.EXHAUST},
    {},  # the server's default first batch (101), then the rest
    {"limit": 5},
], ids=["getMore", "exhaust", "default", "limit"])
def test_the_same_batches_as_pymongo(coll, options):
    theirs, ours = both(coll, {}, **options)
    assert ours == theirs and len(ours) > 0
    # the documents as inserted, byte for byte, in _id order
    expected = DOCS[:options.get("limit", len(DOCS))]
    assert b"".join(ours) == b"".join(bson.encode(d) for d in expected)


def test_hint_bounds_projection_and_an_empty_collection(coll):
    bounded = lambda c: c.hint([("_id", ASCENDING)]).min([("_id", 100)]).max([("_id", 350)])  # noqa: E731
    theirs = list(bounded(coll.find_raw_batches({}, {"s": 1}, batch_size=64)))
    ours = list(bounded(find_raw_batches(coll, {}, {"s": 1}, batch_size=64)))
    assert ours == theirs
    assert [d["_id"] for b in ours for d in bson.decode_all(b)] == list(range(100, 350))
    empty = coll.database.get_collection("empty", codec_options=RAW)
    assert list(find_raw_batches(empty, {})) == list(empty.find_raw_batches({})) == []


def test_a_server_error_is_raised_as_pymongo_raises_it(coll):
    with pytest.raises(OperationFailure) as theirs:
        list(coll.find_raw_batches({}).hint("no_such_index"))
    with pytest.raises(OperationFailure) as ours:
        list(find_raw_batches(coll, {}).hint("no_such_index"))
    assert ours.value.code == theirs.value.code == 2 and str(ours.value) == str(theirs.value)


def reply_bytes(batch_key: str, docs: list[dict], **extra) -> bytes:
    return bson.encode({"cursor": {batch_key: docs, "id": Int64(7), "ns": "db.c",
                                   "postBatchResumeToken": {"$recordId": Int64(9)}, "atClusterTime": Timestamp(5, 1)},
                        "ok": 1.0, **extra})


def test_every_field_but_the_batch_is_decoded_as_bson_decodes_it():
    extra = {"$clusterTime": {"clusterTime": Timestamp(5, 1), "signature": {"hash": Binary(b"\0" * 20, 0),
                                                                             "keyId": Int64(0)}},
             "operationTime": Timestamp(5, 1), "oid": ObjectId(), "re": Regex("x", "ms"), "code": Code("f()", {"a": 1}),
             "d": Decimal128("2.5"), "min": MinKey(), "max": MaxKey(), "flag": True, "none": None, "f": 1.5,
             "i": 3, "list": [1, "a"]}
    docs = [{"_id": 1, "a": "x"}, {"_id": 2, "b": [1, 2]}]
    payload = reply_bytes("nextBatch", docs, **extra)
    reply = cursor_reply(memoryview(payload))
    expected = bson.decode(payload)
    assert reply["cursor"].pop("nextBatch") == [b"".join(bson.encode(d) for d in docs)]
    del expected["cursor"]["nextBatch"]
    assert reply == expected
    # an empty batch is an empty list, as pymongo gives it
    assert cursor_reply(reply_bytes("firstBatch", []))["cursor"]["firstBatch"] == []


def test_what_it_does_not_recognise_goes_to_pymongos_unpacking():
    error = bson.encode({"ok": 0.0, "errmsg": "boom", "code": 2, "codeName": "BadValue"})
    with pytest.raises(_Unrecognised, match="no cursor"):
        cursor_reply(error)
    # a type byte no BSON version has, in the field before the cursor (an int32's 0x10 made 0x42)
    odd = bytearray(bson.encode({"z": 1, "cursor": {"firstBatch": [{"_id": 1}], "id": Int64(0), "ns": "db.c"},
                                 "ok": 1.0}))
    assert odd[4] == 0x10
    odd[4] = 0x42
    with pytest.raises(_Unrecognised, match="0x42"):
        cursor_reply(bytes(odd))
    ours, theirs = RawBatches.__new__(RawBatches), RawBatchCursor.__new__(RawBatchCursor)
    response = _OpMsg(0, error)
    assert ours._unpack_response(response, None, RAW, CURSOR_FIELDS) == \
        theirs._unpack_response(response, None, RAW, CURSOR_FIELDS)
    errors = []
    for cursor in (ours, theirs):
        with pytest.raises(bson.errors.InvalidBSON) as raised:
            cursor._unpack_response(_OpMsg(0, bytes(odd)), None, RAW, CURSOR_FIELDS)
        errors.append(str(raised.value))
    assert errors[0] == errors[1] and "unknown BSON type" in errors[0]
    # a reply it recognises: the cursor as pymongo reads it, batch included
    good = _OpMsg(0, reply_bytes("firstBatch", [{"_id": 1}, {"_id": 2}]))
    mine = ours._unpack_response(good, None, RAW, CURSOR_FIELDS)[0]
    pymongos = theirs._unpack_response(good, None, RAW, CURSOR_FIELDS)[0]
    for key in ("firstBatch", "id", "ns", "atClusterTime"):
        assert mine["cursor"][key] == pymongos["cursor"][key]
    assert mine["ok"] == pymongos["ok"] == 1.0
