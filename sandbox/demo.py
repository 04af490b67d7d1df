"""`mongo-migrate demo`: two local mongods, sample data, one migration, and where to look."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import yaml
from bson.raw_bson import RawBSONDocument

from mongo_migrate.sandbox.mongod import Mongod
from mongo_migrate.sandbox.sample_data import encoded_documents


def seed(client) -> dict[str, int]:
    """Sample data with the kinds of things a migration must carry: options, indexes, a view,
    time-series data, non-ASCII names."""
    shop, crm, metrics = client.shop, client.crm, client.metrics
    shop.products.insert_many(
        [{"_id": f"sku-{i:05d}", "name": f"Product {i}", "price": round(3.5 * i, 2),
          "stock": {"warehouse": i % 7, "qty": i % 50}} for i in range(1000)]
    )
    shop.products.create_index("name", unique=True)
    shop.products.create_index([("name", "text")], name="name_text", default_language="english")
    orders = shop.get_collection("orders")
    docs = (RawBSONDocument(raw) for raw in encoded_documents(20_000, 0, 512))
    while batch := list(islice(docs, 2000)):
        orders.insert_many(batch)
    orders.create_index([("k", 1), ("at", -1)])
    orders.create_index("at", expireAfterSeconds=10 * 365 * 86400, name="at_ttl_10y")
    crm.create_collection("customers", collation={"locale": "fr", "strength": 2})
    crm.customers.insert_many(
        [{"name": n, "tier": "gold" if i % 3 == 0 else "silver", "city": c}
         for i, (n, c) in enumerate([("Élodie", "Lyon"), ("Ana", "Porto"), ("Søren", "Aarhus"),
                                     ("Chloé", "Paris"), ("Zoë", "Gent"), ("Miłosz", "Kraków")])]
    )
    crm.create_collection("vip_customers", viewOn="customers", pipeline=[{"$match": {"tier": "gold"}}])
    crm.leads.insert_many([{"email": f"lead{i}@example.com", "score": i} for i in range(300)])
    crm.leads.create_index("email", unique=True, partialFilterExpression={"score": {"$gt": 10}})
    metrics.create_collection("cpu", timeseries={"timeField": "t", "metaField": "host",
                                                 "granularity": "minutes"})
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    metrics.cpu.insert_many([{"t": start + dt.timedelta(minutes=i), "host": f"h{i % 3}",
                              "load": (i % 17) / 4} for i in range(3000)])
    return {"shop.products": 1000, "shop.orders": 20_000, "crm.customers": 6, "crm.leads": 300,
            "metrics.cpu": 3000}


def run_demo(directory: str = ".demo") -> int:
    base = Path(directory).resolve()
    for old in ("source", "destination"):
        shutil.rmtree(base / old, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    prefect_home = base / "prefect"
    print(f"starting a source replica set and a destination replica set under {base} ...")
    with Mongod(base / "source", replset="demo-src") as src, \
            Mongod(base / "destination", replset="demo-dst") as dst:
        with src.client() as client:
            counts = seed(client)
        print(f"source {src.uri()}: seeded " + ", ".join(f"{k} ({v:,})" for k, v in counts.items()))
        spec = {
            "source": {"uri": src.uri()},
            "destination": {"uri": dst.uri()},
            "migration_types": ["full"],
            "objects": [
                {"database": "shop"},
                {"database": "crm", "collections": ["customers", "vip_customers", "leads"]},
                {"database": "metrics"},
            ],
            "name_mapping": {"shop": "shop_v2", "crm.leads": "sales.leads"},
        }
        spec_path = base / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        print(f"spec {spec_path}:\n" + "\n".join("    " + line for line in spec_path.read_text().splitlines()))
        env = {**os.environ, "PREFECT_HOME": str(prefect_home),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        print("\nrunning: mongo-migrate run", spec_path, flush=True)
        code = subprocess.call([sys.executable, "-m", "mongo_migrate.flows.cli", "run", str(spec_path)], env=env)
        print("\nstopping the demo mongods")
    if code == 0:
        print(f"""
The migration ran as Prefect flow runs recorded in {prefect_home}. To see them in the Prefect UI:

    PREFECT_HOME={prefect_home} .venv/bin/prefect server start

then open http://127.0.0.1:4200/runs (flow 'migrate': the precheck table, the full-copy progress and
the migration summary are under Artifacts). `make serve` starts a server with the deployments.""")
    return code
