"""Where the sync's change events come from, per server generation.

MongoDB 6.0 and later: one deployment-wide change stream with `showExpandedEvents`, which carries
every document change and every DDL (create, createIndexes, dropIndexes, modify, drop, rename,
dropDatabase) in order.

Before 6.0 (4.2, 4.4, 5.0; 3.6 and 4.0 as far as the driver goes) a change stream carries document
changes, drop, rename and dropDatabase, but no create, createIndexes, dropIndexes or collMod. Those
are in the oplog (`local.oplog.rs`, op "c"), with the `ts` that a change event carries as its
`clusterTime`. `OplogDDL` reads them and shapes each like the expanded event 6.0 would have sent, so
one planner (`plan_change`) and one apply engine serve every version; the reader merges them into
the stream by time (`ChangeSync._read_changes`). The oplog is read only up to a time the change
stream has already reached, which is majority-committed, so no DDL is applied that could roll back,
and no oplog hole (an entry of an earlier ts not yet visible) can be skipped.
"""
from __future__ import annotations

from typing import Any, Iterator

from bson.timestamp import Timestamp
from pymongo import ASCENDING

from mongo_migrate.tasks.common import version_tuple

# change streams carry DDL (showExpandedEvents) from this version on
EXPANDED_EVENTS_SINCE = (6, 0)
# before 4.4 a query on the oplog must say it is ordered by ts (oplogReplay) to start at its bound
# instead of scanning the oplog from its first entry
OPLOG_REPLAY_BEFORE = (4, 4)
# what the change stream delivers itself, on every version
STREAMED_COMMANDS = frozenset({"drop", "renameCollection", "dropDatabase"})
# index build steps of 4.4+ replica sets: the build is applied once, at its commit
SKIPPED_COMMANDS = frozenset({"startIndexBuild", "abortIndexBuild"})


def stream_has_ddl(version: str | None) -> bool:
    """Does this server's change stream carry create, createIndexes, dropIndexes and modify?"""
    return version_tuple(version) >= EXPANDED_EVENTS_SINCE


def _event(op: str, ns: str, coll: str, description: dict, entry: dict) -> dict:
    db = ns.split(".", 1)[0]
    return {"operationType": op, "ns": {"db": db, "coll": coll}, "operationDescription": description,
            "clusterTime": entry["ts"], "wallTime": entry.get("wall"), "fromOplog": True}


def view_events_of(entry: dict) -> Iterator[dict]:
    """Before 5.0 a view is created, changed and dropped as a write to `<db>.system.views` (one
    document per view, `_id` "db.view"), not as a command: the matching expanded event."""
    op, o = entry.get("op"), entry.get("o") or {}
    ns = entry.get("ns", "")
    if op == "i" or (op == "u" and "viewOn" in o):
        name = o.get("_id") if op == "i" else (entry.get("o2") or {}).get("_id")
        if isinstance(name, str):
            kind = "create" if op == "i" else "modify"
            yield _event(kind, ns, name.split(".", 1)[1],
                         {"viewOn": o.get("viewOn"), "pipeline": o.get("pipeline", []),
                          **({"collation": o["collation"]} if "collation" in o else {})}, entry)
    elif op == "d" and isinstance(o.get("_id"), str):
        yield _event("drop", ns, o["_id"].split(".", 1)[1], {}, entry)


def ddl_events_of(entry: dict) -> Iterator[dict]:
    """The expanded change events (as 6.0 shapes them) for one oplog entry: create, createIndexes,
    dropIndexes, modify; none for anything the change stream carries itself. Transactions
    (applyOps) are looked into, since 4.4 allows creating collections and indexes in them."""
    if entry.get("ns", "").endswith(".system.views"):
        yield from view_events_of(entry)
        return
    if entry.get("op") != "c":
        return
    o = entry.get("o") or {}
    ns = entry.get("ns", "")
    if "applyOps" in o:
        for inner in o["applyOps"]:
            yield from ddl_events_of({**inner, "ts": entry["ts"], "wall": entry.get("wall")})
        return
    command = next(iter(o), None)
    if command is None or command in STREAMED_COMMANDS or command in SKIPPED_COMMANDS:
        return
    coll = o[command]
    if command == "create":
        # idIndex is implied by the destination's own create; the rest are the collection's options
        yield _event("create", ns, coll, {k: v for k, v in o.items() if k not in ("create", "idIndex")}, entry)
    elif command == "createIndexes":
        # one index per entry: 4.2, and 4.4+ on an empty collection or a standalone
        spec = {k: v for k, v in o.items() if k != "createIndexes"}
        yield _event("createIndexes", ns, coll, {"indexes": [spec]}, entry)
    elif command == "commitIndexBuild":
        yield _event("createIndexes", ns, coll, {"indexes": list(o.get("indexes", []))}, entry)
    elif command == "dropIndexes" or command == "deleteIndexes":
        names = o.get("index")
        names = names if isinstance(names, list) else [names]
        yield _event("dropIndexes", ns, coll, {"indexes": [{"name": n} for n in names if isinstance(n, str)]},
                     entry)
    elif command == "collMod":
        yield _event("modify", ns, coll, {k: v for k, v in o.items() if k != "collMod"}, entry)


class OplogDDL:
    """The DDL of the source's oplog after a cluster time, read up to times the stream has reached."""

    def __init__(self, client: Any, after: Timestamp, version: str | None) -> None:
        self.oplog = client.local["oplog.rs"]
        self.read_to = after
        self.oplog_replay = version_tuple(version) < OPLOG_REPLAY_BEFORE

    def until(self, bound: Timestamp) -> list[dict]:
        """Expanded events for the DDL in (last bound, bound], in oplog order."""
        if bound <= self.read_to:
            return []
        query = {"ts": {"$gt": self.read_to, "$lte": bound},
                 "$or": [{"op": "c", "o.applyOps": {"$exists": False}}, {"op": "c", "o.applyOps.op": "c"},
                         {"ns": {"$regex": r"\.system\.views$"}}]}
        entries = self.oplog.find(query, sort=[("$natural", ASCENDING)], oplog_replay=self.oplog_replay)
        events = [event for entry in entries for event in ddl_events_of(entry)]
        self.read_to = bound
        return events
