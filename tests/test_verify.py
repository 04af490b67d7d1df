"""Verification: counts, the digest of every document's bytes, options, indexes and views, and the
exact `_id`s that differ. Source and destination are filled directly (the same raw documents on
both sides), then changed on purpose; one test goes through `migrate` and the CLI."""
from __future__ import annotations

import json
import threading

import bson
from bson import Decimal128, Int64, ObjectId
from bson.raw_bson import RawBSONDocument
from prefect import get_client

import mongo_migrate.tasks.verify
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.flows.verify import VerificationReport, verification_text
from mongo_migrate.tasks.copy import copy_collection_range, split_collection
from mongo_migrate.tasks.namespaces import plan_namespaces
from mongo_migrate.tasks.schema import create_target_collection
from mongo_migrate.tasks.verify import destination_collection_hash, digest_raw_batch, verify_collection
from tests.conftest import insert_raw


def raw(doc: dict) -> RawBSONDocument:
    return RawBSONDocument(bson.encode(doc))


def mixed_documents(n: int) -> list[RawBSONDocument]:
    """n documents whose _ids take several BSON types, so ranges cut across types."""
    ids = [lambda i: i, lambda i: f"k{i:06d}", lambda i: ObjectId(i.to_bytes(12, "big")),
           lambda i: {"a": i, "b": "x"}, lambda i: Decimal128(f"{i}.5")]
    return [raw({"_id": ids[i % len(ids)](i), "n": i, "pad": "p" * (i % 50), "sub": {"i": i, "l": [i, str(i)]}})
            for i in range(n)]


def plan_for(spec, source_ns: str):
    return next(p for p in plan_namespaces(spec).collections if p.source_ns == source_ns)


def by_kind(result) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for d in result.differences:
        found.setdefault(d.kind, []).append(d.id)
    return found


def test_sum_of_hashes_sees_duplicates_that_xor_would_cancel():
    a, b, c = (bson.encode({"_id": i}) for i in range(3))
    # {a, a, c} and {c, b, b}: same count, and a^a^c == c^b^b, so an XOR digest calls them equal
    first, second = digest_raw_batch(a + a + c), digest_raw_batch(c + b + b)
    assert first[0] == second[0] == 3
    assert first[1] != second[1]
    # the order documents come back in does not matter
    assert digest_raw_batch(a + b + c) == digest_raw_batch(c + a + b)


def test_equal_collections_then_every_kind_of_difference_named_by_id(src_client, dst_client, spec_for):
    docs = mixed_documents(5000)
    insert_raw(src_client, "shop.items", docs)
    insert_raw(dst_client, "shop_v2.items", docs)
    for c in (src_client.shop.items, dst_client.shop_v2.items):
        c.create_index([("n", -1)], name="n_desc", unique=True)
    spec = spec_for(objects=[{"database": "shop"}], name_mapping={"shop": "shop_v2"},
                    copy_options={"range_docs": 1000})
    plan = plan_for(spec, "shop.items")

    same = verify_collection(spec, plan, recheck_delay_s=0)
    assert same.equal, same.describe()
    assert same.ranges >= 4
    assert same.source_docs == same.target_docs == 5000
    assert same.source_digest == same.target_digest

    items = dst_client.shop_v2.get_collection("items", codec_options=bson.CodecOptions(RawBSONDocument))
    items.delete_one({"_id": 10})                                           # missing
    items.insert_one(raw({"_id": "zz-extra", "n": -1}))                      # extra
    # different only in field order, and only in a number's type: same values, other bytes
    items.replace_one({"_id": "k000011"}, raw({"_id": "k000011", "pad": "p" * 11, "n": 11,
                                              "sub": {"i": 11, "l": [11, "11"]}}))
    items.update_one({"_id": {"a": 13, "b": "x"}}, {"$set": {"n": Int64(13)}})
    items.delete_one({"_id": ObjectId((4997).to_bytes(12, "big"))})          # missing, in the last range

    diff = verify_collection(spec, plan, recheck_delay_s=0.1)
    assert not diff.equal
    assert (diff.missing, diff.extra, diff.different) == (2, 1, 2)
    assert diff.source_docs == 5000 and diff.target_docs == 4999
    assert diff.source_digest != diff.target_digest
    kinds = by_kind(diff)
    assert sorted(kinds["missing"]) == sorted(["10", '{"$oid": "000000000000000000001385"}'])
    assert kinds["extra"] == ['"zz-extra"']
    assert sorted(kinds["different"]) == sorted(['"k000011"', '{"a": 13, "b": "x"}'])
    assert "2 missing, 1 extra, 2 different" in diff.describe()


