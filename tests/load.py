"""A write load on the source for the incremental-sync tests: every kind of change the sync applies."""
from __future__ import annotations

import random
import threading
import time

from bson import Int64
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError


def seed(client: MongoClient, db: str = "shop", docs: int = 1000) -> None:
    """Collections the load works on: orders (nested documents and arrays), items (a unique index),
    and `other.archive` outside the selection."""
    d = client[db]
    d.orders.insert_many([
        {"_id": i, "n": i, "customer": {"name": f"c{i}", "address": {"city": "Paris", "zip": "75001"}},
         "lines": [{"sku": f"s{j}", "qty": j} for j in range(5)], "tags": ["a", "b", "c"], "total": i * 1.5}
        for i in range(docs)
    ])
    d.orders.create_index([("n", 1)], name="n_1")
    d.items.insert_many([{"_id": f"item{i}", "sku": f"sku{i}", "price": Int64(i)} for i in range(docs // 4)])
    d.items.create_index([("sku", 1)], name="sku_unique", unique=True)
    client.other.archive.insert_many([{"_id": i, "old": True} for i in range(50)])


class SourceLoad:
    """Writes to the source from a thread until stopped: inserts, updates of nested fields and arrays
    (array truncation included), pipeline updates that add fields out of name order and fields with
    dots in their names, replaces, deletes, a transaction, index and collection DDL (create, drop,
    rename inside the selection, into it and out of it)."""

    def __init__(self, client: MongoClient, db: str = "shop", seed_docs: int = 1000, pace_s: float = 0.002,
                 ddl_every: int = 1):
        self.client, self.db = client, client[db]
        # $setField (a field name with a dot, written by an update) is 5.0+
        self.set_field = tuple(client.server_info()["versionArray"][:2]) >= (5, 0)
        self.next_id = seed_docs
        self.pace_s = pace_s
        self.rounds = 0
        # DDL starts when this is set (once the migration has passed its precheck, which reads the
        # catalog and would race with collections that come and go)
        self.ddl = threading.Event()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="source-load")
        self.rng = random.Random(7)
        self.ddl_every = ddl_every  # DDL on one round in so many (each DDL round may add a collection)

    def start(self) -> "SourceLoad":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.errors:
            raise self.errors[0]

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.one_round()
                self.rounds += 1
                time.sleep(self.pace_s)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)

    def one_round(self) -> None:
        r, db, orders = self.rng, self.db, self.db.orders
        i = r.randrange(self.next_id)
        orders.insert_one({"_id": self.next_id, "n": self.next_id, "customer": {"name": "new"},
                           "lines": [{"sku": "x", "qty": 1}], "tags": []})
        self.next_id += 1
        orders.update_one({"_id": i}, {"$set": {"customer.address.city": f"city{r.randrange(9)}"},
                                       "$inc": {"lines.0.qty": 1}})
        orders.update_one({"_id": r.randrange(self.next_id)}, {"$push": {"tags": {"$each": ["x", "y"]}}})
        # array truncation (truncatedArrays) and a field removed
        orders.update_one({"_id": r.randrange(self.next_id)},
                          [{"$set": {"lines": {"$cond": [{"$isArray": "$lines"}, {"$slice": ["$lines", 2]}, []]}}},
                           {"$unset": "total"}])
        # new fields in an order $set would not keep, and a field whose name has a dot
        orders.update_one({"_id": r.randrange(self.next_id)}, [{"$set": {"zeta": 1}}, {"$set": {"alpha": 2}}])
        if self.set_field:
            orders.update_one({"_id": r.randrange(self.next_id)}, [{"$replaceWith": {"$setField": {
                "field": "price.eur", "input": "$$ROOT", "value": r.randrange(100)}}}])
        orders.replace_one({"_id": r.randrange(self.next_id)}, {"replaced": True, "at": self.rounds})
        orders.delete_one({"_id": r.randrange(self.next_id)})
        # swap two unique keys (a transient duplicate if applied out of order)
        a, b = f"item{r.randrange(50)}", f"item{50 + r.randrange(50)}"
        with self.client.start_session() as s:
            def swap(session):
                ka = db.items.find_one({"_id": a}, session=session)["sku"]
                kb = db.items.find_one({"_id": b}, session=session)["sku"]
                db.items.update_one({"_id": a}, {"$set": {"sku": f"tmp-{a}"}}, session=session)
                db.items.update_one({"_id": b}, {"$set": {"sku": ka}}, session=session)
                db.items.update_one({"_id": a}, {"$set": {"sku": kb}, "$inc": {"price": 1}}, session=session)
            s.with_transaction(swap)
        if not self.ddl.is_set() or self.rounds % self.ddl_every:
            return
        k = self.rounds // self.ddl_every
        if k % 10 == 3:
            orders.create_index([("customer.address.city", 1), ("n", -1)], name="city_n")
        if k % 10 == 8:
            self._quiet(lambda: orders.drop_index("city_n"))
        if k % 15 == 5:
            db[f"tmp{k}"].insert_many([{"_id": j, "k": k} for j in range(20)])
            db[f"tmp{k}"].rename(f"kept{k}")  # rename inside the selection
        if k % 15 == 10:
            self._quiet(lambda: db.drop_collection(f"kept{k - 5}"))
            db.create_collection(f"created{k}", validator={"n": {"$exists": True}})
        if k % 20 == 7:
            self.client.other[f"incoming{k}"].insert_many([{"_id": j} for j in range(10)])
            self.client.admin.command("renameCollection", f"other.incoming{k}", to=f"{db.name}.moved{k}")
        if k % 20 == 17:
            db[f"leaving{k}"].insert_many([{"_id": j} for j in range(10)])
            self.client.admin.command("renameCollection", f"{db.name}.leaving{k}", to=f"other.left{k}")

    @staticmethod
    def _quiet(fn) -> None:
        try:
            fn()
        except (OperationFailure, PyMongoError):
            pass
