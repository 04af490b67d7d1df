"""Step 1: reach both endpoints and learn what they are."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel
from pymongo.errors import (BulkWriteError, ConfigurationError, InvalidURI, OperationFailure, PyMongoError,
                            ServerSelectionTimeoutError, WriteConcernError)

from mongo_migrate.blocks.mongo import MongoConnection, open_client, server_hello
from mongo_migrate.blocks.spec import EndpointSpec, SpecError
from mongo_migrate.tasks.common import WRITE_CONCERN_FAILED, step

Cause = Literal["uri", "dns", "refused", "timeout", "auth", "tls", "block", "version", "other"]


class WriteMajority(BaseModel):
    """A replica set's members that can confirm a write concern majority write, against how many must."""

    up: int  # voting data-bearing members up: the primary and the voting secondaries that answer
    needed: int  # writeMajorityCount: how many of them a majority write waits for
    down: list[str] = []  # the voting data-bearing members not up


class EndpointInfo(BaseModel):
    role: str
    display: str
    reachable: bool
    cause: Cause | None = None
    problem: str | None = None
    version: str | None = None
    topology: Literal["standalone", "replica_set", "sharded"] | None = None
    replica_set: str | None = None
    storage_engine: str | None = None
    fcv: str | None = None
    # which deployment this is, whatever host name reached it: see deployment_identity
    identity: str | None = None
    identity_basis: str | None = None
    addresses: list[str] = []  # the members' host:port as the server names them (hello)
    write_majority: WriteMajority | None = None  # a destination replica set's, when it can be read


def describe_connection_error(exc: Exception, where: str) -> tuple[Cause, str]:
    """A one-line cause for a failure to reach or log in to `where` (never includes secrets)."""
    text = str(exc)
    low = text.lower()
    if isinstance(exc, SpecError):
        return "block", str(exc)
    if isinstance(exc, (InvalidURI, ConfigurationError, ValueError)):
        # pymongo raises a plain ValueError for some URI mistakes ("Port must be an integer ...")
        if "wire version" in low:  # a server older (or newer) than this driver speaks to
            return "version", f"{where}: {text.split(', full error')[0]}"
        if "dns" in low or "srv" in low and "resolve" in low:
            return "dns", f"{where}: the SRV/TXT host name does not resolve; check the host in the URI"
        # the driver's wording, without its closing period (which some releases add)
        said = text.split(", full error")[0].split(",")[0].rstrip(".")
        return "uri", f"{where}: malformed connection settings: {said}"
    if isinstance(exc, OperationFailure) and exc.code == 18:
        return "auth", f"{where}: authentication failed; check username, password and auth_source"
    if isinstance(exc, ServerSelectionTimeoutError):
        if any(s in low for s in ("name or service not known", "nodename nor servname",
                                  "temporary failure in name resolution", "no address associated")):
            return "dns", f"{where}: host name does not resolve; check the host in the URI"
        if "connection refused" in low:
            return "refused", f"{where}: connection refused; is mongod running on that host and port?"
        if any(s in low for s in ("ssl", "tls", "certificate")):
            return "tls", f"{where}: TLS handshake failed; check tls, tls_ca_file and the server's TLS mode"
        if "connection closed" in low or "connection reset" in low:
            return "tls", f"{where}: the server closed the connection; it may require TLS (set tls: true)"
        return "timeout", f"{where}: no answer within the connect timeout; check host, port and firewall"
    if write_concern_timed_out(exc):
        return "other", (f"{where}: a majority of the destination's members did not confirm a write in time (every "
                         "write is made with write concern majority): check that its secondaries are up and keeping "
                         "up, then run the spec again")
    if isinstance(exc, OperationFailure):
        return "other", f"{where}: {exc.details.get('errmsg', text) if exc.details else text}"
    return "other", f"{where}: {type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def write_concern_timed_out(exc: BaseException) -> bool:
    """A write the destination made but a majority did not confirm within the write concern's timeout."""
    if isinstance(exc, WriteConcernError):
        return exc.code == WRITE_CONCERN_FAILED
    if isinstance(exc, BulkWriteError):
        return any(e.get("code") == WRITE_CONCERN_FAILED for e in exc.details.get("writeConcernErrors", []))
    return False


def check_connectivity(endpoint: EndpointSpec, role: str) -> EndpointInfo:
    """Connect (bounded by the endpoint's timeout), authenticate, and read version and topology."""
    where = f"{role} ({endpoint.display()})"
    try:
        conn = endpoint.resolve()
        where = f"{role} ({conn.display()})"
        return describe_endpoint(conn, role)
    except (PyMongoError, SpecError, ValueError) as exc:
        cause, problem = describe_connection_error(exc, where)
        info = EndpointInfo(role=role, display=where, reachable=False, cause=cause, problem=problem)
        if cause == "version":
            # the driver will not talk to it, but its handshake said what it is
            info.topology, info.replica_set = topology_from_handshake(open_client(conn))
        return info


