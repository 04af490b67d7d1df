"""Step 2: the precheck. Every item reads, none writes; the migration starts only if none failed.

Each check item is a plain function beside its name, in the module of its group, returning rows of the
precheck table: passed, warning or failed, a one-line detail and, for anything not passed, what to do
about it. A check that cannot run (an error reading the server) is a failed row, never an exception in
the flow (report.py `check_item`). ITEMS below lists them in table order with what each needs; they
run side by side in one Prefect task, the precheck step (`run_prechecks`). Adding an item is a function
in its module and one entry here.

 1/2 source / destination connectivity   connectivity.py   7  incremental prerequisites  versions.py
 2b  source is not destination           connectivity.py   8  oplog window               capacity.py
 3   source version and topology         versions.py       9  destination storage        capacity.py
 4   destination compatibility           versions.py       10 selected objects, config   objects.py
 5/6 source / destination permissions    permissions.py    11 name mapping, targets      objects.py
 12  data compatibility (a scan of the source's documents) data.py
     the Dask cluster of copy_options.runner              connectivity.py
     the Slack notifier, when the spec names one          notifications.py
 Items 4, 8, 9 and 12 read the source's inventory (inventory.py), read once.
"""
from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import step
from mongo_migrate.tasks.connect import EndpointInfo
from mongo_migrate.tasks.namespaces import MigrationPlan
from mongo_migrate.tasks.precheck.capacity import (DESTINATION_STORAGE, OPLOG_WINDOW, DestinationSpace, OplogWindow,
                                                   check_destination_storage, check_oplog_window, classify_oplog_window,
                                                   classify_storage, measure_copy_rate, read_destination_space,
                                                   read_oplog_window)
from mongo_migrate.tasks.precheck.connectivity import (DASK_CLUSTER, DESTINATION_CONNECTIVITY, DISTINCT_DEPLOYMENTS,
                                                       SOURCE_CONNECTIVITY, check_dask_cluster,
                                                       check_distinct_deployments, check_endpoint, same_deployment)
from mongo_migrate.tasks.precheck.data import DATA_COMPATIBILITY, check_data_compatibility, rejected_field_names
from mongo_migrate.tasks.precheck.inventory import SourceInventory, read_source_inventory
from mongo_migrate.tasks.precheck.notifications import NOTIFICATIONS, check_notifications
from mongo_migrate.tasks.precheck.objects import (OBJECTS, TARGET_NAMESPACES, ObjectListing, check_name_mapping,
                                                  check_objects, check_targets_empty, list_selected_objects)
from mongo_migrate.tasks.precheck.permissions import (DESTINATION_PERMISSIONS, SOURCE_PERMISSIONS,
                                                      check_destination_permissions, check_source_permissions)
from mongo_migrate.tasks.precheck.report import CheckResult, PrecheckReport, failed, passed, warning
from mongo_migrate.tasks.precheck.versions import (DESTINATION_COMPATIBILITY, INCREMENTAL, SOURCE_VERSION,
                                                   check_destination_compatibility, check_incremental_prerequisites,
                                                   check_source_version, classify_destination, classify_source_version,
                                                   collection_problem, index_problem, standalone_remedy)

# what an item may need: the endpoints reachable, the plan (the selection could be listed), the
# source's inventory (read once, for several items), a Slack notifier in the spec, a Dask runner
SOURCE, DESTINATION, PLAN, INVENTORY, SLACK, DASK = "source", "destination", "plan", "inventory", "slack", "dask"


@dataclass(frozen=True)
class Item:
    """A row (or rows) of the precheck table: the check, the arguments it takes by name (spec, plan,
    source, destination, inventory), and what must hold for it to run at all."""

    check: Callable
    args: tuple[str, ...]
    needs: frozenset[str]


def item(check: Callable, *args: str, needs: tuple[str, ...]) -> Item:
    return Item(check, args, frozenset(needs))


# the table's order (after the two connectivity rows)
ITEMS: list[Item] = [
    item(check_distinct_deployments, "spec", "plan", "source", "destination", needs=(SOURCE, DESTINATION, PLAN)),
    item(check_source_version, "spec", "source", needs=(SOURCE,)),
    item(check_destination_compatibility, "source", "destination", "inventory",
         needs=(SOURCE, DESTINATION, INVENTORY)),
    item(check_source_permissions, "spec", "plan", needs=(SOURCE, PLAN)),
    item(check_destination_permissions, "spec", "plan", needs=(SOURCE, DESTINATION, PLAN)),
    # the plan is optional here: without it the item still says whether the source can stream changes
    item(check_incremental_prerequisites, "spec", "source", "plan", needs=(SOURCE,)),
    item(check_oplog_window, "spec", "source", "inventory", needs=(SOURCE, INVENTORY)),
    item(check_destination_storage, "spec", "plan", "inventory", needs=(SOURCE, DESTINATION, INVENTORY)),
    item(check_objects, "spec", "plan", needs=(SOURCE, PLAN)),
    item(check_name_mapping, "spec", "plan", needs=(SOURCE, DESTINATION, PLAN)),
    item(check_targets_empty, "spec", "plan", needs=(SOURCE, DESTINATION, PLAN)),
    item(check_data_compatibility, "spec", "plan", "destination", "inventory", "source",
         needs=(SOURCE, DESTINATION, INVENTORY)),
    item(check_notifications, "spec", needs=(SLACK,)),
    item(check_dask_cluster, "spec", needs=(DASK,)),
]

