"""Step 2: the precheck. Every item reads, none writes; the migration starts only if none failed."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from blocks.mongo import open_client
from blocks.spec import META_DATABASE, MigrationSpec
from tasks.common import step
from tasks.connect import EndpointInfo
from tasks.namespaces import MigrationPlan

Status = Literal["passed", "warning", "failed"]
RUNS = "runs"


class CheckResult(BaseModel):
    name: str
    status: Status
    detail: str
    remedy: str = ""


class PrecheckReport(BaseModel):
    items: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(i.status != "failed" for i in self.items)

    @property
    def failed(self) -> list[CheckResult]:
        return [i for i in self.items if i.status == "failed"]


def passed(name: str, detail: str) -> CheckResult:
    return CheckResult(name=name, status="passed", detail=detail)


def warning(name: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(name=name, status="warning", detail=detail, remedy=remedy)


def failed(name: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(name=name, status="failed", detail=detail, remedy=remedy)


def check_endpoint(info: EndpointInfo) -> CheckResult:
    name = f"{info.role} connectivity"
    if not info.reachable:
        return failed(name, info.problem or "unreachable", _CONNECT_REMEDY.get(info.cause or "other", ""))
    return passed(name, f"{info.display}: MongoDB {info.version}, {info.topology}")


_CONNECT_REMEDY = {
    "uri": "fix the URI (mongodb://host:port/?options)",
    "dns": "fix the host name in the URI, or check DNS from where the flow runs",
    "refused": "start mongod or fix the port; check that it listens on an address you can reach",
    "timeout": "check host, port and firewalls, or raise timeout_s",
    "auth": "fix username/password/auth_source (the user must exist in that auth database)",
    "tls": "match the server's TLS mode: set tls, tls_ca_file, tls_certificate_key_file",
    "block": "save the MongoEndpoint block under that name, or use uri",
    "other": "see the detail",
}


def check_versions(source: EndpointInfo, destination: EndpointInfo) -> CheckResult:
    name = "versions"
    if not (source.reachable and destination.reachable):
        return failed(name, "not checked: an endpoint is unreachable", "fix connectivity first")
    if source.version_tuple < (4, 2):
        return failed(name, f"source MongoDB {source.version} is older than 4.2",
                      "upgrade the source to 4.2 or later")
    if destination.version_tuple[:2] < source.version_tuple[:2]:
        return warning(name, f"destination {destination.version} is older than source {source.version}",
                       "use a destination at least as new as the source, or check feature use")
    return passed(name, f"source {source.version} -> destination {destination.version}")


def check_objects(plan: MigrationPlan) -> list[CheckResult]:
    items = []
    if plan.missing:
        items.append(failed("selected objects", "not on the source: " + ", ".join(plan.missing),
                            "fix the names in objects, or remove them"))
    elif not plan.collections:
        items.append(failed("selected objects", "nothing to migrate: no collection is selected",
                            "select databases or collections that exist on the source"))
    else:
        n_views = len(plan.views)
        items.append(passed("selected objects",
                            f"{len(plan.collections) - n_views} collections, {n_views} views"))
    if plan.config_selected:
        items.append(warning("config database", "config is selected explicitly",
                             "migrate config only if you know its collections are yours"))
    return items


def check_name_conflicts(plan: MigrationPlan) -> CheckResult:
    by_target: dict[str, list[str]] = {}
    for p in plan.collections:
        by_target.setdefault(p.target_ns, []).append(p.source_ns)
    clashes = {t: s for t, s in by_target.items() if len(s) > 1}
    if clashes:
        detail = "; ".join(f"{' and '.join(s)} -> {t}" for t, s in clashes.items())
        return failed("name mapping", f"several sources map to one target: {detail}",
                      "change name_mapping so every target name is used once")
    too_long = [p.target_ns for p in plan.collections if len(p.target_ns.encode()) > 255]
    if too_long:
        return failed("name mapping", "target namespaces longer than 255 bytes: " + ", ".join(too_long),
                      "map them to shorter names")
    return passed("name mapping", f"{len(by_target)} target namespaces, no conflict")


def resumable_run(spec: MigrationSpec) -> dict | None:
    """The state of an unfinished earlier run of this same spec, if the destination has one."""
    dest = open_client(spec.destination.resolve())
    return dest[META_DATABASE][RUNS].find_one({"_id": spec.digest(), "finished": {"$ne": True}})


def check_targets_empty(spec: MigrationSpec, plan: MigrationPlan) -> CheckResult:
    name = "target namespaces"
    dest = open_client(spec.destination.resolve())
    occupied = []
    for p in plan.collections:
        existing = dest[p.target_db].list_collection_names(filter={"name": p.target_name})
        if existing and (p.kind == "view" or dest[p.target_db][p.target_name].find_one({}, {"_id": 1})):
            occupied.append(p.target_ns)
    if not occupied:
        return passed(name, "every target namespace is empty")
    if resumable_run(spec):
        return passed(name, f"resuming an unfinished run of this spec ({len(occupied)} targets hold its data)")
    if spec.copy_options.drop_existing_targets:
        return warning(name, "will be dropped before the copy: " + ", ".join(occupied[:10]),
                       "nothing to do, unless that data must be kept")
    return failed(name, "already hold data: " + ", ".join(occupied[:10]),
                  "drop them, map to other names, or set copy_options.drop_existing_targets: true")


def run_prechecks(spec: MigrationSpec, source: EndpointInfo, destination: EndpointInfo,
                  plan: MigrationPlan | None) -> PrecheckReport:
    items = [check_endpoint(source), check_endpoint(destination)]
    items.append(check_versions(source, destination))
    if plan is not None:
        items += check_objects(plan)
        items.append(check_name_conflicts(plan))
        if destination.reachable:
            items.append(check_targets_empty(spec, plan))
    return PrecheckReport(items=items)


run_prechecks_task = step(run_prechecks)
