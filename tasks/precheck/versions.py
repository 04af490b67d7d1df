"""Versions and compatibility: item 3 (source version and topology), 4 (what the destination's version
and features take of the source's indexes and collections) and 7 (incremental prerequisites)."""
from __future__ import annotations

from typing import Optional

from pymongo.errors import OperationFailure

from mongo_migrate.blocks.mongo import MongoConnection, open_client, server_hello
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import version_tuple
from mongo_migrate.tasks.connect import EndpointInfo
from mongo_migrate.tasks.namespaces import MigrationPlan
from mongo_migrate.tasks.precheck.inventory import SourceInventory, inventory_unreadable
from mongo_migrate.tasks.precheck.report import CheckResult, check_item, failed, first_host, passed, refusal, warning
from mongo_migrate.tasks.sync.sources import stream_has_ddl

INCREMENTAL = "incremental prerequisites"
SOURCE_VERSION = "source version and topology"
DESTINATION_COMPATIBILITY = "destination compatibility"

# the oldest sources: the driver (pymongo 4.10, pinned for this) speaks to 3.6; the sync resumes its
# change stream with startAfter, which 4.2 brought
OLDEST_SOURCE = (3, 6)
OLDEST_INCREMENTAL_SOURCE = (4, 2)
TESTED_SOURCES = ("4.2", "4.4", "5.0", "6.0")  # real servers in the test suite (README: versions)
OLD_SOURCE_REMEDY = ("upgrade the source in place to MongoDB 3.6 or later (4.2 or later for "
                     "incremental migration), or make a one-off full copy with mongodump and "
                     "mongorestore while the applications are stopped")


# -- 3: source version and topology ------------------------------------------------------------

def what_the_run_does(version: str, topology: str, incremental: bool) -> str:
    """The version row's promise: what this source version gets from this run."""
    v = version_tuple(version)
    if not incremental:
        return "full migration"
    if topology == "standalone":
        return "full migration (a standalone has no change stream: see incremental prerequisites)"
    if v >= (6, 0):
        return ("full + incremental migration; the change stream carries every change, DDL included "
                "(expanded events)")
    return ("full + incremental migration; the change stream carries document changes, drop, rename and "
            "dropDatabase; create, index and collMod changes are read from the source's oplog "
            f"(MongoDB {v[0]}.{v[1]} streams none)")


def classify_source_version(version: str, topology: str, direct_member: bool = False,
                            secondary: bool = False, incremental: bool = False) -> CheckResult:
    name = SOURCE_VERSION
    v = version_tuple(version)
    if v < OLDEST_SOURCE:
        return failed(name, f"MongoDB {version} is older than 3.6, the oldest this migration's driver "
                      "speaks to", OLD_SOURCE_REMEDY)
    kind = {"standalone": "standalone", "replica_set": "replica set", "sharded": "sharded cluster"}[topology]
    if incremental and v < OLDEST_INCREMENTAL_SOURCE:
        return failed(name, f"MongoDB {version}, {kind}: incremental migration needs 4.2 or later (its "
                      "change stream resumes with startAfter); a full migration works",
                      "upgrade the source in place to 4.2 or later, or use migration_types: [full] "
                      "while the applications' writes are stopped")
    does = what_the_run_does(version, topology, incremental)
    if f"{v[0]}.{v[1]}" not in TESTED_SOURCES and v < (6, 0):
        return warning(name, f"MongoDB {version}, {kind}: {does}; untested on {v[0]}.{v[1]} (the test "
                       f"suite runs {', '.join(TESTED_SOURCES)})",
                       "try the precheck and a full migration of a copy first; report what differs")
    if secondary:
        return warning(name, f"MongoDB {version}, {kind}: connected directly to a secondary",
                       "point the source URI at the replica set (replicaSet=NAME) so reads follow "
                       "the primary and survive a failover")
    if direct_member:
        return warning(name, f"MongoDB {version}, {kind}: connected directly to one member "
                       "(directConnection), so a failover stops the migration",
                       "list the members and add replicaSet=NAME to the source URI instead of "
                       "directConnection=true")
    return passed(name, f"MongoDB {version}, {kind}: {does}")


@check_item(SOURCE_VERSION)
def check_source_version(spec: MigrationSpec, source: EndpointInfo) -> CheckResult:
    """Item 3: a version the driver supports; a topology the migration can follow."""
    client = open_client(spec.source.resolve())
    hello = server_hello(client)
    direct = (source.topology == "replica_set"
              and client.topology_description.topology_type_name == "Single")
    return classify_source_version(source.version or "0", source.topology or "standalone",
                                   direct_member=direct,
                                   secondary=bool(hello.get("secondary")) and direct,
                                   incremental=spec.incremental)


