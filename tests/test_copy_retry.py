"""A copy that fails part way and is run again ends with every document exactly once, and a finished
unit is not copied again. Faults are real: the destination refuses a document, or drops the
connection (a server fail point), never a mock."""
from __future__ import annotations

import bson
import pytest
from bson import Binary, Int64, MaxKey, MinKey
from bson.raw_bson import RawBSONDocument

import mongo_migrate.tasks.copy
from mongo_migrate.blocks.errors import DocumentWriteError
from mongo_migrate.blocks.mongo import close_clients
from mongo_migrate.blocks.spec import META_DATABASE
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.sandbox.mongod import Mongod
from mongo_migrate.tasks.copy import CopyRange, copy_collection_range
from mongo_migrate.tasks.namespaces import plan_namespaces
from mongo_migrate.tasks.state import COPY_UNITS
from mongo_migrate.tasks.verify import hash_range
from tests.conftest import assert_same_documents, insert_raw, make_spec, raw_documents

N = 2000


def item(i: int) -> RawBSONDocument:
    # _ids of several types, so a checkpoint can fall on any of them
    _id = [i, f"id-{i:05d}", Binary(i.to_bytes(16, "big"), 4), Int64(10**15 + i), {"n": i}][i % 5]
    return RawBSONDocument(bson.encode({"_id": _id, "u": i, "pad": "p" * (i % 50)}))


def natural_order(client, ns: str) -> list[bytes]:
    db, _, coll = ns.partition(".")
    return [bytes(d.raw) for d in client[db].get_collection(coll, codec_options=mongo_migrate.tasks.copy.RAW).find()]


@pytest.mark.parametrize("kind", ["plain", "clustered", "capped"])
def test_copy_refused_part_way_then_rerun_copies_each_document_once(kind, src_client, dst_client,
                                                                     spec_for, monkeypatch):
    monkeypatch.setattr(mongo_migrate.tasks.copy, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint after every batch
    options = {"plain": {}, "clustered": {"clusteredIndex": {"key": {"_id": 1}, "unique": True}},
               "capped": {"capped": True, "size": 10 * 1024 * 1024}}[kind]
    src_client.retry.create_collection("items", **options)
    docs = [item(i) for i in range(N)] + [RawBSONDocument(bson.encode({"_id": k, "u": -1 - j}))
                                           for j, k in enumerate((MinKey(), MaxKey()))]
    insert_raw(src_client, "retry.items", docs)
    # the fault: a unique index on the destination, and one source document that breaks it
    src_client.retry.items.update_one({"_id": f"id-{1301:05d}"}, {"$set": {"u": 7}})
    spec = spec_for(objects=[{"database": "retry"}], copy_options={"batch_docs": 150})
    plan = plan_namespaces(spec).data_plans[0]
    dst_client.retry.create_collection("items", **options)
    dst_client.retry.items.create_index("u", unique=True)
    unit = CopyRange(plan=plan)

    with pytest.raises(DocumentWriteError) as refused:
        copy_collection_range(spec, unit)

    # named: the document (whichever of the two clashing comes second), the namespace, the cause
    assert refused.value.doc_id in (f"id-{1301:05d}", Binary((7).to_bytes(16, "big"), 4))
    assert str(refused.value).startswith("retry.items: document _id=")
    assert "(code 11000)" in str(refused.value) and "index: u_1 dup key: { u: 7 }" in str(refused.value)
    written = dst_client.retry.items.count_documents({})
    assert 0 < written < len(docs)
    checkpoint = dst_client[META_DATABASE][COPY_UNITS].find_one({"_id": {"$regex": "retry.items"}})
    assert checkpoint and not checkpoint.get("done")
    if kind != "capped":
        assert checkpoint["resume_from"]  # the rerun starts from there, not from the beginning

    dst_client.retry.items.drop_index("u_1")  # the operator removes the cause
    stats = copy_collection_range(spec, unit)

    # a resumed pass is not a read of the whole range, so verification will read the source itself;
    # a capped collection's attempts each start over, so its pass is whole: its hash is the source's
    if kind == "capped":
        assert (stats.read_docs, stats.read_hash) == (len(docs), hash_range(spec, unit, "source"))
    else:
        assert (stats.read_docs, stats.read_hash) == (None, None)

    assert_same_documents(src_client, dst_client, "retry.items")
    if kind == "capped":
        assert natural_order(dst_client, "retry.items") == natural_order(src_client, "retry.items")
    assert stats.docs <= len(docs) and not stats.already_done

    # a finished unit is not copied again: a document added since does not travel
    src_client.retry.items.insert_one({"_id": "added-later", "u": -9})
    again = copy_collection_range(spec, unit)
    assert again.already_done and again.docs == stats.docs
    assert dst_client.retry.items.count_documents({}) == len(docs)


def test_rerun_over_documents_already_there_inserts_only_the_missing(src_client, dst_client, spec_for):
    """What a failed attempt wrote before its checkpoint is skipped (not duplicated) and counted once."""
    docs = [item(i) for i in range(N)]
    insert_raw(src_client, "retry.items", docs)
    already = docs[::3]
    insert_raw(dst_client, "retry.items", already)
    spec = spec_for(objects=[{"database": "retry"}], copy_options={"batch_docs": 300})
    plan = plan_namespaces(spec).data_plans[0]

    stats = copy_collection_range(spec, CopyRange(plan=plan))

    assert stats.docs == len(docs) - len(already)
    assert_same_documents(src_client, dst_client, "retry.items")
    assert sorted(raw_documents(dst_client, "retry", "items")) == sorted(bytes(d.raw) for d in docs)


def test_migration_retries_ranges_the_destination_dropped(source, src_client, tmp_path, monkeypatch, caplog):
    """A destination that closes the connection in the middle of the copy (twice, so that the
    driver's own retry fails too): Prefect retries the range, which resumes from its checkpoint."""
    monkeypatch.setattr(mongo_migrate.tasks.copy, "CHECKPOINT_EVERY_S", 0.0)
    docs = [item(i) for i in range(3000)]
    insert_raw(src_client, "flaky.items", docs)
    with Mongod(tmp_path / "dst", replset="flaky",
                extra_args=["--setParameter", "enableTestCommands=1"]) as dest, dest.client() as dst_client:
        dst_client.admin.command("configureFailPoint", "failCommand", mode={"skip": 4, "times": 2}, data={
            "failCommands": ["insert"], "closeConnection": True, "appName": "mongo-migrate"})
        spec = make_spec(source, dest, objects=[{"database": "flaky"}],
                         copy_options={"range_docs": 1000, "batch_docs": 200, "parallel_workers": 1})

        summary = migrate(spec)

        dst_client.admin.command("configureFailPoint", "failCommand", mode="off")
        # the fault did happen, Prefect retried the range, and the retry completed it
        retries = [r.getMessage() for r in caplog.records if "Retry 1/3" in r.getMessage()]
        assert retries and "AutoReconnect" in retries[0] and "connection closed" in retries[0]
        assert summary.counts_match
        assert summary.collections[0].target_docs == len(docs)
        assert_same_documents(src_client, dst_client, "flaky.items")
        close_clients()  # while this mongod still answers: closing a client ends its sessions there
