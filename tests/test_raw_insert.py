"""insert_raw_stream: a server batch (documents end to end) inserted as one OP_MSG document sequence,
bytes unchanged, over 16 MiB split into several commands, refused documents named by their own _id,
and the per-document fallback giving the same results."""
from __future__ import annotations

import bson
import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, Regex, Timestamp
from bson.raw_bson import RawBSONDocument

import mongo_migrate.tasks.copy
from mongo_migrate.tasks.common import RAW
from mongo_migrate.tasks.copy import DocumentWriteError, _chunks, document_offsets, insert_raw_stream
from tests.conftest import raw_documents

MiB = 1024 * 1024


def stream_of(docs: list[dict]) -> bytes:
    return b"".join(bson.encode(d) for d in docs)


@pytest.fixture(params=["sequence", "per-document fallback"])
def path(request, monkeypatch):
    if request.param == "per-document fallback":
        monkeypatch.setattr(mongo_migrate.tasks.copy, "_SEQUENCE_PASSES_THROUGH", False)
    return request.param


def target(client, name: str = "t"):
    return client.raw.get_collection(name, codec_options=RAW)


def test_a_stream_arrives_byte_for_byte_and_the_sequence_path_is_the_one_taken(dst_client, path):
    docs = [{"_id": i, "b": Binary(b"\x00\xff" * i, 0), "d": Decimal128("1.10"), "l": Int64(-i),
             "r": Regex("^a", "i"), "ts": Timestamp(i + 1, 1), "$dollar": 1, "a.b": [{"x": None}],
             "z": MinKey(), "y": MaxKey(), "s": "é" * i} for i in range(300)]
    stream = stream_of(docs)
    assert insert_raw_stream(target(dst_client), stream, "raw.t") == (300, 300)
    assert b"".join(raw_documents(dst_client, "raw", "t")) == stream
    # a rerun of the same batch: every document is already there, nothing is counted twice
    assert insert_raw_stream(target(dst_client), stream, "raw.t") == (300, 0)
    assert dst_client.raw.t.count_documents({}) == 300
    # the fast path did not fall back on its own (that would only show as lost speed)
    assert mongo_migrate.tasks.copy._SEQUENCE_PASSES_THROUGH is (path == "sequence")


def test_over_16_mib_goes_in_several_commands_and_a_refused_document_is_named(dst_client, path):
    # 5 documents of ~6 MiB: 30 MiB, more than one command may carry
    docs = [{"_id": f"big{i}", "n": i, "pad": "x" * (6 * MiB)} for i in range(5)]
    stream = stream_of(docs)
    assert [last - first for first, last in _chunks(document_offsets(stream), len(stream))] == [2, 2, 1]
    # (validators are bypassed by the copy, as the source's documents passed them or predate them)
    dst_client.raw.v.create_index("n", unique=True)
    dst_client.raw.v.insert_many([{"_id": "other3", "n": 3}, {"_id": "other4", "n": 4}])
    with pytest.raises(DocumentWriteError) as refused:
        insert_raw_stream(target(dst_client, "v"), stream, "raw.v")
    # the first refused is the 4th document, in the second command: its own _id, not its position
    assert refused.value.doc_id == "big3" and refused.value.code == 11000
    assert str(refused.value).startswith("raw.v: document _id='big3' was refused (code 11000)")
    assert sorted(d["_id"] for d in dst_client.raw.v.find({"pad": {"$exists": True}}, {"_id": 1})) == \
        ["big0", "big1", "big2"]

    skipped: list = []
    dst_client.raw.v.delete_many({"pad": {"$exists": True}})
    counts = insert_raw_stream(target(dst_client, "v"), stream, "raw.v",
                               skip_refused=lambda doc_id, error: skipped.append((doc_id, error["code"])))
    assert counts == (5, 3) and skipped == [("big3", 11000), ("big4", 11000)]


def test_a_duplicate_on_another_unique_index_is_refused_not_already_there(dst_client, path):
    dst_client.raw.u.create_index("k", unique=True)
    dst_client.raw.u.insert_one({"_id": "first", "k": 1})
    stream = stream_of([{"_id": 0, "k": 0}, {"_id": "second", "k": 1}, {"_id": 2, "k": 2}])
    with pytest.raises(DocumentWriteError) as refused:
        insert_raw_stream(target(dst_client, "u"), stream, "raw.u")
    assert refused.value.doc_id == "second" and refused.value.code == 11000
    assert dst_client.raw.u.count_documents({}) == 3  # unordered: the others went in


def test_a_malformed_stream_is_refused_before_anything_is_sent(dst_client):
    stream = stream_of([{"_id": 1}, {"_id": 2}])
    with pytest.raises(bson.errors.InvalidBSON, match="runs past the end"):
        insert_raw_stream(target(dst_client), stream[:-3], "raw.t")
    assert "raw" not in dst_client.list_database_names()
    assert insert_raw_stream(target(dst_client), b"", "raw.t") == (0, 0)


def test_offsets_and_chunks():
    stream = stream_of([{"_id": i, "p": "x" * i} for i in range(10)])
    offsets = document_offsets(stream)
    ends = offsets[1:] + [len(stream)]
    assert [RawBSONDocument(stream[a:b])["_id"] for a, b in zip(offsets, ends)] == list(range(10))
    assert list(_chunks(offsets, len(stream))) == [(0, 10)]
    sizes = [b - a for a, b in zip(offsets, offsets[1:] + [len(stream)])]
    runs = list(_chunks(offsets, len(stream), limit=60))
    # consecutive, covering every document once, each within the limit unless a single document
    assert [i for first, last in runs for i in range(first, last)] == list(range(10))
    assert all(sum(sizes[first:last]) <= 60 or last - first == 1 for first, last in runs)