def topology_from_handshake(client) -> tuple[str | None, str | None]:
    """(topology, replica set) from the servers' handshake replies the client kept."""
    for server in client.topology_description.server_descriptions().values():
        kind = server.server_type_name
        if kind == "Standalone":
            return "standalone", None
        if kind.startswith("RS"):
            return "replica_set", server.replica_set_name
        if kind == "Mongos":
            return "sharded", None
    return None, None


def deployment_identity(client, hello: dict, topology: str) -> tuple[str | None, str | None]:
    """(an id unique to the deployment, what it was read from), or (None, None). Two ids are the
    same deployment only when both parts are equal.

    Names and URIs cannot tell two deployments apart (`localhost` and `127.0.0.1`, a secondary's
    address, two replica sets both called rs0), so the id comes from the servers themselves: a
    replica set's `replicaSetId` (made at rs.initiate, the same on every member), a sharded
    cluster's `clusterId`, a standalone's `topologyVersion.processId` (4.4+, made at start-up) or
    its host, pid and start time. With access control on, the signing key of `$clusterTime` is the
    deployment's own too. Each read needs a privilege some accounts lack; the first that works wins.
    """
    attempts: list[tuple[str, object]] = []
    if topology == "replica_set":
        attempts += [
            ("replicaSetId", lambda: client.admin.command("replSetGetConfig")["config"]["settings"]["replicaSetId"]),
            ("replicaSetId", lambda: client.local["system.replset"].find_one()["settings"]["replicaSetId"]),
        ]
    elif topology == "sharded":
        attempts.append(("clusterId", lambda: client.config["version"].find_one()["clusterId"]))
    else:
        attempts.append(("processId", lambda: hello["topologyVersion"]["processId"]))

        def process() -> str:
            status = client.admin.command("serverStatus", repl=0, metrics=0, locks=0)
            started = status["localTime"].timestamp() - status["uptime"]
            return f"{status['host']}/{status['pid']}/{round(started)}"

        attempts.append(("serverStatus host, pid and start time", process))

    def signing_key() -> object:
        key = (hello.get("$clusterTime") or {}).get("signature", {}).get("keyId")
        return key or None  # 0: access control is off, nothing is signed

    attempts.append(("clusterTime signing key", signing_key))
    for basis, read in attempts:
        try:
            value = read()
        except (PyMongoError, KeyError, TypeError):
            continue
        if value:
            return str(value), basis
    return None, None


def describe_endpoint(conn: MongoConnection, role: str) -> EndpointInfo:
    client = open_client(conn)
    hello = server_hello(client)  # authenticates too, with the client's credentials
    if hello.get("msg") == "isdbgrid":
        topology = "sharded"
    elif hello.get("setName"):
        topology = "replica_set"
    else:
        topology = "standalone"
    build = client.admin.command("buildInfo")
    info = EndpointInfo(
        role=role, display=f"{role} ({conn.display()})", reachable=True, version=build["version"],
        topology=topology, replica_set=hello.get("setName"),
        addresses=sorted({*hello.get("hosts", []), *hello.get("passives", []), hello.get("me", "")} - {""}),
    )
    info.identity, info.identity_basis = deployment_identity(client, hello, topology)
    try:
        status = client.admin.command("serverStatus", repl=0, metrics=0, locks=0)
        info.storage_engine = status.get("storageEngine", {}).get("name")
    except OperationFailure:
        pass  # needs clusterMonitor; the precheck reports missing privileges separately
    try:
        fcv = client.admin.command("getParameter", 1, featureCompatibilityVersion=1)
        info.fcv = fcv["featureCompatibilityVersion"]["version"]
    except (OperationFailure, KeyError):
        pass
    if topology == "replica_set" and role == "destination":
        info.write_majority = read_write_majority(client)
    return info


PRIMARY, SECONDARY = 1, 2  # replSetGetStatus member states


def read_write_majority(client) -> WriteMajority | None:
    """How many voting data-bearing members of a replica set are up, against how many a write concern
    majority write waits for (`replSetGetStatus` and `replSetGetConfig`, in clusterMonitor; None without
    them, or before 4.2.1, which reports no writeMajorityCount). Every write mongo-migrate makes on the
    destination waits for them (blocks/mongo.py WRITE_CONCERN): with too few up, as in a
    primary-secondary-arbiter set whose secondary is down, the primary accepts writes that no majority
    ever confirms. A member without a vote (votes 0, or newlyAdded until the primary has seen it a
    secondary) confirms nothing toward a majority, up or not."""
    try:
        status = client.admin.command("replSetGetStatus")
        config = client.admin.command("replSetGetConfig")["config"]
    except OperationFailure:
        return None
    needed = status.get("writeMajorityCount")
    if not isinstance(needed, int):
        return None
    voting = {m["_id"] for m in config.get("members", [])
              if m.get("votes", 1) > 0 and not m.get("arbiterOnly") and not m.get("newlyAdded")}
    members = [m for m in status.get("members", []) if m.get("_id") in voting]
    up = [m for m in members if m.get("health") == 1 and m.get("state") in (PRIMARY, SECONDARY)]
    down = [m.get("name", "?") for m in members if m not in up]
    return WriteMajority(up=len(up), needed=needed, down=down)


check_connectivity_task = step(check_connectivity, retries=1, retry_delay_seconds=[2])