# -- 4: destination compatibility --------------------------------------------------------------

def index_problem(index: dict, kind: str, options: dict, level: tuple[int, int]) -> Optional[str]:
    """Why a destination at this version/FCV level cannot build this source index, or None."""
    key = index.get("key", {})
    name = index.get("name", "?")
    values = [v for v in key.values()]
    fields = list(key)
    if "geoHaystack" in values and level >= (5, 0):
        return f"index {name}: geoHaystack indexes were removed in MongoDB 5.0"
    wildcard = any(f == "$**" or f.endswith(".$**") for f in fields)
    if wildcard and len(fields) > 1 and level < (7, 0):
        return f"index {name}: compound wildcard indexes need MongoDB 7.0"
    if "columnstore" in values and level < (6, 3):
        return f"index {name}: columnstore indexes need MongoDB 6.3 or later"
    if index.get("prepareUnique") and level < (6, 0):
        return f"index {name}: prepareUnique needs MongoDB 6.0"
    if kind == "timeseries":
        ts = options.get("timeseries", {})
        time_field, meta = ts.get("timeField"), ts.get("metaField")
        measurement = [f for f in fields
                       if f != time_field and not (meta and (f == meta or f.startswith(meta + ".")))]
        if measurement and level < (6, 0):
            return (f"index {name}: indexes on time-series measurement fields ({', '.join(measurement)}) "
                    "need feature compatibility 6.0")
    return None


def collection_problem(kind: str, options: dict, level: tuple[int, int]) -> Optional[str]:
    """Why a destination at this level cannot create a collection with these options, or None."""
    if kind == "timeseries":
        if level < (5, 0):
            return "time-series collections need MongoDB 5.0"
        ts = options.get("timeseries", {})
        if "bucketRoundingSeconds" in ts and level < (6, 3):
            return "custom time-series bucketing (bucketRoundingSeconds) needs MongoDB 6.3"
    elif "clusteredIndex" in options and level < (5, 3):
        return "clustered collections need feature compatibility 5.3 or later"
    if options.get("changeStreamPreAndPostImages", {}).get("enabled") and level < (6, 0):
        return "changeStreamPreAndPostImages needs MongoDB 6.0"
    if "encryptedFields" in options and level < (6, 0):
        return "Queryable Encryption collections (encryptedFields) need MongoDB 6.0"
    return None


def classify_destination(source: EndpointInfo, destination: EndpointInfo,
                         inventory: SourceInventory) -> CheckResult:
    name = DESTINATION_COMPATIBILITY
    notes: list[str] = []
    warns: list[tuple[str, str]] = []
    src_v, dst_v = version_tuple(source.version), version_tuple(destination.version)
    if dst_v < src_v:
        warns.append((f"destination MongoDB {destination.version} is older than the source's "
                      f"{source.version}", "use a destination at least as new as the source, or make "
                      "sure no newer feature is in use (the items below check indexes and options)"))
    if destination.storage_engine is None:
        warns.append(("the destination's storage engine could not be read (serverStatus)",
                      "grant the destination account clusterMonitor, or check it is wiredTiger"))
    elif destination.storage_engine != "wiredTiger":
        warns.append((f"the destination runs the {destination.storage_engine} storage engine",
                      "use wiredTiger unless losing the data at a restart is intended (inMemory)"))
    else:
        notes.append("wiredTiger")
    level = dst_v
    if destination.fcv is None:
        warns.append(("the destination's feature compatibility version could not be read",
                      "grant the destination account clusterMonitor (getParameter)"))
    else:
        fcv = version_tuple(destination.fcv)
        level = min(level, fcv)
        src_level = version_tuple(source.fcv) if source.fcv else src_v
        if fcv < src_level:
            warns.append((f"destination feature compatibility {destination.fcv} is lower than the "
                          f"source's {source.fcv or source.version}",
                          f"run db.adminCommand({{setFeatureCompatibilityVersion: '{dst_v[0]}.{dst_v[1]}'}}) "
                          "on the destination, unless it must stay downgradable"))
    problems: list[str] = []
    for c in inventory.collections:
        options = c.plan.options
        problem = collection_problem(c.plan.kind, options, level)
        if problem:
            problems.append(f"{c.plan.source_ns}: {problem}")
        for ix in c.indexes:
            problem = index_problem(ix, c.plan.kind, options, level)
            if problem:
                problems.append(f"{c.plan.source_ns}: {problem}")
    target = f"MongoDB {destination.version}" + (f" (FCV {destination.fcv})" if destination.fcv else "")
    fails: list[tuple[str, str]] = []
    majority = destination.write_majority
    if majority is not None and majority.up < majority.needed:
        fails.append((f"{target}: writes cannot be confirmed by a majority: {majority.up} of the {majority.needed} "
                      "voting data-bearing members a majority write needs are up "
                      f"(down: {', '.join(majority.down) or '?'})",
                      "bring those members back, or remove them from the replica set's configuration: every "
                      "write is made with write concern majority"))
    if problems:
        fails.append((f"{target} cannot build: " + "; ".join(problems[:6])
                       + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""),
                       "drop or replace those indexes/options on the source (geoHaystack -> 2d), "
                       "or raise the destination's version/feature compatibility"))
    if fails:
        return failed(name, "; ".join(f[0] for f in fails), "; ".join(f[1] for f in fails))
    n_indexes = sum(len(c.indexes) for c in inventory.collections)
    if warns:
        return warning(name, f"{target}: " + "; ".join(w[0] for w in warns)
                       + f"; every one of {n_indexes} indexes can be built",
                       "; ".join(w[1] for w in warns))
    return passed(name, f"{target}, {', '.join(notes)}; every one of {n_indexes} indexes and "
                  f"{len(inventory.collections)} collections' options can be built")


