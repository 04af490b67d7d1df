"""The load cap on the source: one pace shared by every process and machine of a run.

The cap that applies is, in order: the live cap (`mongo-migrate throttle SPEC ...`, or the Prefect
Variable the flow watches, both written to `mongo_migrate_meta.throttle` on the destination), else the
caps of the spec's time window open now, else the spec's top-level caps; each direction (the copy's
reads, the sync's writes) is paced on its own.

The pace is GCRA (the "theoretical arrival time"): one document per run and direction holds `tat`, the
time at which the run may next read. Each batch advances it in one `find_one_and_update` whose update is
a pipeline (`start = max(tat, $$NOW - LATE_MS)`, `tat = start + cost`), so every worker, on any machine, books its
slot atomically by the destination's clock alone, and sleeps until `start`. No cap, no round trip: the
hot path then costs a dictionary look-up, and one read of the live cap per second per process.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from pymongo import ReturnDocument
from pymongo.collection import Collection

from mongo_migrate.blocks.spec import Caps, MigrationSpec, ThrottleSpec, active_window
from mongo_migrate.tasks.state import THROTTLE, state_collection

log = logging.getLogger("mongo_migrate.throttle")

COPY, SYNC = "copy", "sync"
DIRECTIONS = (COPY, SYNC)
# how stale a process's view of the live cap and the windows may be: a change is obeyed within this,
# plus the slot a worker already booked (which it leaves early when the cap changes)
REFRESH_S = 1.0
# the achieved rate is measured over spans at least this long (kept in the pace document)
RATE_SPAN_MS = 2000
# a worker that books its next slot up to this late keeps the time it lost (the cap's own slots, not
# the worker's round trips and writes, set the rate); a pace idle for longer starts from now
LATE_MS = 250


@dataclass(frozen=True)
class Cap:
    """The cap of one direction: documents and/or MB per second, and where it comes from."""

    docs_per_s: float | None
    mb_per_s: float | None
    origin: str  # "spec", "window 08:00-20:00 Europe/Paris", "live"

    @property
    def key(self) -> str:
        """Identifies the rate: a pace booked under another one starts afresh."""
        return f"{self.docs_per_s}/{self.mb_per_s}"

    def cost_s(self, docs: int, nbytes: int) -> float:
        return max(docs / self.docs_per_s if self.docs_per_s else 0.0,
                   nbytes / (self.mb_per_s * 1e6) if self.mb_per_s else 0.0)

    def describe(self) -> str:
        parts = []
        if self.docs_per_s:
            parts.append(f"{self.docs_per_s:,.0f} docs/s")
        if self.mb_per_s:
            parts.append(f"{self.mb_per_s:,g} MB/s")
        return " and ".join(parts) + f" ({self.origin})"


# the spec's keys of each direction's cap, and the Cap field each one is
_CAP_KEYS = {COPY: (("docs_per_s", "docs_per_s"), ("mb_per_s", "mb_per_s")),
             SYNC: (("sync_docs_per_s", "docs_per_s"), ("sync_mb_per_s", "mb_per_s"))}


def _cap(caps: Caps, direction: str, origin: str) -> Cap | None:
    (docs_key, _), (mb_key, _) = _CAP_KEYS[direction]
    docs, mb = getattr(caps, docs_key), getattr(caps, mb_key)
    return None if docs is None and mb is None else Cap(docs, mb, origin)


def effective_caps(throttle: ThrottleSpec, live: Caps | None, when: datetime) -> dict[str, Cap | None]:
    """The cap of each direction at `when` (timezone-aware): the live one while set (wholly: a live
    cap without sync values leaves the sync uncapped), else the open window's, else the spec's."""
    if live is not None:
        source, origin = live, "live"
    else:
        window = active_window(throttle.windows, when)
        source, origin = (window, f"window {window.label()}") if window else (throttle, "spec")
    return {d: _cap(source, d, origin) for d in DIRECTIONS}


# -- the live cap ------------------------------------------------------------------------------------
def throttle_collection(spec: MigrationSpec) -> Collection:
    return state_collection(spec, THROTTLE)


def read_live(spec: MigrationSpec) -> Caps | None:
    found = throttle_collection(spec).find_one({"_id": spec.digest()})
    if found is None:
        return None
    return Caps.model_validate({k: found.get(k) for k in Caps.model_fields})


def set_live(spec: MigrationSpec, caps: Caps | None, by: str) -> None:
    """Set the live cap of this spec's run (all None: no cap at all), or drop it (None: back to the
    spec's caps and windows)."""
    coll = throttle_collection(spec)
    if caps is None:
        coll.delete_one({"_id": spec.digest()})
        return
    coll.replace_one({"_id": spec.digest()}, {**caps.model_dump(), "by": by,
                                               "updated": datetime.now(timezone.utc)}, upsert=True)


def change_live_cap(spec: MigrationSpec, given: dict[str, float], *, off: bool = False, reset: bool = False,
                    by: str) -> dict[str, Cap | None]:
    """Apply `mongo-migrate throttle`'s options (or the Prefect Variable's value): `given` caps replace
    those of the live cap, or of the cap that applies now when none is live; `off` lifts every cap;
    `reset` goes back to the spec. Returns the caps that apply afterwards."""
    if reset:
        set_live(spec, None, by)
    elif off:
        set_live(spec, Caps(), by)
    elif given:
        base = read_live(spec)
        if base is None:
            now = effective_caps(spec.throttle, None, datetime.now(timezone.utc))
            base = Caps(**{k: getattr(now[d], f) for d, pairs in _CAP_KEYS.items() if now[d] is not None
                           for k, f in pairs})
        set_live(spec, base.model_copy(update=given), by)
    return effective_caps(spec.throttle, read_live(spec), datetime.now(timezone.utc))


