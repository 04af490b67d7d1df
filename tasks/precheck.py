"""Step 2: the precheck. Every item reads, none writes; the migration starts only if none failed.

Each check item is its own function (and Prefect task), returning rows of the precheck table: passed,
warning or failed, a one-line detail and, for anything not passed, what to do about it. A check that
cannot run (an error reading the server) is a failed row, never an exception in the flow.

The items, in table order:
 1/2 source / destination connectivity      7  incremental prerequisites
 2b  source is not destination (by the ids the servers report, not by URI)
 3   source version and topology            8  oplog window
 4   destination compatibility              9  destination storage
 5/6 source / destination permissions       10 selected objects (and config database)
 11  name mapping, target namespaces        12 data compatibility (scan of the source data)
 and, when the spec asks for Slack, whether its notifier can be loaded.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Callable, Literal, Optional
from urllib.parse import urlsplit

import bson
from pydantic import BaseModel
from bson.codec_options import CodecOptions
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import OperationFailure, PyMongoError

from blocks.mongo import MongoConnection, open_client, server_hello
from blocks.spec import (
    META_DATABASE,
    MAX_NAMESPACE_BYTES,
    MigrationSpec,
    SpecError,
    collection_name_problem,
    database_name_problem,
)
from tasks.common import (COLLSTATS_NOT_FOUND_42, COMMAND_NOT_SUPPORTED_ON_VIEW, NAMESPACE_NOT_FOUND,
                          UNAUTHORIZED, from_ejson, step, to_ejson, version_tuple)
from tasks.connect import EndpointInfo, describe_connection_error
from tasks.copy import document_offsets
from tasks.namespaces import CollectionPlan, MigrationPlan, NamespaceMapper, plan_namespaces
from tasks.state import resumable_run
from tasks.sync.sources import stream_has_ddl

log = logging.getLogger("mongo_migrate.precheck")

Status = Literal["passed", "warning", "failed"]

SOURCE_CONNECTIVITY = "source connectivity"
DESTINATION_CONNECTIVITY = "destination connectivity"
DISTINCT_DEPLOYMENTS = "source is not destination"
SOURCE_VERSION = "source version and topology"
DESTINATION_COMPATIBILITY = "destination compatibility"
SOURCE_PERMISSIONS = "source permissions"
DESTINATION_PERMISSIONS = "destination permissions"
INCREMENTAL = "incremental prerequisites"
OPLOG_WINDOW = "oplog window"
DESTINATION_STORAGE = "destination storage"
OBJECTS = "selected objects"
CONFIG_DATABASE = "config database"
NAME_MAPPING = "name mapping"
TARGET_NAMESPACES = "target namespaces"
DATA_COMPATIBILITY = "data compatibility"
NOTIFICATIONS = "slack notifications"

MiB = 1024 * 1024
MAX_BSON_SIZE = 16 * MiB
LARGE_DOCUMENT_BYTES = MAX_BSON_SIZE - MiB  # "within 1 MB of 16 MB"
STORAGE_FACTOR = 1.1
OPLOG_WARN_RATIO = 3.0
SAMPLE_BYTES = 32 * MiB  # how much of the source is read to measure the copy rate
SAMPLE_SECONDS = 3.0
INTERNAL_DATABASES = ("admin", "local", "config")


# the oldest sources: the driver (pymongo 4.10, pinned for this) speaks to 3.6; the sync resumes its
# change stream with startAfter, which 4.2 brought
OLDEST_SOURCE = (3, 6)
OLDEST_INCREMENTAL_SOURCE = (4, 2)
TESTED_SOURCES = ("4.2", "4.4", "5.0", "6.0")  # real servers in the test suite (README: versions)
OLD_SOURCE_REMEDY = ("upgrade the source in place to MongoDB 3.6 or later (4.2 or later for "
                     "incremental migration), or make a one-off full copy with mongodump and "
                     "mongorestore while the applications are stopped")



class CheckResult(BaseModel):
    name: str
    status: Status
    detail: str
    remedy: str = ""


class PrecheckReport(BaseModel):
    items: list[CheckResult]
    # documents in each selected source collection when the precheck read it (time-series: buckets);
    # the last verification compares with it, so an emptied source is never an equal copy
    source_docs: dict[str, int] = {}

    @property
    def passed(self) -> bool:
        return all(i.status != "failed" for i in self.items)

    @property
    def failed(self) -> list[CheckResult]:
        return [i for i in self.items if i.status == "failed"]

    def item(self, name: str) -> CheckResult:
        """The first row of that name (tests and callers look items up by name)."""
        for i in self.items:
            if i.name == name:
                return i
        raise KeyError(f"no precheck item {name!r}: {[i.name for i in self.items]}")


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name=name, status="passed", detail=detail)


def warning(name: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(name=name, status="warning", detail=detail, remedy=remedy)


def failed(name: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(name=name, status="failed", detail=detail, remedy=remedy)


def _refusal(exc: OperationFailure) -> str:
    """The server's reason for refusing a command, without its "to execute command {...}" tail."""
    return (exc.details or {}).get("errmsg", str(exc)).split(" to execute command")[0]


def _source_read_problem(exc: PyMongoError) -> str:
    """Why the source could not be read: a missing privilege, or the connection's error."""
    if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
        return _refusal(exc)
    return describe_connection_error(exc, "source")[1]