list_selected_objects_task = step(list_selected_objects, retries=0)


def _rows(value) -> list[CheckResult]:
    return value if isinstance(value, list) else [value]


def run_prechecks(spec: MigrationSpec, source: EndpointInfo, destination: EndpointInfo,
                  plan: Optional[MigrationPlan], plan_error: Optional[str] = None) -> PrecheckReport:
    """Run every item whose needs hold, side by side, and gather the table in item order. Items that
    cannot run (an endpoint unreachable, the objects not listed) are not run; one failed row says so.

    One task for all items, not one each: a task run costs the Prefect client and server milliseconds
    of CPU apiece (its state events), the items are a few round trips each, and on a machine the
    copy shares, a 1,000,000-document run's Prefect server was still writing the precheck's task runs
    seconds into the copy (README, Performance)."""
    have = {SOURCE: source.reachable, DESTINATION: destination.reachable, PLAN: plan is not None,
            SLACK: spec.notifications.slack is not None, DASK: spec.copy_options.runner != "threads"}
    have[INVENTORY] = have[SOURCE] and have[PLAN]
    values = {"spec": spec, "plan": plan, "source": source, "destination": destination}
    runnable = [i for i in ITEMS if all(have[n] for n in i.needs)]
    source_docs: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(runnable)), thread_name_prefix="precheck") as pool:
        def submit(check: Callable, *args):
            # in the task's context (its run, for log lines; Prefect's settings, the API's URL among them)
            return pool.submit(contextvars.copy_context().run, check, *args)

        inventory_f = submit(read_source_inventory, spec, plan) if have[INVENTORY] else None
        futures = {i: submit(i.check, *(values[a] for a in i.args)) for i in runnable if INVENTORY not in i.needs}
        if inventory_f is not None:
            values["inventory"] = inventory = inventory_f.result()
            source_docs = {c.plan.source_ns: c.docs for c in inventory.collections}
            futures.update({i: submit(i.check, *(values[a] for a in i.args)) for i in runnable if INVENTORY in i.needs})
        rows = {i: _rows(f.result()) for i, f in futures.items()}

    items = [check_endpoint(source), check_endpoint(destination)]
    for i in runnable:
        items += rows[i]
    if plan is None and source.reachable:
        items.append(failed(OBJECTS, f"the source's databases and collections could not be listed: "
                            f"{plan_error or 'unknown error'}",
                            "grant the source account read on the selected databases"))
    if source.cause == "version" and source.topology == "standalone" and spec.incremental:
        # too old for the driver to read more, yet the standalone advice holds after the upgrade too
        items.append(failed(INCREMENTAL, "the source is a standalone mongod: incremental migration "
                            "reads its change stream, which only replica sets have",
                            standalone_remedy(spec.source.resolve())))
    if not (source.reachable and destination.reachable):
        down = " and ".join(i.role for i in (source, destination) if not i.reachable)
        items.append(failed("other items", f"not checked: the {down} cannot be reached",
                            "fix connectivity, then run the precheck again"))
    return PrecheckReport(items=items, source_docs=source_docs)


run_prechecks_task = step(run_prechecks, retries=0)


__all__ = [
    "CheckResult", "PrecheckReport", "ObjectListing", "SourceInventory", "OplogWindow", "DestinationSpace",
    "ITEMS", "Item", "run_prechecks", "run_prechecks_task", "list_selected_objects_task",
    "passed", "warning", "failed", "check_endpoint", "same_deployment",
    "check_distinct_deployments", "check_source_version", "classify_source_version",
    "check_destination_compatibility", "classify_destination", "index_problem", "collection_problem",
    "check_source_permissions", "check_destination_permissions", "check_incremental_prerequisites",
    "check_oplog_window", "classify_oplog_window", "read_oplog_window", "measure_copy_rate",
    "check_destination_storage", "classify_storage", "read_destination_space", "check_objects",
    "check_name_mapping", "check_targets_empty", "check_data_compatibility", "rejected_field_names",
    "check_notifications", "read_source_inventory", "list_selected_objects",
    "SOURCE_CONNECTIVITY", "DESTINATION_CONNECTIVITY", "DISTINCT_DEPLOYMENTS", "SOURCE_VERSION",
    "DESTINATION_COMPATIBILITY", "SOURCE_PERMISSIONS", "DESTINATION_PERMISSIONS", "INCREMENTAL",
    "OPLOG_WINDOW", "DESTINATION_STORAGE", "OBJECTS", "TARGET_NAMESPACES", "DATA_COMPATIBILITY",
    "NOTIFICATIONS", "DASK_CLUSTER", "check_dask_cluster",
]
