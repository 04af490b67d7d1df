"""Items 1 and 2, connectivity, and 2b: the source is not the destination under another name."""
from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit

from mongo_migrate.blocks.mongo import MongoConnection
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.connect import EndpointInfo
from mongo_migrate.tasks.namespaces import MigrationPlan, NamespaceMapper
from mongo_migrate.tasks.precheck.objects import occupied_targets
from mongo_migrate.tasks.precheck.report import CheckResult, check_item, failed, listing, passed, warning
from mongo_migrate.tasks.precheck.versions import OLD_SOURCE_REMEDY
from mongo_migrate.tasks.state import resumable_run

SOURCE_CONNECTIVITY = "source connectivity"
DESTINATION_CONNECTIVITY = "destination connectivity"
DISTINCT_DEPLOYMENTS = "source is not destination"


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
                      "source namespaces, which the migration would overwrite: " + listing(onto_selected),
                      "point destination at the other deployment, or map the selection to names "
                      "outside it (name_mapping)")
    if occupied:
        return failed(name, f"{where} are the same deployment ({why}); these targets already hold "
                      "data on it, which the migration would drop or write over: " + listing(occupied),
                      "map to names that do not exist yet, or drop those collections yourself first")
    return passed(name, f"{where} are the same deployment ({why}): copying inside it under new names; "
                  "the targets are outside the selection, so the sync never reads its own writes")


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
    occupied = [] if resumable_run(spec) else list(occupied_targets(spec, plan))
    return classify_same_deployment(spec, plan, why, occupied)
