"""Items 1 and 2, connectivity, 2b: the source is not the destination under another name, and the
Dask cluster the copy runs on (copy_options.runner), reached from here and reaching both deployments."""
from __future__ import annotations

import ipaddress
from typing import Optional
from urllib.parse import urlsplit

from mongo_migrate.blocks.mongo import MongoConnection
from mongo_migrate.blocks.spec import DASK_INSTALL, DaskAddressRunner, MigrationSpec
from mongo_migrate.tasks.connect import EndpointInfo, check_connectivity
from mongo_migrate.tasks.namespaces import MigrationPlan, NamespaceMapper
from mongo_migrate.tasks.precheck.objects import occupied_targets
from mongo_migrate.tasks.precheck.report import CheckResult, check_item, failed, listing, passed, warning
from mongo_migrate.tasks.precheck.versions import OLD_SOURCE_REMEDY
from mongo_migrate.tasks.state import will_resume

SOURCE_CONNECTIVITY = "source connectivity"
DESTINATION_CONNECTIVITY = "destination connectivity"
DISTINCT_DEPLOYMENTS = "source is not destination"
DASK_CLUSTER = "Dask cluster"
# how long the precheck (and a `verify` run) waits for a Dask scheduler to answer
DASK_CONNECT_TIMEOUT_S = 10


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
    occupied = [] if will_resume(spec) else list(occupied_targets(spec, plan))
    return classify_same_deployment(spec, plan, why, occupied)


# -- the Dask cluster of copy_options.runner ----------------------------------------------------

def _loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dask_runner_problem(spec: MigrationSpec) -> tuple[str, str] | None:
    """(detail, remedy) when the spec's Dask runner cannot start from here at all; None when it can
    (or the runner is the thread pool). Asked by this precheck item, and by the flows before they start
    a runner (flows/runners.py), since `verify` runs no precheck."""
    from prefect.settings import get_current_settings

    runner = spec.copy_options.runner
    if runner == "threads":
        return None
    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        return ("copy_options.runner asks for Dask, and prefect-dask is not installed where the flow runs",
                f"{DASK_INSTALL}, or set copy_options.runner: threads")
    api = get_current_settings().api.url
    if not api:
        # without an API URL each process runs a Prefect server of its own (ephemeral mode): the
        # workers' task runs would be recorded in theirs, under a flow run it does not know
        return ("copy_options.runner asks for Dask, whose workers report their task runs to the Prefect "
                "API, and no Prefect server is configured (PREFECT_API_URL)",
                "set PREFECT_API_URL to a Prefect server (prefect server start, make serve), or start the "
                "migration with the mongo-migrate command, which starts one for the run")
    if isinstance(runner, DaskAddressRunner):
        scheduler_host = urlsplit(runner.dask_address).hostname
        if _loopback(urlsplit(api).hostname) and not _loopback(scheduler_host):
            return (f"the Prefect API {api} is a loopback address, which the workers of the Dask cluster at "
                    f"{runner.dask_address} cannot reach (mongo-migrate's temporary server is one)",
                    "run a Prefect server the workers can reach and set PREFECT_API_URL to its address "
                    "as they see it (http://prefect-host:4200/api)")
    return None


def probe_from_worker(spec: MigrationSpec) -> list[EndpointInfo]:
    """Run on each Dask worker: importing this function there is the test that the project is installed,
    and each endpoint is reached as the copy will reach it."""
    return [check_connectivity(spec.source, "source"), check_connectivity(spec.destination, "destination")]


@check_item(DASK_CLUSTER)
def check_dask_cluster(spec: MigrationSpec) -> CheckResult:
    """copy_options.runner on Dask: prefect-dask installed, a Prefect API the workers can report to and,
    for an existing cluster, its scheduler reached, workers present, each able to run mongo-migrate's
    code and to reach both deployments."""
    name = DASK_CLUSTER
    problem = dask_runner_problem(spec)
    if problem:
        return failed(name, *problem)
    runner = spec.copy_options.runner
    if not isinstance(runner, DaskAddressRunner):
        return passed(name, f"a Dask LocalCluster of {runner.dask_local_workers} worker processes is started "
                      "for the copy and the verification")
    from distributed import Client

    address = runner.dask_address
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError):
        return failed(name, f"the Dask scheduler at {address} cannot be reached (no answer within "
                      f"{DASK_CONNECT_TIMEOUT_S} s)", unreachable_scheduler_remedy(address))
    with client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        if not workers:
            return failed(name, f"the Dask scheduler at {address} has no workers",
                          f"start workers on machines that reach both deployments: dask worker {address} "
                          f"(with {DASK_INSTALL})")
        try:
            seen = client.run(probe_from_worker, spec)
        except Exception as exc:  # noqa: BLE001 - e.g. ModuleNotFoundError: the worker lacks the project
            return failed(name, f"the workers of the Dask cluster at {address} cannot run mongo-migrate "
                          f"({type(exc).__name__}: {str(exc)[:200]})",
                          f"install the project, the same version as here, on every worker: {DASK_INSTALL}")
    problems = [f"worker {w}: {i.problem}" for w, infos in seen.items() for i in infos if not i.reachable]
    if problems:
        return failed(name, f"not every worker of the Dask cluster at {address} reaches both deployments: "
                      + listing(problems, 3),
                      "let every worker reach both deployments (network, DNS, TLS files on the workers), "
                      "or remove the workers that cannot")
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return passed(name, f"the Dask cluster at {address}: {len(workers)} workers, {threads} threads, each "
                  "reaching both deployments")


def unreachable_scheduler_remedy(address: str) -> str:
    return (f"start the Dask scheduler and its workers (dask scheduler; dask worker {address}), or fix "
            "copy_options.runner.dask_address; check that this machine reaches that host and port")