@check_item(DESTINATION_COMPATIBILITY)
def check_destination_compatibility(source: EndpointInfo, destination: EndpointInfo,
                                    inventory: SourceInventory) -> CheckResult:
    """Item 4: version not lower (warning), storage engine, FCV, index kinds and collection options."""
    if inventory.error:
        return inventory_unreadable(DESTINATION_COMPATIBILITY, inventory)
    return classify_destination(source, destination, inventory)


# -- 7: incremental prerequisites ------------------------------------------------------------

def standalone_remedy(conn: MongoConnection) -> str:
    host = first_host(conn)
    return ("restart the source as a single-node replica set: 1) stop mongod (db.shutdownServer()); "
            "2) start it again with --replSet rs0 (or replication.replSetName: rs0 in mongod.conf; "
            "with --auth also --keyFile); 3) in mongosh run "
            f"rs.initiate({{_id: 'rs0', members: [{{_id: 0, host: '{host}'}}]}}); "
            "4) add replicaSet=rs0 to the source URI. Or migrate with migration_types: [full] while "
            "the applications are stopped")


@check_item(INCREMENTAL)
def check_incremental_prerequisites(spec: MigrationSpec, source: EndpointInfo,
                                    plan: Optional[MigrationPlan]) -> CheckResult:
    """Item 7: incremental migration follows the source's change stream, which needs a replica set
    (or a sharded cluster); a standalone fails with the steps to convert it."""
    name = INCREMENTAL
    if not spec.incremental:
        return passed(name, "not needed: full migration only")
    if source.topology == "standalone":
        return failed(name, "the source is a standalone mongod: incremental migration reads its change "
                      "stream, which only replica sets and sharded clusters have",
                      standalone_remedy(spec.source.resolve()))
    if version_tuple(source.version) < OLDEST_INCREMENTAL_SOURCE:
        return failed(name, f"MongoDB {source.version}: the sync needs 4.2 or later",
                      "see source version and topology")
    # the change stream opens as the sync opens it (tasks/sync/engine.py: deployment-wide, expanded
    # events from 6.0): privileges, majority read concern and version in one read
    client = open_client(spec.source.resolve())
    expanded = stream_has_ddl(source.version)
    try:
        with client.watch([{"$match": {"operationType": "none"}}],
                          show_expanded_events=True if expanded else None, max_await_time_ms=100) as stream:
            stream.try_next()
        if not expanded:
            # DDL comes from the oplog before 6.0 (tasks/sync/sources.py): read it as the sync does
            client.local["oplog.rs"].find_one({"op": "c"}, {"ts": 1})
    except OperationFailure as exc:
        return failed(name, f"a change stream cannot be opened on the source: {refusal(exc)}",
                      "see source permissions (readAnyDatabase, and read on local before 6.0); majority "
                      "read concern must be enabled")
    kind = "sharded cluster" if source.topology == "sharded" else f"replica set {source.replica_set}"
    how = "" if expanded else "; DDL from the oplog"
    return passed(name, f"{kind}: change streams can be opened{how}")
