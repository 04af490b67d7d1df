"""Step 3: which source namespaces are selected and what each is called on the destination.

The same `NamespaceMapper` serves the full copy and the incremental sync, so a name maps the same way
in both.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import META_DATABASE, SYSTEM_DATABASES, MigrationSpec
from mongo_migrate.tasks.common import from_ejson, step, to_ejson

Kind = Literal["collection", "timeseries", "view"]

# collections the server keeps in `config` for sessions, transactions, tenant migrations, sharding and
# write blocking (setUserWriteBlockMode, which the cutover may use): they describe the source cluster
# itself and must never be written into another one
SERVER_CONFIG_COLLECTIONS = frozenset({
    "transactions", "image_collection", "external_validation_keys", "tenantMigrationDonors",
    "tenantMigrationRecipients", "shardMergeRecipients", "migrationCoordinators", "rangeDeletions",
    "actionlog", "changelog", "chunks", "collections", "databases", "lockpings", "locks", "migrations",
    "mongos", "placementHistory", "reshardingOperations", "settings", "shards", "tags", "version",
    "vectorClock", "compactStructuredEncryptionCoordinator", "user_writes_critical_sections",
})
SERVER_CONFIG_PREFIXES = ("cache.", "localReshardingOperations.", "localReshardingConflictStash.")


# stored JavaScript is the user's data (mongodump keeps it too); other system.* collections hold views,
# time-series buckets or profiles, which travel with their objects or belong to the server
USER_SYSTEM_COLLECTIONS = frozenset({"system.js"})


def server_managed(db: str, coll: str) -> bool:
    return db == "config" and (coll in SERVER_CONFIG_COLLECTIONS or coll.startswith(SERVER_CONFIG_PREFIXES))


class NamespaceMapper:
    def __init__(self, spec: MigrationSpec) -> None:
        self.whole_databases = {o.database for o in spec.objects if o.collections is None}
        self.some_collections = {o.database: set(o.collections) for o in spec.objects if o.collections}
        self.select_all = not spec.objects
        self.database_map = {k: v for k, v in spec.name_mapping.items() if "." not in k}
        self.collection_map = {k: v for k, v in spec.name_mapping.items() if "." in k}

    def database_selected(self, db: str) -> bool:
        if self.select_all:
            return db not in SYSTEM_DATABASES and db != META_DATABASE
        return db in self.whole_databases or db in self.some_collections

    def selected(self, db: str, coll: str) -> bool:
        if coll.startswith("system.") and coll not in USER_SYSTEM_COLLECTIONS:
            return False  # views, buckets and profiles travel with the objects they belong to
        if server_managed(db, coll):
            return False
        if self.select_all:
            return self.database_selected(db)
        return db in self.whole_databases or coll in self.some_collections.get(db, ())

    def target(self, db: str, coll: str) -> tuple[str, str]:
        # a collection's own mapping wins over its database's; collection names may contain dots
        mapped = self.collection_map.get(f"{db}.{coll}")
        if mapped:
            tdb, _, tcoll = mapped.partition(".")
            return tdb, tcoll
        return self.database_map.get(db, db), coll

    def target_database(self, db: str) -> str:
        return self.database_map.get(db, db)


class CollectionPlan(BaseModel):
    """One selected source collection or view, and where it goes."""

    source_db: str
    source_name: str
    target_db: str
    target_name: str
    kind: Kind
    # listCollections options as canonical Extended JSON (validators may hold any BSON type)
    options_ejson: str = "{}"

    @property
    def source_ns(self) -> str:
        return f"{self.source_db}.{self.source_name}"

    @property
    def target_ns(self) -> str:
        return f"{self.target_db}.{self.target_name}"

    @property
    def options(self) -> dict:
        return from_ejson(self.options_ejson)

    @property
    def data_collection(self) -> str:
        """Where the documents are stored: time-series data lives in its bucket collection."""
        return f"system.buckets.{self.source_name}" if self.kind == "timeseries" else self.source_name

    @property
    def target_data_collection(self) -> str:
        return f"system.buckets.{self.target_name}" if self.kind == "timeseries" else self.target_name


class MigrationPlan(BaseModel):
    collections: list[CollectionPlan]
    missing: list[str] = []  # selected in the spec but not on the source
    config_selected: bool = False

    @property
    def data_plans(self) -> list[CollectionPlan]:
        return [p for p in self.collections if p.kind != "view"]

    @property
    def views(self) -> list[CollectionPlan]:
        return [p for p in self.collections if p.kind == "view"]


def plan_namespaces(spec: MigrationSpec) -> MigrationPlan:
    """Read the source catalog and list every selected collection and view with its target name."""
    client = open_client(spec.source.resolve())
    mapper = NamespaceMapper(spec)
    databases = sorted(client.list_database_names())
    plans: list[CollectionPlan] = []
    missing: list[str] = []
    for obj in spec.objects:
        if obj.database not in databases:
            missing.append(obj.database)
    for db in databases:
        if not mapper.database_selected(db):
            continue
        infos = {c["name"]: c for c in client[db].list_collections()}
        wanted = mapper.some_collections.get(db)
        if wanted:
            missing += [f"{db}.{name}" for name in sorted(wanted) if name not in infos]
            missing += [f"{db}.{name} (managed by the server, never migrated)" for name in sorted(wanted)
                        if name in infos and server_managed(db, name)]
        for name in sorted(infos):
            if not mapper.selected(db, name):
                continue
            info = infos[name]
            kind: Kind = info.get("type", "collection")  # type: ignore[assignment]
            tdb, tname = mapper.target(db, name)
            plans.append(CollectionPlan(
                source_db=db, source_name=name, target_db=tdb, target_name=tname, kind=kind,
                options_ejson=to_ejson(info.get("options", {})),
            ))
    return MigrationPlan(
        collections=plans, missing=missing,
        config_selected=any(o.database == "config" for o in spec.objects),
    )


plan_namespaces_task = step(plan_namespaces)
