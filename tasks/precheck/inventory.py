"""What the source holds, read once for items 4, 8, 9 and 12: each selected collection's size, documents
and index specs."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from pydantic import BaseModel
from pymongo.errors import OperationFailure, PyMongoError

from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import (COLLSTATS_NOT_FOUND_42, COMMAND_NOT_SUPPORTED_ON_VIEW, NAMESPACE_NOT_FOUND,
                                        from_ejson, to_ejson)
from mongo_migrate.tasks.namespaces import CollectionPlan, MigrationPlan
from mongo_migrate.tasks.precheck.report import CheckResult, failed, source_read_problem

# -- source inventory: sizes and index specs, read once for items 4, 8, 9, 12 -------------------

class CollectionFacts(BaseModel):
    plan: CollectionPlan
    docs: int = 0
    data_bytes: int = 0
    index_bytes: int = 0
    indexes_ejson: str = "[]"

    @property
    def indexes(self) -> list[dict]:
        return from_ejson(self.indexes_ejson)


class SourceInventory(BaseModel):
    collections: list[CollectionFacts] = []
    error: Optional[str] = None

    @property
    def data_bytes(self) -> int:
        return sum(c.data_bytes for c in self.collections)

    @property
    def index_bytes(self) -> int:
        return sum(c.index_bytes for c in self.collections)


def read_source_inventory(spec: MigrationSpec, plan: MigrationPlan) -> SourceInventory:
    """Size, document count and index specs of every selected collection (views have none), read
    `parallel_workers` collections at a time: a `$collStats` costs the server 20-40 ms, and the
    precheck's later items wait for all of them."""
    client = open_client(spec.source.resolve())
    facts = []
    with ThreadPoolExecutor(max_workers=spec.copy_options.parallel_workers) as pool:
        try:
            for found in pool.map(lambda p: _collection_facts(client, p), plan.data_plans):
                if found is not None:
                    facts.append(found)
        except PyMongoError as exc:
            return SourceInventory(collections=facts, error=source_read_problem(exc))
    return SourceInventory(collections=facts)


def _collection_facts(client, p: CollectionPlan) -> CollectionFacts | None:
    coll = client[p.source_db][p.source_name]
    docs = data = index = 0
    try:
        stats = list(coll.aggregate([{"$collStats": {"storageStats": {}}}]))  # one per shard
    except OperationFailure as exc:
        if exc.code in (NAMESPACE_NOT_FOUND, COMMAND_NOT_SUPPORTED_ON_VIEW) or (
                # 4.2 says so with code 40280 ("Unable to retrieve storageStats in $collStats
                # stage: Collection [db.c] not found."): a rerun's precheck on a 4.2 source
                # under DDL failed on a collection dropped after the listing
                exc.code == COLLSTATS_NOT_FOUND_42 and "not found" in str(exc)):
            # dropped (or replaced by a view) since the plan listed it: a live source does
            # that; there is nothing to size, and the sync replays the drop
            return None
        raise
    for s in stats:
        st = s.get("storageStats", {})
        docs += int(st.get("count") or 0)
        data += int(st.get("size") or 0)
        index += int(st.get("totalIndexSize") or 0)
    indexes = [{k: v for k, v in ix.items() if k != "ns"} for ix in coll.list_indexes()]
    return CollectionFacts(plan=p, docs=docs, data_bytes=data, index_bytes=index, indexes_ejson=to_ejson(indexes))


def inventory_unreadable(name: str, inventory: SourceInventory) -> CheckResult:
    return failed(name, f"not checked: the source's collection sizes and indexes could not be read "
                  f"({inventory.error})", "grant the source account read on the selected databases")