def record_range_reads(monkeypatch) -> list[tuple[str, str]]:
    """(side, "documents" or "_id only") of every range verification reads from now on."""
    reads: list[tuple[str, str]] = []
    real_range_batches = mongo_migrate.tasks.verify.range_batches
    monkeypatch.setattr(mongo_migrate.tasks.verify, "range_batches", lambda spec, rng, side, ids_only=False: (
        reads.append((side, "_id only" if ids_only else "documents"))
        or real_range_batches(spec, rng, side, ids_only)))
    return reads


def test_a_full_runs_verification_reads_the_destination_and_counts_the_source_index(
        src_client, dst_client, spec_for, monkeypatch):
    """After a copy, the copy's digests stand for the source: its documents are not read again, but
    what the copy never read, and what changed on the destination, is still found and named."""
    insert_raw(src_client, "shop.items", mixed_documents(5000))
    spec = spec_for(objects=[{"database": "shop"}], copy_options={"range_docs": 1000})
    plan = plan_for(spec, "shop.items")
    create_target_collection(spec, plan)
    copied = [copy_collection_range(spec, r) for r in split_collection(spec, plan)]
    assert len(copied) >= 4

    reads = record_range_reads(monkeypatch)
    same = verify_collection(spec, plan, recheck_delay_s=0, copied=copied)
    assert same.equal, same.describe()
    assert (same.source_docs, same.target_docs, same.ranges) == (5000, 5000, len(copied))
    assert same.source_digest == same.target_digest
    # the source's documents were not read again: only its _id index, range by range
    assert sorted(reads) == sorted([("destination", "documents"), ("source", "_id only")] * len(copied))

    src_client.shop.items.insert_one({"_id": 2500.25, "n": -1})       # after the copy: never read by it
    items = dst_client.shop.get_collection("items", codec_options=bson.CodecOptions(RawBSONDocument))
    items.update_one({"_id": "k000011"}, {"$set": {"n": Int64(11)}})  # changed on the destination
    items.delete_one({"_id": ObjectId((4997).to_bytes(12, "big"))})
    diff = verify_collection(spec, plan, recheck_delay_s=0.1, copied=copied)
    assert (diff.missing, diff.extra, diff.different) == (2, 0, 1)
    kinds = by_kind(diff)
    assert sorted(kinds["missing"]) == sorted(["2500.25", '{"$oid": "000000000000000000001385"}'])
    assert kinds["different"] == ['"k000011"']
    assert diff.source_docs == 5001 and diff.target_docs == 4999


def test_a_collection_copied_in_one_range_is_hashed_by_the_destination_server(
        src_client, dst_client, spec_for, monkeypatch):
    """A collection the copy read whole is checked with the destination's own dbHash (the MD5 of its
    documents in _id order, what the copy hashed as it read) and the source's own count of its _id
    index: nothing is read again, and a document changed, removed or never copied is still named by
    its _id."""
    insert_raw(src_client, "shop.whole", mixed_documents(3000))
    spec = spec_for(objects=[{"database": "shop"}])
    plan = plan_for(spec, "shop.whole")
    create_target_collection(spec, plan)
    copied = [copy_collection_range(spec, r) for r in split_collection(spec, plan)]
    assert [(c.lower_ejson, c.upper_ejson) for c in copied] == [(None, None)]

    reads = record_range_reads(monkeypatch)
    same = verify_collection(spec, plan, recheck_delay_s=0, copied=copied)
    assert same.equal, same.describe()
    assert (same.source_docs, same.target_docs, same.ranges) == (3000, 3000, 1)
    # nothing was sent: the destination hashed its documents, the source counted its _id index keys
    assert reads == []
    assert destination_collection_hash(spec, plan) == copied[0].read_hash

    src_client.shop.whole.insert_one({"_id": 2500.25, "n": -1})       # after the copy: never read by it
    whole = dst_client.shop.get_collection("whole", codec_options=bson.CodecOptions(RawBSONDocument))
    whole.update_one({"_id": "k000011"}, {"$set": {"n": 12}})  # the same size, other bytes
    whole.delete_one({"_id": ObjectId((2997).to_bytes(12, "big"))})
    diff = verify_collection(spec, plan, recheck_delay_s=0.1, copied=copied)
    assert (diff.missing, diff.extra, diff.different) == (2, 0, 1)
    kinds = by_kind(diff)
    assert sorted(kinds["missing"]) == sorted(["2500.25", '{"$oid": "000000000000000000000bb5"}'])
    assert kinds["different"] == ['"k000011"']


