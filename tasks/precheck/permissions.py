"""Items 5 and 6: the source and destination accounts' privileges, from connectionStatus
{showPrivileges: true}, against what the plan needs."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel
from pymongo.errors import OperationFailure

from mongo_migrate.blocks.mongo import MongoConnection, open_client
from mongo_migrate.blocks.spec import META_DATABASE, MigrationSpec
from mongo_migrate.tasks.namespaces import MigrationPlan
from mongo_migrate.tasks.precheck.objects import INTERNAL_DATABASES
from mongo_migrate.tasks.precheck.report import CheckResult, check_item, failed, passed, warning

SOURCE_PERMISSIONS = "source permissions"
DESTINATION_PERMISSIONS = "destination permissions"


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