def read_paces(spec: MigrationSpec) -> dict[str, dict]:
    """Each direction's pace document (`docs_per_s`, `mb_per_s`: the rate achieved over the last span;
    `updated`: when a batch last booked a slot), for the status."""
    found = throttle_collection(spec).find({"_id": {"$in": [f"{spec.digest()}:{d}" for d in DIRECTIONS]}})
    return {doc["_id"].rpartition(":")[2]: doc for doc in found}


# -- the limiter -------------------------------------------------------------------------------------
_NOW_MS = {"$toDouble": {"$toLong": "$$NOW"}}


def _book(key: str, cost_ms: float, docs: int, nbytes: int) -> list[dict]:
    """The pipeline update that books the next slot of `cost_ms` and counts what it pays for."""
    span_ms = {"$max": [{"$subtract": ["$now", {"$ifNull": ["$span_start", "$now"]}]}, 1]}
    return [
        {"$set": {
            # a pace booked under another rate starts afresh: a lowered cap's backlog is not owed
            "start": {"$cond": [{"$eq": ["$cap", key]},
                                {"$max": [{"$ifNull": ["$tat", 0]}, {"$subtract": [_NOW_MS, LATE_MS]}]}, _NOW_MS]},
            "now": _NOW_MS, "updated": "$$NOW", "cap": key,
            "rolled": {"$gte": [{"$subtract": [_NOW_MS, {"$ifNull": ["$span_start", 0]}]}, RATE_SPAN_MS]},
        }},
        {"$set": {
            "tat": {"$add": ["$start", cost_ms]},
            "docs_per_s": {"$cond": ["$rolled", {"$divide": [
                {"$multiply": [{"$ifNull": ["$span_docs", 0]}, 1000]}, span_ms]}, "$docs_per_s"]},
            "mb_per_s": {"$cond": ["$rolled", {"$divide": [
                {"$divide": [{"$ifNull": ["$span_bytes", 0]}, 1000]}, span_ms]}, "$mb_per_s"]},
            "span_docs": {"$cond": ["$rolled", docs, {"$add": [{"$ifNull": ["$span_docs", 0]}, docs]}]},
            "span_bytes": {"$cond": ["$rolled", nbytes, {"$add": [{"$ifNull": ["$span_bytes", 0]}, nbytes]}]},
            "span_start": {"$cond": ["$rolled", "$now", "$span_start"]},
        }},
        {"$unset": "rolled"},
    ]


class Limiter:
    """This process's view of one run's caps; `take()` after each batch. Thread-safe."""

    def __init__(self, spec: MigrationSpec) -> None:
        self.spec = spec
        self.digest = spec.digest()
        self._lock = threading.Lock()
        self._read_at = -1e18
        self._caps: dict[str, Cap | None] = effective_caps(spec.throttle, None, datetime.now(timezone.utc))
        self._live: Caps | None = None

    def current(self, direction: str) -> Cap | None:
        """The cap that applies now, re-read at most every REFRESH_S (by one thread; the others go on
        with the last one read)."""
        if time.monotonic() - self._read_at >= REFRESH_S and self._lock.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self._lock.release()
        return self._caps[direction]

    def _refresh(self) -> None:
        try:
            self._live = read_live(self.spec)
        except Exception as exc:  # noqa: BLE001 - the destination's own failure meets the batch's write
            log.debug("live cap not read: %s", exc)
        self._read_at = time.monotonic()
        self._caps = effective_caps(self.spec.throttle, self._live, datetime.now(timezone.utc))

    def take(self, direction: str, docs: int, nbytes: int) -> float:
        """Book the slot for a batch of `docs` documents, `nbytes` bytes, and sleep until it comes;
        returns the seconds slept."""
        cap = self.current(direction)
        if cap is None:
            return 0.0
        cost_ms = cap.cost_s(docs, nbytes) * 1000
        booked = throttle_collection(self.spec).find_one_and_update(
            {"_id": f"{self.digest}:{direction}"}, _book(cap.key, cost_ms, docs, nbytes),
            projection={"start": 1, "now": 1}, upsert=True, return_document=ReturnDocument.AFTER)
        wait = (booked["start"] - booked["now"]) / 1000
        if wait <= 0:
            return 0.0
        started = time.monotonic()
        deadline = started + wait
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, REFRESH_S))
            if deadline - time.monotonic() > 0 and self.current(direction) != cap:
                break  # a new cap paces the next batch from now on
        return time.monotonic() - started


_limiters: dict[str, Limiter] = {}
_limiters_lock = threading.Lock()


def limiter(spec: MigrationSpec) -> Limiter:
    """This process's limiter of the spec's run (a range task on any worker finds or makes it)."""
    digest = spec.digest()
    found = _limiters.get(digest)
    if found is None or found.spec.throttle != spec.throttle:
        with _limiters_lock:
            found = _limiters[digest] = Limiter(spec)
    return found
