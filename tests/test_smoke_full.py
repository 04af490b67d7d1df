"""A first end-to-end full migration through the flow."""
from mongo_migrate.flows.migrate import migrate
from tests.conftest import assert_same_documents, collection_options, index_specs


def test_full_migration_with_renames(src_client, dst_client, spec_for):
    src_client.shop.orders.insert_many([{"_id": i, "n": i, "s": "x" * i} for i in range(500)])
    src_client.shop.orders.create_index([("n", -1)], name="n_desc", unique=True)
    src_client.crm.create_collection("customers", collation={"locale": "fr", "strength": 2})
    src_client.crm.customers.insert_many([{"name": f"c{i}"} for i in range(50)])
    src_client.crm.leads.insert_one({"x": 1})
    src_client.crm.create_collection("big_customers", viewOn="customers",
                                     pipeline=[{"$match": {"name": {"$gt": "c3"}}}])
    spec = spec_for(
        objects=[{"database": "shop"}, {"database": "crm", "collections": ["customers", "big_customers"]}],
        name_mapping={"shop": "shop_v2", "crm.customers": "crm.clients"},
    )
    summary = migrate(spec)
    assert summary.counts_match
    assert_same_documents(src_client, dst_client, "shop.orders", "shop_v2.orders")
    assert_same_documents(src_client, dst_client, "crm.customers", "crm.clients")
    assert "leads" not in dst_client.crm.list_collection_names()
    assert index_specs(dst_client, "shop_v2.orders")["n_desc"]["unique"] is True
    assert collection_options(dst_client, "crm.clients")["collation"]["locale"] == "fr"
    view = collection_options(dst_client, "crm.big_customers")
    assert view["viewOn"] == "clients"
    assert dst_client.crm.big_customers.count_documents({}) == src_client.crm.big_customers.count_documents({})


def test_a_collections_indexes_are_built_while_other_collections_still_copy(src_client, dst_client, spec_for):
    """A collection's indexes start as soon as its own copy ends, not after the whole copy: seen on the
    destination, where the small collection's index exists while the big one is still being filled (its
    copy held to 1,000 documents per second)."""
    import threading
    import time

    src_client.shop.big.insert_many([{"_id": i, "n": i} for i in range(3000)])
    src_client.shop.small.insert_many([{"_id": i, "sku": f"s{i}"} for i in range(5)])
    src_client.shop.small.create_index("sku", name="by_sku")
    spec = spec_for(objects=[{"database": "shop"}], throttle={"docs_per_s": 1000},
                    copy_options={"parallel_workers": 2, "batch_docs": 100})
    seen: list[int] = []  # big's documents on the destination when small's index was first there
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            if "by_sku" in {ix["name"] for ix in dst_client.shop.small.list_indexes()}:
                seen.append(dst_client.shop.big.estimated_document_count())
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        summary = migrate(spec)
    finally:
        done.set()
        watcher.join()
    assert summary.counts_match
    assert time.monotonic() - started > 2  # the cap held the big copy for seconds
    assert seen and seen[0] < 3000, seen
    assert index_specs(dst_client, "shop.small")["by_sku"]["key"] == {"sku": 1}
    assert_same_documents(src_client, dst_client, "shop.big")
    assert_same_documents(src_client, dst_client, "shop.small")