def check_item(name: str) -> Callable:
    """A check that raises becomes a failed row naming what could not be read (the table stays whole)."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SpecError as exc:
                return failed(name, str(exc), "fix the spec")
            except PyMongoError as exc:
                if isinstance(exc, OperationFailure) and exc.code == UNAUTHORIZED:
                    return failed(name, f"could not check: {_refusal(exc)}",
                                  "grant the privileges the permissions items list, then rerun")
                return failed(name, "could not check: " + describe_connection_error(exc, "server")[1],
                              "fix the cause, then rerun the precheck")
            except Exception as exc:  # noqa: BLE001 - one item's bug must not hide the others
                log.exception("precheck item %s could not run", name)
                return failed(name, f"could not check: {type(exc).__name__}: {str(exc)[:200]}",
                              "rerun with --debug and report it")
        return run

    return wrap


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def _fmt_hours(hours: float) -> str:
    if hours >= 48:
        return f"{hours / 24:,.1f} days"
    if hours >= 1:
        return f"{hours:,.1f} h"
    return f"{hours * 60:,.1f} min" if hours * 60 >= 1 else f"{hours * 3600:,.1f} s"


def _first_host(conn: MongoConnection) -> str:
    netloc = urlsplit(conn.uri or "").netloc.rpartition("@")[2]
    return netloc.split(",")[0] or "HOST:PORT"


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# -- selection: the plan, or why it cannot be read ---------------------------------------------

class ObjectListing(BaseModel):
    plan: Optional[MigrationPlan] = None
    error: Optional[str] = None


def list_selected_objects(spec: MigrationSpec) -> ObjectListing:
    """The migration plan read from the source; a refusal (privileges) is reported, not raised."""
    try:
        return ObjectListing(plan=plan_namespaces(spec))
    except PyMongoError as exc:
        return ObjectListing(error=_source_read_problem(exc))


# -- 1/2: connectivity --------------------------------------------------------------------------

_CONNECT_REMEDY = {
    "uri": "fix the URI (mongodb://host:port/?options)",
    "dns": "fix the host name in the URI, or check DNS from where the flow runs",
    "refused": "start mongod or fix the port; check that it listens on an address you can reach",
    "timeout": "check host, port and firewalls, or raise timeout_s",
    "auth": "fix username/password/auth_source (the user must exist in that auth database)",
    "tls": "match the server's TLS mode: set tls, tls_ca_file, tls_certificate_key_file",
    "block": "save the MongoEndpoint block under that name, or use uri",
    "version": OLD_SOURCE_REMEDY,
    "other": "see the detail",
}


def check_endpoint(info: EndpointInfo) -> CheckResult:
    """Items 1 and 2: reachable within the timeout and authenticated; else the cause."""
    name = f"{info.role} connectivity"
    if not info.reachable:
        return failed(name, info.problem or "unreachable", _CONNECT_REMEDY.get(info.cause or "other", ""))
    return passed(name, f"{info.display}: MongoDB {info.version}, {info.topology}")


# -- source is not destination: one deployment under two names --------------------------------

def seed_addresses(conn: MongoConnection) -> set[tuple[str, int]]:
    """The (IP address, port) pairs the URI's hosts resolve to here; empty for mongodb+srv (its
    hosts come from DNS) or a host that does not resolve."""
    import socket

    if not conn.uri or conn.uri.startswith("mongodb+srv://"):
        return set()
    found: set[tuple[str, int]] = set()
    for host in urlsplit(conn.uri).netloc.rpartition("@")[2].split(","):
        if host.startswith("["):  # [::1]:27017
            name, _, rest = host[1:].partition("]")
            port = rest.lstrip(":")
        else:
            name, _, port = host.partition(":")
        try:
            for *_, addr in socket.getaddrinfo(name, int(port or 27017), proto=socket.IPPROTO_TCP):
                found.add((addr[0], addr[1]))
        except (OSError, ValueError):
            continue
    return found


def same_deployment(source: EndpointInfo, destination: EndpointInfo,
                    source_addresses: set, destination_addresses: set) -> tuple[Optional[bool], str]:
    """(True, why) when both endpoints reach one deployment, (False, why) when they are two, (None,
    why) when nothing the accounts may read tells. Ids read from the servers decide; then replica-set
    member names (the same whatever alias reached them); then the addresses the URIs resolve to."""
    if source.identity and destination.identity and source.identity_basis == destination.identity_basis:
        if source.identity == destination.identity:
            return True, f"both report {source.identity_basis} {source.identity}"
        return False, f"different {source.identity_basis}s"
    if source.replica_set and source.replica_set == destination.replica_set and (
            set(source.addresses) & set(destination.addresses)):
        shared = sorted(set(source.addresses) & set(destination.addresses))[0]
        return True, f"both are replica set {source.replica_set} with member {shared}"
    if source_addresses & destination_addresses:
        ip, port = sorted(source_addresses & destination_addresses)[0]
        return True, f"both URIs reach {ip}:{port}"
    if source.identity and destination.identity:
        return False, f"{source.identity_basis} of one, {destination.identity_basis} of the other"
    if source.topology != destination.topology:
        return False, f"a {source.topology} and a {destination.topology}"
    return None, "neither side's id could be read"


def classify_same_deployment(spec: MigrationSpec, plan: MigrationPlan, why: str,
                             occupied: list[str]) -> CheckResult:
    """One deployment as source and destination: a copy inside it under other names is fine; any
    plan that would write, drop or rename what it reads is refused."""
    name = DISTINCT_DEPLOYMENTS
    where = f"source ({spec.source.display()}) and destination ({spec.destination.display()})"
    mapper = NamespaceMapper(spec)
    if mapper.select_all:
        return failed(name, f"{where} are the same deployment ({why}), and objects is empty: every "
                      "database would be copied onto itself",
                      "point destination at the other deployment; to copy inside this one, list the "
                      "databases in objects and map them to new names in name_mapping")
    onto_selected = [f"{p.source_ns} -> {p.target_ns}" for p in plan.collections
                     if p.target_ns == p.source_ns or mapper.selected(p.target_db, p.target_name)
                     or p.target_db in mapper.whole_databases]
    if onto_selected:
        return failed(name, f"{where} are the same deployment ({why}); these targets are selected "
                      "source namespaces, which the migration would overwrite: " + _listing(onto_selected),
                      "point destination at the other deployment, or map the selection to names "
                      "outside it (name_mapping)")
    if occupied:
        return failed(name, f"{where} are the same deployment ({why}); these targets already hold "
                      "data on it, which the migration would drop or write over: " + _listing(occupied),
                      "map to names that do not exist yet, or drop those collections yourself first")
    return passed(name, f"{where} are the same deployment ({why}): copying inside it under new names; "
                  "the targets are outside the selection, so the sync never reads its own writes")


def _occupied_targets(spec: MigrationSpec, plan: MigrationPlan) -> dict[str, Optional[int]]:
    """{target namespace: documents (None for a view)} for each target that exists and holds data."""
    dest = open_client(spec.destination.resolve())
    occupied: dict[str, Optional[int]] = {}
    existing_by_db: dict[str, set[str]] = {}
    for p in plan.collections:
        if p.target_db not in existing_by_db:
            existing_by_db[p.target_db] = set(dest[p.target_db].list_collection_names())
        if p.target_name not in existing_by_db[p.target_db]:
            continue
        if p.kind == "view":
            occupied[p.target_ns] = None
            continue
        target = dest[p.target_db][p.target_name]
        if target.find_one({}, {"_id": 1}) is not None:
            occupied[p.target_ns] = target.estimated_document_count()
    return occupied


@check_item(DISTINCT_DEPLOYMENTS)
def check_distinct_deployments(spec: MigrationSpec, plan: MigrationPlan, source: EndpointInfo,
                               destination: EndpointInfo) -> CheckResult:
    """The destination must not be the source under another name (the same URI, `localhost` for
    `127.0.0.1`, a secondary's address): dropping "existing targets" there drops the source."""
    name = DISTINCT_DEPLOYMENTS
    same, why = same_deployment(source, destination, seed_addresses(spec.source.resolve()),
                                seed_addresses(spec.destination.resolve()))
    if same is False:
        return passed(name, f"two deployments ({why})")
    if same is None:
        return warning(name, f"could not tell whether source and destination are one deployment ({why})",
                       "grant both accounts clusterMonitor (replSetGetConfig, serverStatus) so that "
                       "the precheck can read which deployment each is")
    occupied = [] if resumable_run(spec) else list(_occupied_targets(spec, plan))
    return classify_same_deployment(spec, plan, why, occupied)


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
    """Size, document count and index specs of every selected collection (views have none)."""
    client = open_client(spec.source.resolve())
    facts = []
    try:
        for p in plan.data_plans:
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
                    continue
                raise
            for s in stats:
                st = s.get("storageStats", {})
                docs += int(st.get("count") or 0)
                data += int(st.get("size") or 0)
                index += int(st.get("totalIndexSize") or 0)
            indexes = [{k: v for k, v in ix.items() if k != "ns"} for ix in coll.list_indexes()]
            facts.append(CollectionFacts(plan=p, docs=docs, data_bytes=data, index_bytes=index,
                                         indexes_ejson=to_ejson(indexes)))
    except PyMongoError as exc:
        return SourceInventory(collections=facts, error=_source_read_problem(exc))
    return SourceInventory(collections=facts)


def _inventory_unreadable(name: str, inventory: SourceInventory) -> CheckResult:
    return failed(name, f"not checked: the source's collection sizes and indexes could not be read "
                  f"({inventory.error})", "grant the source account read on the selected databases")


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
    if problems:
        return failed(name, f"{target} cannot build: " + "; ".join(problems[:6])
                      + (f"; and {len(problems) - 6} more" if len(problems) > 6 else ""),
                      "drop or replace those indexes/options on the source (geoHaystack -> 2d), "
                      "or raise the destination's version/feature compatibility")
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
        return _inventory_unreadable(DESTINATION_COMPATIBILITY, inventory)
    return classify_destination(source, destination, inventory)


# -- 5/6: permissions, from connectionStatus {showPrivileges: true} -----------------------------

class Privileges(BaseModel):
    """What an account may do, as the server lists it (never found out by trying)."""

    access_control: bool = True
    users: list[str] = []
    grants: list[dict] = []  # [{resource: {...}, actions: [...]}]

    def allows(self, action: str, db: str, coll: Optional[str] = None) -> bool:
        """May the account do `action` on db (coll None: the database itself) or on db.coll?"""
        if not self.access_control:
            return True
        return any(action in g.get("actions", ()) and resource_covers(g.get("resource", {}), db, coll)
                   for g in self.grants)

    def allows_cluster(self, action: str) -> bool:
        if not self.access_control:
            return True
        return any(action in g.get("actions", ()) and (g["resource"].get("cluster")
                                                       or g["resource"].get("anyResource"))
                   for g in self.grants)


def resource_covers(resource: dict, db: str, coll: Optional[str]) -> bool:
    """MongoDB's resource matching: {db, collection: ""} covers the database and its non-system
    collections; {db: ""} any database but admin, local and config; {system_buckets} time-series data."""
    if resource.get("anyResource"):
        return True
    if resource.get("cluster"):
        return False
    if "system_buckets" in resource:
        if coll is None or not coll.startswith("system.buckets."):
            return False
        return (resource.get("db", "") in ("", db)
                and resource["system_buckets"] in ("", coll[len("system.buckets."):]))
    rdb, rcoll = resource.get("db"), resource.get("collection")
    if rdb is None or rcoll is None:
        return False
    any_normal_db = rdb == "" and db not in INTERNAL_DATABASES
    if coll is None:
        return rcoll == "" and (rdb == db or any_normal_db)
    if rcoll == coll and rdb in (db, ""):
        return True
    if rcoll == "" and not coll.startswith("system."):
        return rdb == db or any_normal_db
    return False


def read_privileges(conn: MongoConnection) -> Privileges:
    client = open_client(conn)
    info = client.admin.command("connectionStatus", showPrivileges=True)["authInfo"]
    users = [f"{u['user']}@{u['db']}" for u in info.get("authenticatedUsers", [])]
    if not users:
        # nobody is logged in: either the server checks nothing, or it refuses everything
        try:
            client.admin.command("listDatabases", nameOnly=True)
            return Privileges(access_control=False)
        except OperationFailure:
            return Privileges(access_control=True)
    return Privileges(users=users, grants=info.get("authenticatedUserPrivileges", []))


Need = tuple[str, str, Optional[str]]  # (action, db, collection or None for the database)


def _missing(privs: Privileges, needs: list[Need]) -> dict[str, list[str]]:
    """{namespace: [missing actions]} in the order first needed."""
    out: dict[str, list[str]] = {}
    for action, db, coll in needs:
        if not privs.allows(action, db, coll):
            ns = f"{db}.{coll}" if coll else db or "every database"
            if action not in out.setdefault(ns, []):
                out[ns].append(action)
    return out


# the incremental sync follows one change stream over the whole deployment (tasks/sync/), which
# needs changeStream and find on {db: "", collection: ""}; the database "" stands for that here
EVERY_DATABASE = ""


def source_needs(spec: MigrationSpec, plan: MigrationPlan) -> list[Need]:
    needs: list[Need] = []
    for db in sorted({p.source_db for p in plan.collections}):
        needs.append(("listCollections", db, None))
    if spec.incremental:
        needs += [("changeStream", EVERY_DATABASE, None), ("find", EVERY_DATABASE, None)]
    for p in plan.data_plans:
        needs += [("find", p.source_db, p.data_collection), ("listIndexes", p.source_db, p.source_name),
                  ("collStats", p.source_db, p.source_name)]
    if spec.incremental:
        needs += [("find", "local", "oplog.rs"), ("collStats", "local", "oplog.rs")]
    return needs


def _grant_hint(user: str, roles: list[str]) -> str:
    return f"db.getSiblingDB('admin').grantRolesToUser('{user}', [{', '.join(roles)}])"


def _buckets_role_hint(dbs: list[str], actions: list[str]) -> str:
    privileges = ", ".join(
        f"{{resource: {{db: '{db}', system_buckets: ''}}, actions: {actions!r}}}" for db in dbs)
    return f"a role with [{privileges}] (time-series data lives in system.buckets.*)"


@check_item(SOURCE_PERMISSIONS)
def check_source_permissions(spec: MigrationSpec, plan: MigrationPlan) -> CheckResult:
    """Item 5: find (and listCollections, listIndexes, collStats) on every selected collection;
    for incremental, changeStream and find over every database (the sync's deployment-wide change
    stream) and read on local.oplog.rs (the oplog window)."""
    name = SOURCE_PERMISSIONS
    privs = read_privileges(spec.source.resolve())
    if not privs.access_control:
        return passed(name, "the source does not enforce access control: every read is allowed")
    if not privs.users:
        return failed(name, "no user is logged in", "give a username and password for the source")
    missing = _missing(privs, source_needs(spec, plan))
    user = privs.users[0].split("@")[0]
    if missing:
        detail = "; ".join(f"{ns}: {', '.join(actions)}" for ns, actions in missing.items())
        read_dbs = sorted({ns.split(".")[0] for ns, a in missing.items()
                           if ".system.buckets." not in ns and not ns.startswith("local.")
                           and ns != "every database"})
        roles = [f"{{role: 'read', db: '{db}'}}" for db in read_dbs]
        if "every database" in missing:
            # the deployment-wide change stream: only readAnyDatabase (or a custom role) grants it
            roles.append("'readAnyDatabase'")
        if any(ns.startswith("local.") for ns in missing):
            roles.append("{role: 'read', db: 'local'}")
        remedy = _grant_hint(user, roles) if roles else ""
        bucket_dbs = sorted({ns.split(".")[0] for ns in missing if ".system.buckets." in ns})
        if bucket_dbs:
            remedy = (remedy + "; and " if remedy else "grant ") + _buckets_role_hint(bucket_dbs, ["find"])
        return failed(name, f"{', '.join(privs.users)} lacks {detail}", remedy)
    what = "find on every selected collection" + (
        ", a change stream over the deployment and read on local.oplog.rs" if spec.incremental else "")
    if not spec.objects and not privs.allows_cluster("listDatabases"):
        return warning(name, f"{', '.join(privs.users)} has {what}, but cannot list every database: "
                       "objects is empty (every database), so only the databases it may read are "
                       "migrated", "grant readAnyDatabase, or name the databases in objects")
    return passed(name, f"{', '.join(privs.users)} has {what} (read from connectionStatus)")


WRITE_ACTIONS = ("insert", "update", "remove", "find", "createCollection", "createIndex",
                 "dropCollection", "bypassDocumentValidation", "listCollections", "listIndexes")
META_ACTIONS = ("find", "insert", "update", "remove", "createCollection", "createIndex")


def destination_needs(plan: MigrationPlan) -> list[Need]:
    needs: list[Need] = []
    for db in sorted({p.target_db for p in plan.collections}):
        needs += [(a, db, None) for a in WRITE_ACTIONS]
    for p in plan.data_plans:
        if p.kind == "timeseries":
            needs += [(a, p.target_db, p.target_data_collection)
                      for a in ("insert", "bypassDocumentValidation", "find")]
    needs += [(a, META_DATABASE, None) for a in META_ACTIONS]
    return needs


@check_item(DESTINATION_PERMISSIONS)
def check_destination_permissions(spec: MigrationSpec, plan: MigrationPlan) -> CheckResult:
    """Item 6: insert, update, remove, createCollection, createIndex, dropCollection (and
    bypassDocumentValidation, which the copy uses) on every target database, and what the state
    database mongo_migrate_meta needs."""
    name = DESTINATION_PERMISSIONS
    privs = read_privileges(spec.destination.resolve())
    if not privs.access_control:
        return passed(name, "the destination does not enforce access control: every write is allowed")
    if not privs.users:
        return failed(name, "no user is logged in", "give a username and password for the destination")
    missing = _missing(privs, destination_needs(plan))
    if not missing:
        return passed(name, f"{', '.join(privs.users)} may write every target database and "
                      f"{META_DATABASE} (read from connectionStatus)")
    user = privs.users[0].split("@")[0]
    detail = "; ".join(f"{ns}: {', '.join(actions)}" for ns, actions in missing.items())
    roles: list[str] = []
    for ns, actions in missing.items():
        if ".system.buckets." in ns:
            continue
        db = ns.split(".")[0]
        if set(actions) - {"bypassDocumentValidation"}:
            roles.append(f"{{role: 'readWrite', db: '{db}'}}")
        if "bypassDocumentValidation" in actions and db != META_DATABASE:
            roles.append(f"{{role: 'dbAdmin', db: '{db}'}}")
    remedy = _grant_hint(user, roles) if roles else ""
    if any("bypassDocumentValidation" in a for a in missing.values()):
        remedy += " (dbAdmin for bypassDocumentValidation: documents are copied as they are, " \
                  "validators or not; a custom role with only that action will do)"
    bucket_dbs = sorted({ns.split(".")[0] for ns in missing if ".system.buckets." in ns})
    if bucket_dbs:
        remedy = (remedy + "; and " if remedy else "grant ") + _buckets_role_hint(
            bucket_dbs, ["find", "insert", "bypassDocumentValidation"])
    return failed(name, f"{', '.join(privs.users)} lacks {detail}", remedy)


# -- 7: incremental prerequisites ------------------------------------------------------------

def standalone_remedy(conn: MongoConnection) -> str:
    host = _first_host(conn)
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
        return failed(name, f"a change stream cannot be opened on the source: {_refusal(exc)}",
                      "see source permissions (readAnyDatabase, and read on local before 6.0); majority "
                      "read concern must be enabled")
    kind = "sharded cluster" if source.topology == "sharded" else f"replica set {source.replica_set}"
    how = "" if expanded else "; DDL from the oplog"
    return passed(name, f"{kind}: change streams can be opened{how}")


# -- 8: oplog window ---------------------------------------------------------------------------

class OplogWindow(BaseModel):
    first: datetime
    last: datetime
    size_bytes: int
    max_bytes: int

    @property
    def span_hours(self) -> float:
        return max((self.last - self.first).total_seconds(), 0.0) / 3600

    @property
    def full(self) -> bool:
        return self.max_bytes > 0 and self.size_bytes >= 0.9 * self.max_bytes

    @property
    def hours(self) -> float:
        """What the oplog holds at the current write rate: the span of its entries once it is full;
        until then, that span scaled up to the oplog's configured size."""
        if self.full or self.size_bytes <= 0:
            return self.span_hours
        # entry times have one-second resolution: a young oplog's entries may all share one second,
        # which is a short history, not an empty window
        return max(self.span_hours, 1 / 3600) * self.max_bytes / self.size_bytes

    @property
    def bytes_per_hour(self) -> float:
        return self.size_bytes / self.span_hours if self.span_hours > 0 else 0.0


def read_oplog_window(conn: MongoConnection) -> OplogWindow:
    """First and last entry times of the source's oplog, and its size (reads local.oplog.rs)."""
    oplog = open_client(conn).local["oplog.rs"]
    first = oplog.find_one({}, {"ts": 1}, sort=[("$natural", ASCENDING)])
    last = oplog.find_one({}, {"ts": 1}, sort=[("$natural", DESCENDING)])
    stats = next(oplog.aggregate([{"$collStats": {"storageStats": {}}}]))["storageStats"]
    if first is None or last is None:
        raise OperationFailure("the oplog is empty", code=0)
    return OplogWindow(first=first["ts"].as_datetime(), last=last["ts"].as_datetime(),
                       size_bytes=int(stats.get("size", 0)), max_bytes=int(stats.get("maxSize", 0)))


def measure_copy_rate(spec: MigrationSpec, inventory: SourceInventory,
                      sample_bytes: int = SAMPLE_BYTES, max_seconds: float = SAMPLE_SECONDS) -> float:
    """Bytes per second the source gives when read as the copy reads (raw batches), from a sample
    of the biggest selected collections. 0 when there is nothing to read."""
    client = open_client(spec.source.resolve())
    read = 0
    started = time.monotonic()
    for c in sorted(inventory.collections, key=lambda c: -c.data_bytes):
        if c.data_bytes == 0:
            continue
        coll = client[c.plan.source_db][c.plan.data_collection]
        for batch in coll.find_raw_batches({}, batch_size=spec.copy_options.batch_docs):
            read += len(batch)
            if read >= sample_bytes or time.monotonic() - started > max_seconds:
                break
        if read >= sample_bytes or time.monotonic() - started > max_seconds:
            break
    elapsed = time.monotonic() - started
    return read / elapsed if read and elapsed > 0 else 0.0


def classify_oplog_window(window: OplogWindow, data_bytes: int, rate_bytes_per_s: float) -> CheckResult:
    """Failed when the oplog holds less than the projected full copy, warning under 3x."""
    name = OPLOG_WINDOW
    copy_hours = data_bytes / rate_bytes_per_s / 3600 if rate_bytes_per_s > 0 else 0.0
    held = _fmt_hours(window.hours) + ("" if window.full else " (projected: the oplog is not full yet)")
    projection = (f"projected full copy {_fmt_hours(copy_hours)} ({_fmt_bytes(data_bytes)} at "
                  f"{_fmt_bytes(rate_bytes_per_s)}/s measured)")
    if copy_hours == 0:
        return passed(name, f"oplog holds {held}; nothing to copy")
    ratio = window.hours / copy_hours
    if ratio >= OPLOG_WARN_RATIO:
        return passed(name, f"oplog holds {held}; {projection}: {ratio:,.1f}x margin")
    # 3x the copy at the current write rate, rounded up to 100 MB (990 MB is the server's minimum)
    wanted_mb = max(990, math.ceil(round(OPLOG_WARN_RATIO * copy_hours * window.bytes_per_hour / 1e6) / 100) * 100)
    remedy = (f"grow the oplog to at least {wanted_mb:,} MB on every member: "
              f"db.adminCommand({{replSetResizeOplog: 1, size: {wanted_mb}}}) (or set "
              "minRetentionHours), or migrate fewer collections per run")
    detail = f"oplog holds {held}; {projection}: {ratio:.2f}x"
    if ratio < 1:
        return failed(name, detail + ": changes would roll off the oplog before the copy ends", remedy)
    return warning(name, detail + f", under the {OPLOG_WARN_RATIO:.0f}x safety margin", remedy)


@check_item(OPLOG_WINDOW)
def check_oplog_window(spec: MigrationSpec, source: EndpointInfo, inventory: SourceInventory) -> CheckResult:
    """Item 8: the source's oplog must outlast the full copy (incremental migration only)."""
    name = OPLOG_WINDOW
    if not spec.incremental:
        return passed(name, "not needed: full migration only")
    if source.topology == "standalone":
        return failed(name, "a standalone has no oplog", "see incremental prerequisites")
    if source.topology == "sharded":
        return warning(name, "not measured through mongos: every shard has its own oplog",
                       "on each shard's primary run rs.printReplicationInfo() and compare with the copy time")
    if inventory.error:
        return _inventory_unreadable(name, inventory)
    window = read_oplog_window(spec.source.resolve())
    rate = measure_copy_rate(spec, inventory)
    return classify_oplog_window(window, inventory.data_bytes + inventory.index_bytes, rate)


# -- 9: destination storage --------------------------------------------------------------------

class DestinationSpace(BaseModel):
    free_bytes: Optional[int] = None  # filesystem free space where the destination keeps its data
    used_bytes: Optional[int] = None  # what the destination's databases already take on disk


def read_destination_space(spec: MigrationSpec, plan: MigrationPlan) -> DestinationSpace:
    client = open_client(spec.destination.resolve())
    space = DestinationSpace()
    # a database that does not exist yet reports no filesystem figures: ask existing ones first
    for db in ["admin", META_DATABASE, *sorted({p.target_db for p in plan.collections})]:
        try:
            s = client[db].command("dbStats")
        except OperationFailure:
            continue
        total, used = s.get("fsTotalSize") or 0, s.get("fsUsedSize") or 0
        if total > 0:
            space.free_bytes = int(total - used)
            break
    try:
        space.used_bytes = int(client.admin.command("listDatabases", nameOnly=False).get("totalSize", 0))
    except OperationFailure:
        pass
    return space


def classify_storage(required: float, space: DestinationSpace, declared_gb: Optional[float]) -> CheckResult:
    """Failed when the free space, or the declared capacity less what is already stored, is under
    `required` (1.1x the source's data + index size)."""
    name = DESTINATION_STORAGE
    need = f"needs {_fmt_bytes(required)} (1.1 x source data + indexes)"
    shortfalls = []
    have = []
    if space.free_bytes is not None:
        have.append(f"{_fmt_bytes(space.free_bytes)} free on disk")
        if space.free_bytes < required:
            shortfalls.append(f"only {_fmt_bytes(space.free_bytes)} free on the destination's disk")
    if declared_gb is not None:
        available = declared_gb * 1e9 - (space.used_bytes or 0)
        have.append(f"{_fmt_bytes(available)} of the declared {declared_gb:g} GB left")
        if available < required:
            shortfalls.append(f"declared capacity {declared_gb:g} GB"
                              + (f" less {_fmt_bytes(space.used_bytes)} already stored" if space.used_bytes else "")
                              + f" leaves {_fmt_bytes(available)}")
    if shortfalls:
        return failed(name, f"{need}; " + "; ".join(shortfalls),
                      "grow the destination's storage (or destination.storage_gb if it was understated), "
                      "or migrate fewer collections")
    if not have:
        return warning(name, f"{need}; the destination's free space could not be read "
                       "(dbStats reports none for databases that do not exist yet)",
                       "declare destination.storage_gb, or grant the destination account dbStats on an "
                       "existing database (clusterMonitor)")
    return passed(name, f"{need}; " + ", ".join(have))


@check_item(DESTINATION_STORAGE)
def check_destination_storage(spec: MigrationSpec, plan: MigrationPlan, inventory: SourceInventory) -> CheckResult:
    """Item 9: free space and declared capacity at least 1.1x the source's data + index size."""
    if inventory.error:
        return _inventory_unreadable(DESTINATION_STORAGE, inventory)
    required = STORAGE_FACTOR * (inventory.data_bytes + inventory.index_bytes)
    return classify_storage(required, read_destination_space(spec, plan), spec.destination.storage_gb)


# -- 10: objects -------------------------------------------------------------------------------

@check_item(OBJECTS)
def check_objects(spec: MigrationSpec, plan: MigrationPlan) -> list[CheckResult]:
    """Item 10: every selected database/collection exists; admin and local never; config only when
    named (warning); system collections are skipped (listed)."""
    items = []
    internal = sorted({p.source_db for p in plan.collections if p.source_db in ("admin", "local")})
    if internal:
        items.append(failed(OBJECTS, f"{', '.join(internal)} cannot be migrated",
                            "remove admin and local from objects: users and roles are created on the "
                            "destination, the oplog is its own"))
    elif plan.missing:
        items.append(failed(OBJECTS, "not on the source: " + ", ".join(plan.missing),
                            "fix the names in objects, or remove them"))
    elif not plan.collections:
        items.append(failed(OBJECTS, "nothing to migrate: no collection is selected",
                            "select databases or collections that exist on the source"))
    else:
        client = open_client(spec.source.resolve())
        skipped = []
        for db in sorted({p.source_db for p in plan.collections}):
            skipped += [f"{db}.{n}" for n in sorted(client[db].list_collection_names(
                filter={"name": {"$regex": r"^system\."}}))
                if n != "system.views" and not n.startswith("system.buckets.")]
        n_views = len(plan.views)
        detail = f"{len(plan.collections) - n_views} collections, {n_views} views"
        if skipped:
            detail += "; system collections skipped: " + _listing(skipped)
        items.append(passed(OBJECTS, detail))
    if plan.config_selected:
        items.append(warning(CONFIG_DATABASE, "config is selected explicitly: it holds the "
                             "deployment's own metadata (sessions, sharding)",
                             "migrate config only if you know its collections are yours"))
    return items


# -- 11: name mapping --------------------------------------------------------------------------

def target_name_problems(plan: MigrationPlan) -> list[str]:
    """Target names the destination would refuse: characters, length, case clashes."""
    problems = []
    for db in sorted({p.target_db for p in plan.collections}):
        problem = database_name_problem(db)
        if problem:
            problems.append(problem)
    for p in plan.collections:
        problem = collection_name_problem(p.target_name)
        if problem and not p.target_name.startswith("system."):
            problems.append(f"{p.source_ns} -> {p.target_ns}: {problem}")
        # time-series data lives in system.buckets.<name>, which must fit too
        longest = p.target_db + "." + (p.target_data_collection if p.kind == "timeseries" else p.target_name)
        if len(longest.encode()) > MAX_NAMESPACE_BYTES:
            problems.append(f"{p.source_ns} -> {p.target_ns}: {longest!r} is longer than "
                            f"{MAX_NAMESPACE_BYTES} bytes")
    by_folded: dict[str, set[str]] = {}
    for db in {p.target_db for p in plan.collections}:
        by_folded.setdefault(db.lower(), set()).add(db)
    for names in by_folded.values():
        if len(names) > 1:
            problems.append(f"target databases {' and '.join(sorted(names))} differ only in case, "
                            "which MongoDB refuses")
    return problems


@check_item(NAME_MAPPING)
def check_name_mapping(spec: MigrationSpec, plan: MigrationPlan) -> CheckResult:
    """Item 11: one target per source, names the destination accepts (also against the databases it
    already has: names differing only in case are refused)."""
    name = NAME_MAPPING
    by_target: dict[str, list[str]] = {}
    for p in plan.collections:
        by_target.setdefault(p.target_ns, []).append(p.source_ns)
    clashes = {t: s for t, s in by_target.items() if len(s) > 1}
    if clashes:
        detail = "; ".join(f"{' and '.join(s)} -> {t}" for t, s in clashes.items())
        return failed(name, f"several sources map to one target: {detail}",
                      "change name_mapping so every target name is used once")
    problems = target_name_problems(plan)
    existing = open_client(spec.destination.resolve()).list_database_names()
    for db in sorted({p.target_db for p in plan.collections}):
        clash = [e for e in existing if e.lower() == db.lower() and e != db]
        if clash:
            problems.append(f"target database {db} differs only in case from the destination's "
                            f"existing {clash[0]}, which MongoDB refuses")
    if problems:
        return failed(name, "the destination would refuse: " + "; ".join(problems[:5]),
                      "map those to other names in name_mapping")
    renamed = sum(1 for p in plan.collections if p.source_ns != p.target_ns)
    return passed(name, f"{len(by_target)} target namespaces ({renamed} renamed), no conflict")


@check_item(TARGET_NAMESPACES)
def check_targets_empty(spec: MigrationSpec, plan: MigrationPlan) -> CheckResult:
    """Item 11, continued: a target namespace that holds data fails, unless the spec says to drop
    it (then each one is named with its document count, before anything is dropped) or it belongs
    to an unfinished run of this same spec (which resumes)."""
    name = TARGET_NAMESPACES
    occupied = _occupied_targets(spec, plan)
    if not occupied:
        return passed(name, "every target namespace is empty")
    if resumable_run(spec):
        return passed(name, f"resuming an unfinished run of this spec ({len(occupied)} targets hold its data)")
    if spec.copy_options.drop_existing_targets:
        dropped = [f"{ns} ({'view' if n is None else f'{n:,} document' + 's' * (n != 1)})"
                   for ns, n in occupied.items()]
        return warning(name, "drop_existing_targets: will drop " + "; ".join(dropped)
                       + f" (nothing else: not {META_DATABASE}, nor any collection outside the plan)",
                       "nothing to do, unless that data must be kept: then set drop_existing_targets: "
                       "false or map to other names")
    return failed(name, "already hold data: " + _listing(list(occupied)),
                  "drop them, map to other names, or set copy_options.drop_existing_targets: true")


# -- 12: data compatibility scan ---------------------------------------------------------------

def large_documents(spec: MigrationSpec, plan: CollectionPlan, limit: int = LARGE_DOCUMENT_BYTES,
                    source_version: str = "6.0") -> tuple[int, int]:
    """(how many documents are over `limit` bytes, the largest size) — computed by the server, or
    before 4.4 (no $bsonSize) from the length each raw document starts with."""
    coll = open_client(spec.source.resolve())[plan.source_db][plan.data_collection]
    if version_tuple(source_version) < (4, 4):
        over = []
        for batch in coll.find_raw_batches({}):
            starts = document_offsets(batch)
            sizes = [end - start for start, end in zip(starts, [*starts[1:], len(batch)])]
            over += [size for size in sizes if size > limit]
        return len(over), max(over, default=0)
    out = list(coll.aggregate([
        {"$project": {"_id": 0, "size": {"$bsonSize": "$$ROOT"}}},
        {"$match": {"size": {"$gt": limit}}},
        {"$group": {"_id": None, "n": {"$sum": 1}, "max": {"$max": "$size"}}},
    ]))
    return (out[0]["n"], out[0]["max"]) if out else (0, 0)


# field names are what is looked at: a string value that is not valid UTF-8 must not stop the scan
_LENIENT = CodecOptions(unicode_decode_error_handler="replace")


def _bad_field_name(key: str) -> bool:
    return key.startswith("$") and key not in ("$ref", "$id", "$db") or "." in key


def _walk_names(value, path: str, found: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if _bad_field_name(k):
                found.append(f"{path}{k}")
            _walk_names(v, f"{path}{k}.", found)
    elif isinstance(value, list):
        for v in value:
            _walk_names(v, path, found)


def rejected_field_names(spec: MigrationSpec, plan: CollectionPlan, destination_version: str) -> tuple[int, list[str]]:
    """Documents whose field names a destination older than 5.0 refuses ('$'-prefixed or dotted), and
    some of the names. 5.0+ accepts them, so nothing is read then."""
    if version_tuple(destination_version) >= (5, 0):
        return 0, []
    coll = open_client(spec.source.resolve())[plan.source_db][plan.data_collection]
    count, names = 0, []
    for raw in coll.find_raw_batches({}):
        for doc in bson.decode_all(raw, _LENIENT):
            found: list[str] = []
            _walk_names(doc, "", found)
            if found:
                count += 1
                names += [n for n in found if n not in names][: 5 - len(names)]
    return count, names


_NUMBERS = {"int", "long", "double", "decimal"}


def _canonical(type_name: str) -> str:
    # numbers compare (and sort) as one type in an index; so do strings and symbols
    return "number" if type_name in _NUMBERS else "string" if type_name == "symbol" else type_name


def id_types(spec: MigrationSpec, plan: CollectionPlan) -> dict[str, int]:
    """{BSON type: documents} when the collection's _id values are of several types, else {}.
    The _id index is sorted by type first, so its two ends tell whether there is more than one."""
    coll = open_client(spec.source.resolve())[plan.source_db][plan.data_collection]
    ends = []
    for direction in (ASCENDING, DESCENDING):
        doc = next(coll.aggregate([{"$sort": {"_id": direction}}, {"$limit": 1},
                                   {"$project": {"t": {"$type": "$_id"}}}]), None)
        if doc is None:
            return {}
        ends.append(_canonical(doc["t"]))
    if ends[0] == ends[1]:
        return {}
    return {d["_id"]: d["n"] for d in coll.aggregate(
        [{"$group": {"_id": {"$type": "$_id"}, "n": {"$sum": 1}}}, {"$sort": {"n": -1, "_id": 1}}])}


def expired_by_ttl(spec: MigrationSpec, plan: CollectionPlan, index: dict, now: datetime) -> int:
    """Documents a TTL index will delete as soon as the destination's TTL monitor sees them."""
    field = next(iter(index["key"]))
    cutoff = now - timedelta(seconds=int(index["expireAfterSeconds"]))
    query = {field: {"$lt": cutoff}}
    if index.get("partialFilterExpression"):
        query = {"$and": [query, index["partialFilterExpression"]]}
    coll = open_client(spec.source.resolve())[plan.source_db][plan.source_name]
    return coll.count_documents(query)


def views_without_source(spec: MigrationSpec, plan: MigrationPlan) -> list[str]:
    """Views reading a collection that is not on the source, or not selected (empty on arrival)."""
    client = open_client(spec.source.resolve())
    selected = {p.source_ns for p in plan.collections}
    found = []
    names_by_db: dict[str, set[str]] = {}
    for v in plan.views:
        view_on = v.options.get("viewOn")
        if v.source_db not in names_by_db:
            names_by_db[v.source_db] = set(client[v.source_db].list_collection_names())
        if view_on not in names_by_db[v.source_db]:
            found.append(f"{v.source_ns} reads {v.source_db}.{view_on}, which does not exist")
        elif f"{v.source_db}.{view_on}" not in selected:
            found.append(f"{v.source_ns} reads {v.source_db}.{view_on}, which is not selected")
    return found


@check_item(DATA_COMPATIBILITY)
def check_data_compatibility(spec: MigrationSpec, plan: MigrationPlan, destination: EndpointInfo,
                             inventory: SourceInventory,
                             source: Optional[EndpointInfo] = None) -> list[CheckResult]:
    """Item 12: a scan of the source data for what would break on arrival or during the sync."""
    if inventory.error:
        return [_inventory_unreadable(DATA_COMPATIBILITY, inventory)]
    rows: list[CheckResult] = []
    name = DATA_COMPATIBILITY
    collections = [c for c in inventory.collections if c.plan.kind == "collection"]

    def scan(c: CollectionFacts) -> tuple[tuple[int, int], tuple[int, list[str]], dict[str, int]]:
        # near-16 MB documents only matter to the sync (a change event carrying one): a full run
        # copies them as they are, and skips this read of every document
        large = large_documents(spec, c.plan, source_version=source.version if source else "6.0") \
            if spec.incremental else (0, 0)
        names = rejected_field_names(spec, c.plan, destination.version or "0")
        types = {} if "clusteredIndex" in c.plan.options else id_types(spec, c.plan)
        return large, names, types

    # the collections side by side: each scan is the server's work (or, for old versions, a read)
    with ThreadPoolExecutor(max_workers=spec.copy_options.parallel_workers) as pool:
        scans = list(pool.map(scan, collections))

    large = [f"{c.plan.source_ns}: {n} (largest {biggest / MiB:.1f} MiB)"
             for c, ((n, biggest), _, _) in zip(collections, scans) if n]
    if large:
        rows.append(warning(f"{name}: large documents",
                            "documents within 1 MB of the 16 MB limit: " + "; ".join(large),
                            "they copy as they are, but an update that grows one fails, and a change "
                            "event carrying one can exceed 16 MB and stop the incremental sync: "
                            "split them (e.g. GridFS) or keep them unchanged until cutover"))

    bad_names = [f"{c.plan.source_ns}: {n} documents ({', '.join(names)})"
                 for c, (_, (n, names), _) in zip(collections, scans) if n]
    if bad_names:
        rows.append(failed(f"{name}: field names",
                           f"MongoDB {destination.version} refuses '$'-prefixed and dotted field names: "
                           + "; ".join(bad_names),
                           "use a destination of MongoDB 5.0 or later, or rename those fields on the source"))

    mixed = [f"{c.plan.source_ns}: " + ", ".join(f"{t} {n:,}" for t, n in types.items())
             for c, (_, _, types) in zip(collections, scans) if types]
    if mixed:
        rows.append(warning(f"{name}: mixed _id types", "_id values of several BSON types: "
                            + "; ".join(mixed[:5]),
                            "nothing to do for the copy (ranges follow BSON order); check that "
                            "applications expecting one _id type are ready for the others"))

    series = [c.plan.source_ns for c in inventory.collections if c.plan.kind == "timeseries"]
    if series and spec.incremental:
        rows.append(warning(f"{name}: time-series",
                            "time-series collections are copied, but change streams do not cover "
                            "them: writes after the copy starts are not carried over: " + _listing(series),
                            "stop writes to those collections before the migration starts, or "
                            "migrate them in a separate full run at cutover"))

    orphans = views_without_source(spec, plan)
    if orphans:
        rows.append(warning(f"{name}: views", "views whose source is missing: " + "; ".join(orphans[:5]),
                            "select the collections they read, or drop the views: on the destination "
                            "they return nothing"))

    now = server_hello(open_client(spec.source.resolve()))["localTime"].replace(tzinfo=None)
    expiring = []
    for c in inventory.collections:
        if c.plan.kind != "collection":
            continue
        ttl_indexes = [ix for ix in c.indexes if "expireAfterSeconds" in ix and len(ix.get("key", {})) == 1]
        if "clusteredIndex" in c.plan.options and "expireAfterSeconds" in c.plan.options:
            # a clustered collection's own TTL works on its _id (a date)
            ttl_indexes.append({"name": "clustered _id", "key": {"_id": 1},
                                "expireAfterSeconds": c.plan.options["expireAfterSeconds"]})
        for ix in ttl_indexes:
            n = expired_by_ttl(spec, c.plan, ix, now)
            if n:
                expiring.append(f"{c.plan.source_ns}: {n:,} documents past the TTL of index "
                                f"{ix['name']} ({int(ix['expireAfterSeconds'])} s)")
    if expiring:
        rows.append(warning(f"{name}: TTL indexes",
                            "would be deleted by the destination soon after they arrive: " + "; ".join(expiring),
                            "expected if the source's TTL monitor is behind; the verification will then "
                            "count fewer documents on the destination. Delete them on the source first "
                            "for equal counts"))

    if rows:
        return rows
    return [passed(name, f"{len(inventory.collections)} collections scanned: "
                   + ("no document near 16 MB, " if spec.incremental else "")
                   + "no field name the destination refuses, one _id type each, no view without its "
                   "source, nothing past a TTL" + (f"; {len(series)} time-series" if series else ""))]


# -- notifications -----------------------------------------------------------------------------

@check_item(NOTIFICATIONS)
def check_notifications(spec: MigrationSpec) -> CheckResult:
    """The spec's Slack notifier can be loaded (no message is sent)."""
    slack = spec.notifications.slack
    notifier = slack.resolve()
    how = "incoming webhook" if notifier.webhook_url is not None else f"bot token, channel {notifier.channel}"
    where = f"block {slack.block}" if slack.block else "webhook_url in the spec"
    return passed(NOTIFICATIONS, f"{where} ({how})")


# -- the whole precheck ------------------------------------------------------------------------

def _rows(value) -> list[CheckResult]:
    return value if isinstance(value, list) else [value]


check_source_version_task = step(check_source_version, retries=0)
read_source_inventory_task = step(read_source_inventory, retries=0)
check_destination_compatibility_task = step(check_destination_compatibility, retries=0)
check_source_permissions_task = step(check_source_permissions, retries=0)
check_destination_permissions_task = step(check_destination_permissions, retries=0)
check_incremental_prerequisites_task = step(check_incremental_prerequisites, retries=0)
check_oplog_window_task = step(check_oplog_window, retries=0)
check_destination_storage_task = step(check_destination_storage, retries=0)
check_objects_task = step(check_objects, retries=0)
check_name_mapping_task = step(check_name_mapping, retries=0)
check_targets_empty_task = step(check_targets_empty, retries=0)
check_data_compatibility_task = step(check_data_compatibility, retries=0)
check_notifications_task = step(check_notifications, retries=0)
check_distinct_deployments_task = step(check_distinct_deployments, retries=0)
list_selected_objects_task = step(list_selected_objects, retries=0)


def run_prechecks(spec: MigrationSpec, source: EndpointInfo, destination: EndpointInfo,
                  plan: Optional[MigrationPlan], plan_error: Optional[str] = None) -> PrecheckReport:
    """Run every check item as a task (side by side, in a flow) and gather the table in item order.

    Items that need an endpoint that is unreachable, or the list of objects that could not be read,
    are not run; one failed row says so.
    """
    both = source.reachable and destination.reachable
    futures: dict[str, object] = {}
    if source.reachable:
        futures["3"] = check_source_version_task.submit(spec, source)
        futures["7"] = check_incremental_prerequisites_task.submit(spec, source, plan)
    if source.reachable and plan is not None:
        inventory_f = read_source_inventory_task.submit(spec, plan)
        futures["5"] = check_source_permissions_task.submit(spec, plan)
        futures["10"] = check_objects_task.submit(spec, plan)
    if both and plan is not None:
        futures["2b"] = check_distinct_deployments_task.submit(spec, plan, source, destination)
        futures["6"] = check_destination_permissions_task.submit(spec, plan)
        futures["11a"] = check_name_mapping_task.submit(spec, plan)
        futures["11b"] = check_targets_empty_task.submit(spec, plan)
    if spec.notifications.slack is not None:
        futures["n"] = check_notifications_task.submit(spec)
    source_docs: dict[str, int] = {}
    if source.reachable and plan is not None:
        inventory = inventory_f.result()
        source_docs = {c.plan.source_ns: c.docs for c in inventory.collections}
        futures["8"] = check_oplog_window_task.submit(spec, source, inventory)
        if destination.reachable:
            futures["4"] = check_destination_compatibility_task.submit(source, destination, inventory)
            futures["9"] = check_destination_storage_task.submit(spec, plan, inventory)
            futures["12"] = check_data_compatibility_task.submit(spec, plan, destination, inventory, source)

    items = [check_endpoint(source), check_endpoint(destination)]
    for key in ("2b", "3", "4", "5", "6", "7", "8", "9", "10", "11a", "11b", "12", "n"):
        if key in futures:
            items += _rows(futures[key].result())
    if plan is None and source.reachable:
        items.append(failed(OBJECTS, f"the source's databases and collections could not be listed: "
                            f"{plan_error or 'unknown error'}",
                            "grant the source account read on the selected databases"))
    if source.cause == "version" and source.topology == "standalone" and spec.incremental:
        # too old for the driver to read more, yet the standalone advice holds after the upgrade too
        items.append(failed(INCREMENTAL, "the source is a standalone mongod: incremental migration "
                            "reads its change stream, which only replica sets have",
                            standalone_remedy(spec.source.resolve())))
    if not both:
        down = " and ".join(i.role for i in (source, destination) if not i.reachable)
        items.append(failed("other items", f"not checked: the {down} cannot be reached",
                            "fix connectivity, then run the precheck again"))
    return PrecheckReport(items=items, source_docs=source_docs)
