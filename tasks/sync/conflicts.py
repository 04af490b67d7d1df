"""Unique-key conflicts: a write that a unique index of the destination refuses for a while.

A looked-up document can be newer than its neighbours' states (tasks/sync/events.py, "Reordering"), so
the key a write brings can still be held on the destination by a document whose newer state has not
been written yet: another apply worker has it, or it is further on in the stream, possibly in a cycle
(two documents that swapped keys). `UniqueConflicts.resolve` parks each holder (records it in the sync
state, then deletes it), makes the write, and writes the parked documents again in their current source
state, which makes room in turn where needed. The source is consistent at any instant, so current
states fit together; a restart writes back what a crash left parked (`restore_parked`).
"""
from __future__ import annotations

import logging
import threading

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import BulkWriteError

from mongo_migrate.blocks.errors import ChangeApplyError
from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import DUPLICATE_KEY, RAW
from mongo_migrate.tasks.state import sync_state_collection
from mongo_migrate.tasks.sync.events import DocWrite, Target


def target_collection(spec: MigrationSpec, target: Target):
    """A destination collection that reads and writes raw documents."""
    return open_client(spec.destination.resolve())[target[0]].get_collection(target[1], codec_options=RAW)


def source_collection(spec: MigrationSpec, source: Target):
    """A source collection that reads raw documents."""
    return open_client(spec.source.resolve())[source[0]].get_collection(source[1], codec_options=RAW)


class UniqueConflicts:
    """Resolves unique-key conflicts for one sync (owned by `ChangeSync`, shared by its apply workers
    and its DDL). `count` is the number of writes a unique index refused at first."""

    def __init__(self, spec: MigrationSpec, log: logging.Logger | logging.LoggerAdapter) -> None:
        self.spec = spec
        self.digest = spec.digest()
        self.log = log
        self.count = 0
        self._lock = threading.RLock()  # one resolution at a time: they share the parked list on record

    def current(self, write: DocWrite) -> DocWrite:
        """`write` made again from the document as the source has it now."""
        doc = source_collection(self.spec, write.source).find_one(write.key)
        return DocWrite(write.source, write.target, write.key, doc)

    def refresh_holders(self, write: DocWrite, key_value: dict) -> None:
        """Bring the destination documents holding `key_value` to their current source state (where
        no unique index is in the way yet: before a createIndexes)."""
        target = target_collection(self.spec, write.target)
        for holder in target.find(key_value, {"_id": 1}).limit(100):
            current = self.current(DocWrite(write.source, write.target, holder, None))
            target.bulk_write([current.operation()], bypass_document_validation=True)

    def resolve(self, target: Target, conflicts: list[tuple[DocWrite, dict]]) -> None:
        """Make the writes a unique index refused (each with its write error), parking the documents
        in the way and writing them back in their current source state (see the module's doc)."""
        with self._lock:
            self.count += len(conflicts)
            parked: list[DocWrite] = []
            for write, _error in conflicts:
                self._write_making_room(write, parked)
            rounds = 0
            while parked:
                rounds += 1
                if rounds > 10_000:
                    raise ChangeApplyError(f"{'.'.join(target)}: unique-key conflicts do not settle")
                self._write_making_room(self.current(parked.pop()), parked)
            if rounds:
                self._forget_parked()

    def _write_making_room(self, write: DocWrite, parked: list[DocWrite]) -> None:
        coll = target_collection(self.spec, write.target)
        for attempt in range(20):
            try:
                coll.bulk_write([write.operation()], bypass_document_validation=True)
                return
            except BulkWriteError as exc:
                if exc.details.get("writeConcernErrors"):
                    raise  # not durable yet: the sync makes the whole batch again (engine.py)
                error = exc.details.get("writeErrors", [{}])[0]
                if error.get("code") != DUPLICATE_KEY:
                    raise ChangeApplyError(f"{'.'.join(write.target)}: {error.get('errmsg')}") from None
            holders = [h for h in coll.find(error.get("keyValue") or {"_id": {"$in": []}}, {"_id": 1}).limit(100)
                       if h.raw != write.key.raw]
            if not holders:
                write = self.current(write)  # e.g. a collation the key lookup missed: try its newest state
                continue
            moved = [DocWrite(write.source, write.target, h, None) for h in holders]
            self._remember_parked(moved)
            coll.delete_many({"_id": {"$in": [h["_id"] for h in holders]}})
            parked.extend(moved)
        raise ChangeApplyError(
            f"{'.'.join(write.target)}: a unique index keeps refusing document {write.key!r} although "
            f"the source holds it")

    def _remember_parked(self, moved: list[DocWrite]) -> None:
        sync_state_collection(self.spec).update_one({"_id": self.digest}, {"$push": {"parked": {"$each": [
            {"source": list(w.source), "target": list(w.target), "key": w.key} for w in moved]}}})

    def _forget_parked(self) -> None:
        sync_state_collection(self.spec).update_one({"_id": self.digest}, {"$unset": {"parked": ""}})

    def restore_parked(self, state: dict) -> None:
        """Documents a killed run had parked are written back as the source has them now."""
        entries = state.get("parked") or []
        if not entries:
            return
        self.log.info("sync: writing back %d documents parked by the last run", len(entries))
        parked = [DocWrite(tuple(e["source"]), tuple(e["target"]),
                           RawBSONDocument(bson.encode(e["key"])), None) for e in entries]
        self.resolve(parked[0].target, [(self.current(w), {}) for w in parked])
        self._forget_parked()
