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
