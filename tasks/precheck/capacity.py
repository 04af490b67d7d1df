"""Capacity: item 8 (the source's oplog holds the full copy's time) and 9 (the destination has room)."""
from __future__ import annotations

import math
import time
from typing import Optional

from pydantic import BaseModel
from pymongo.errors import OperationFailure

from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import META_DATABASE, MigrationSpec
from mongo_migrate.tasks.connect import EndpointInfo
from mongo_migrate.tasks.namespaces import MigrationPlan
from mongo_migrate.tasks.oplog import OplogWindow, read_oplog_window
from mongo_migrate.tasks.precheck.inventory import SourceInventory, inventory_unreadable
from mongo_migrate.tasks.precheck.report import (CheckResult, MiB, check_item, failed, fmt_bytes, fmt_hours, passed,
                                                 warning)
from mongo_migrate.tasks.raw_batches import find_raw_batches
from mongo_migrate.tasks.state import lost_sync_position

OPLOG_WINDOW = "oplog window"
DESTINATION_STORAGE = "destination storage"
STORAGE_FACTOR = 1.1
OPLOG_WARN_RATIO = 3.0
SAMPLE_BYTES = 32 * MiB  # how much of the source is read to measure the copy rate
SAMPLE_SECONDS = 3.0


# -- 8: oplog window ---------------------------------------------------------------------------

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
        for batch in find_raw_batches(coll, {}, batch_size=spec.copy_options.batch_docs):
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
    held = fmt_hours(window.hours) + ("" if window.full else " (projected: the oplog is not full yet)")
    projection = (f"projected full copy {fmt_hours(copy_hours)} ({fmt_bytes(data_bytes)} at "
                  f"{fmt_bytes(rate_bytes_per_s)}/s measured)")
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
def check_oplog_window(spec: MigrationSpec, source: EndpointInfo,
                       inventory: SourceInventory) -> CheckResult | list[CheckResult]:
    """Item 8: the source's oplog must outlast the full copy (incremental migration only), and still
    hold the saved position of an unfinished run of the spec, which would resume from it."""
    name = OPLOG_WINDOW
    if not spec.incremental:
        return passed(name, "not needed: full migration only")
    if source.topology == "standalone":
        return failed(name, "a standalone has no oplog", "see incremental prerequisites")
    if source.topology == "sharded":
        return warning(name, "not measured through mongos: every shard has its own oplog",
                       "on each shard's primary run rs.printReplicationInfo() and compare with the copy time")
    restart = None
    lost = lost_sync_position(spec)
    if lost and not spec.copy_options.drop_existing_targets:
        return failed(name, lost + ": the run cannot resume",
                      "migrate afresh: set copy_options.drop_existing_targets: true (the targets are dropped "
                      "and copied again, and the sync starts from the source's present)")
    if lost:
        restart = warning(name, lost + ": this run migrates afresh (drop_existing_targets)",
                          "nothing to do, unless the targets' data must be kept: then set "
                          "drop_existing_targets: false")
    if inventory.error:
        row = inventory_unreadable(name, inventory)
    else:
        window = read_oplog_window(spec.source.resolve())
        rate = measure_copy_rate(spec, inventory)
        row = classify_oplog_window(window, inventory.data_bytes + inventory.index_bytes, rate)
    return [restart, row] if restart else row


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
    need = f"needs {fmt_bytes(required)} (1.1 x source data + indexes)"
    shortfalls = []
    have = []
    if space.free_bytes is not None:
        have.append(f"{fmt_bytes(space.free_bytes)} free on disk")
        if space.free_bytes < required:
            shortfalls.append(f"only {fmt_bytes(space.free_bytes)} free on the destination's disk")
    if declared_gb is not None:
        available = declared_gb * 1e9 - (space.used_bytes or 0)
        have.append(f"{fmt_bytes(available)} of the declared {declared_gb:g} GB left")
        if available < required:
            shortfalls.append(f"declared capacity {declared_gb:g} GB"
                              + (f" less {fmt_bytes(space.used_bytes)} already stored" if space.used_bytes else "")
                              + f" leaves {fmt_bytes(available)}")
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
        return inventory_unreadable(DESTINATION_STORAGE, inventory)
    required = STORAGE_FACTOR * (inventory.data_bytes + inventory.index_bytes)
    return classify_storage(required, read_destination_space(spec, plan), spec.destination.storage_gb)