def test_a_change_still_in_flight_is_not_reported(src_client, dst_client, spec_for):
    docs = [raw({"_id": i, "v": i}) for i in range(300)]
    insert_raw(src_client, "live.c", docs)
    insert_raw(dst_client, "live.c", docs[:-1])  # the last one is still on its way
    spec = spec_for(objects=[{"database": "live"}])
    late = threading.Timer(1.0, lambda: insert_raw(dst_client, "live.c", docs[-1:]))
    late.start()
    try:
        result = verify_collection(spec, plan_for(spec, "live.c"), recheck_delay_s=2.5)
    finally:
        late.join()
    assert result.equal, result.describe()
    assert result.rechecked_ranges == 1  # it was seen missing, then read again after the delay
    assert result.source_docs == result.target_docs == 300


def test_options_indexes_views_and_a_missing_target(src_client, dst_client, spec_for):
    for client in (src_client, dst_client):
        client.app.create_collection("people", collation={"locale": "fr", "strength": 2},
                                     validator={"age": {"$gte": 0}})
        client.app.people.insert_many([{"_id": i, "age": i} for i in range(20)])
    src_client.app.people.create_index("age", name="age_1", unique=True)
    dst_client.app.people.create_index("age", name="age_1")                 # not unique
    dst_client.app.people.create_index("other", name="other_1")             # only on the target
    src_client.app.create_collection("adults", viewOn="people", pipeline=[{"$match": {"age": {"$gte": 18}}}])
    dst_client.app.create_collection("adults", viewOn="people", pipeline=[{"$match": {"age": {"$gte": 21}}}])
    dst_client.app.command("collMod", "people", validator={"age": {"$gte": 1}})
    src_client.app.orphans.insert_many([{"_id": i} for i in range(150)])    # not on the destination
    src_client.app.shapes.insert_one({"_id": 1})
    dst_client.app.create_collection("shapes", viewOn="people", pipeline=[])  # a view, not a collection
    spec = spec_for(objects=[{"database": "app"}])

    people = verify_collection(spec, plan_for(spec, "app.people"), recheck_delay_s=0)
    assert not people.equal
    assert people.missing == people.extra == people.different == 0
    assert people.problems == ["collection options differ: validator", "indexes different: age_1"]
    assert people.notes == ["indexes only on the target: other_1"]

    view = verify_collection(spec, plan_for(spec, "app.adults"), recheck_delay_s=0)
    assert view.problems == ["view definition differs: pipeline"]

    orphans = verify_collection(spec, plan_for(spec, "app.orphans"), recheck_delay_s=0)
    assert orphans.problems == ["the target collection does not exist"]
    assert orphans.missing == 150 and len(orphans.differences) == 100

    shapes = verify_collection(spec, plan_for(spec, "app.shapes"), recheck_delay_s=0)
    assert shapes.problems == ["the target is a view, the source a collection"] and not shapes.equal


def test_time_series_and_clustered_collections(src_client, dst_client, spec_for):
    from datetime import datetime, timedelta

    start = datetime(2024, 1, 1)
    readings = [{"t": start + timedelta(minutes=i), "sensor": {"id": i % 3}, "v": i} for i in range(500)]
    for client in (src_client, dst_client):
        client.iot.create_collection("readings", timeseries={"timeField": "t", "metaField": "sensor"})
        client.iot.create_collection("events", clusteredIndex={"key": {"_id": 1}, "unique": True})
    src_client.iot.readings.insert_many(readings)
    # the destination's buckets are copied byte for byte, as the full copy does
    buckets = list(src_client.iot.get_collection("system.buckets.readings",
                                                 codec_options=bson.CodecOptions(RawBSONDocument)).find())
    insert_raw(dst_client, "iot.system.buckets.readings", buckets)
    events = [raw({"_id": i, "e": "x" * i}) for i in range(200)]
    insert_raw(src_client, "iot.events", events)
    insert_raw(dst_client, "iot.events", events[:150] + [raw({"_id": 199, "e": "changed"})])
    spec = spec_for(objects=[{"database": "iot"}])

    ts = verify_collection(spec, plan_for(spec, "iot.readings"), recheck_delay_s=0)
    assert ts.equal, ts.describe()
    assert ts.source_docs == len(buckets) > 0

    clustered = verify_collection(spec, plan_for(spec, "iot.events"), recheck_delay_s=0)
    assert (clustered.missing, clustered.extra, clustered.different) == (49, 0, 1)
    assert by_kind(clustered)["different"] == ["199"]


def test_migrate_ends_with_verification_and_the_cli_exit_codes(src_client, dst_client, spec_for, run_cli,
                                                              tmp_path, prefect_api):
    insert_raw(src_client, "crm.customers", mixed_documents(400))
    src_client.crm.customers.create_index("n")
    src_client.crm.create_collection("top", viewOn="customers", pipeline=[{"$match": {"n": {"$lt": 10}}}])
    spec = spec_for(objects=[{"database": "crm"}], name_mapping={"crm.customers": "sales.clients"})
    summary = migrate(spec)
    assert summary.counts_match

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.model_dump_json(exclude_none=True))
    dst_client.sales.clients.delete_one({"_id": 5})
    different = run_cli("verify", str(spec_file), "--json", "--recheck-delay", "0.1")
    assert different.returncode == 3, different.stderr
    report = json.loads(different.stdout)
    assert report["status"] == "different" and report["equal"] is False
    clients, top = sorted(report["collections"], key=lambda c: c["target_ns"] != "sales.clients")
    assert (clients["target_ns"], clients["missing"], clients["differences"]) == (
        "sales.clients", 1, [{"id": "5", "kind": "missing"}])
    assert top["target_ns"] == "crm.top" and top["equal"] is True
    text = verification_text(VerificationReport.model_validate(report))  # what the CLI prints without --json
    assert "missing   _id 5" in text and text.endswith("verification: DIFFERENT")

    async def latest_verification():
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["verification"])),
                sort="CREATED_DESC", limit=1)
            return found[0]

    import asyncio
    artifact = asyncio.run(latest_verification())
    assert artifact.type == "table"
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    row = next(r for r in rows if r["target"] == "sales.clients")
    assert row["status"] == "DIFFERENT" and row["missing"] == 1 and "missing 5" in row["first differences"]

    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps({**json.loads(spec_file.read_text()),
                                "destination": {"uri": "mongodb://127.0.0.1:1/", "timeout_s": 2}}))
    unreachable = run_cli("verify", str(gone))
    assert unreachable.returncode == 2
    assert "cannot verify: destination" in unreachable.stderr and "connection refused" in unreachable.stderr


def test_collections_are_verified_in_groups_of_about_equal_length_in_order():
    from mongo_migrate.flows.verify import in_groups

    for n, groups in ((200, 16), (10, 3), (4, 16), (1, 4), (0, 4)):
        cut = in_groups(list(range(n)), groups)
        assert [i for g in cut for i in g] == list(range(n))  # every collection once, in order
        assert len(cut) == min(n, groups) and all(cut)
        assert not cut or max(map(len, cut)) - min(map(len, cut)) <= 1
