"""DDL on the destination: the actions `plan_change` makes of create, drop, rename, index, collMod
and dropDatabase events (tasks/sync/events.py), and `recopy_collection`, which copies one source
collection again as it is now (a rename during the full copy or across databases, time-series
collections at the cutover). Every action is idempotent: a replay after a restart is harmless. The
engine applies an action alone, after everything before it (tasks/sync/engine.py).
"""
from __future__ import annotations

import logging

import bson
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure

from mongo_migrate.blocks.errors import ChangeApplyError
from mongo_migrate.blocks.mongo import open_client
from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.common import (DUPLICATE_KEY, INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND, RAW, to_ejson,
                                        write_command)
from mongo_migrate.tasks.copy import insert_raw_stream, read_raw_range
from mongo_migrate.tasks.namespaces import CollectionPlan, NamespaceMapper
from mongo_migrate.tasks.schema import build_indexes, create_target_collection, create_views
from mongo_migrate.tasks.sync.conflicts import UniqueConflicts
from mongo_migrate.tasks.sync.events import (Action, CreateCollection, CreateIndexes, DocWrite, DropCollection,
                                             DropDatabase, DropIndexes, ModifyCollection, RecopyCollection,
                                             RenameCollection, Target)

INDEX_CONFLICTS = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict


def recopy_collection(spec: MigrationSpec, source: Target, target: Target) -> int:
    """Copy one source collection as it is now over its target (options, data, indexes). Returns the
    documents copied; 0 when the source collection is gone (a later event says where it went)."""
    src = open_client(spec.source.resolve())
    dst = open_client(spec.destination.resolve())
    dst[target[0]].drop_collection(target[1])
    infos = list(src[source[0]].list_collections(filter={"name": source[1]}))
    if not infos:
        return 0
    info = infos[0]
    plan = CollectionPlan(source_db=source[0], source_name=source[1], target_db=target[0],
                          target_name=target[1], kind=info.get("type", "collection"),
                          options_ejson=to_ejson(info.get("options", {})))
    if plan.kind == "view":
        create_views(spec, [plan])
        return 0
    create_target_collection(spec, plan)
    reader = src[plan.source_db].get_collection(plan.data_collection, codec_options=RAW)
    writer = dst[plan.target_db].get_collection(plan.target_data_collection, codec_options=RAW)
    copied = 0
    for stream in read_raw_range(reader, plan, None, None, spec.copy_options.batch_docs):
        copied += insert_raw_stream(writer, stream, plan.target_ns)[1]
    build_indexes(spec, plan)
    return copied


class DestinationDDL:
    """Applies DDL actions on the destination for one sync. A unique index that the documents do not
    fit yet (newer than their neighbours) has their holders refreshed through `conflicts`."""

    def __init__(self, spec: MigrationSpec, mapper: NamespaceMapper,
                 log: logging.Logger | logging.LoggerAdapter, conflicts: UniqueConflicts) -> None:
        self.spec = spec
        self.mapper = mapper
        self.log = log
        self.conflicts = conflicts

    def apply_action(self, action: Action) -> None:
        self.log.info("sync: %s", action.describe())
        dest = open_client(self.spec.destination.resolve())
        try:
            if isinstance(action, CreateCollection):
                self._create(action.plan)
            elif isinstance(action, DropCollection):
                dest[action.target[0]].drop_collection(action.target[1])
            elif isinstance(action, RenameCollection):
                self._rename(action)
            elif isinstance(action, RecopyCollection):
                n = recopy_collection(self.spec, action.source, action.target)
                self.log.info("sync: copied %d documents of %s", n, ".".join(action.source))
            elif isinstance(action, CreateIndexes):
                self._create_indexes(action)
            elif isinstance(action, DropIndexes):
                for name in action.names:
                    try:
                        write_command(dest[action.target[0]], "dropIndexes", action.target[1], index=name)
                    except OperationFailure as exc:
                        if exc.code not in (INDEX_NOT_FOUND, NAMESPACE_NOT_FOUND):
                            raise
            elif isinstance(action, ModifyCollection):
                write_command(dest[action.target[0]], "collMod", action.target[1], **action.changes)
            elif isinstance(action, DropDatabase):
                self._drop_database(action.source_db)
        except OperationFailure as exc:
            if exc.code == NAMESPACE_NOT_FOUND:
                return  # a replay of a change already applied, or of one to a collection since gone
            said = exc.details.get("errmsg", exc) if exc.details else exc
            raise ChangeApplyError(f"{action.describe()}: {said}") from None

    def _create(self, plan: CollectionPlan) -> None:
        if plan.kind == "view":
            create_views(self.spec, [plan])
        elif plan.kind == "timeseries":
            infos = list(open_client(self.spec.source.resolve())[plan.source_db].list_collections(
                filter={"name": plan.source_name}))
            if infos:  # gone already: its drop follows
                create_target_collection(self.spec, plan.model_copy(
                    update={"options_ejson": to_ejson(infos[0].get("options", {}))}))
        else:
            create_target_collection(self.spec, plan)

    def _rename(self, action: RenameCollection) -> None:
        dest = open_client(self.spec.destination.resolve())
        (odb, ocoll), (ndb, ncoll) = action.old_target, action.new_target
        try:
            write_command(dest.admin, "renameCollection", f"{odb}.{ocoll}", to=f"{ndb}.{ncoll}", dropTarget=True)
        except OperationFailure as exc:
            if exc.code != NAMESPACE_NOT_FOUND:
                raise
            if ncoll in dest[ndb].list_collection_names(filter={"name": ncoll}):
                return  # a replay: the rename is done already
            n = recopy_collection(self.spec, action.source_to, action.new_target)
            self.log.info("sync: %s was not on the destination; copied %d documents of %s", f"{odb}.{ocoll}",
                          n, ".".join(action.source_to))

    def _create_indexes(self, action: CreateIndexes) -> None:
        db = open_client(self.spec.destination.resolve())[action.target[0]]
        for attempt in range(4):
            try:
                write_command(db, "createIndexes", action.target[1], indexes=action.indexes)
                return
            except OperationFailure as exc:
                if exc.code in INDEX_CONFLICTS and attempt == 0:
                    # an index of that name with another spec: the source dropped and recreated it
                    for ix in action.indexes:
                        try:
                            write_command(db, "dropIndexes", action.target[1], index=ix["name"])
                        except OperationFailure:
                            pass
                    continue
                key_value = (exc.details or {}).get("keyValue")
                if exc.code == DUPLICATE_KEY and key_value and attempt < 3:
                    # documents newer than their neighbours share a key the source has unique
                    probe = DocWrite(action.source, action.target, RawBSONDocument(bson.encode({})), None)
                    self.conflicts.refresh_holders(probe, key_value)
                    continue
                raise

    def _drop_database(self, source_db: str) -> None:
        dest = open_client(self.spec.destination.resolve())
        target_db = self.mapper.target_database(source_db)
        for name in dest[target_db].list_collection_names():
            if self.mapper.selected(source_db, name) and self.mapper.target(source_db, name) == (target_db, name):
                dest[target_db].drop_collection(name)
        for src, dst in self.mapper.collection_map.items():
            db, _, coll = src.partition(".")
            if db == source_db and self.mapper.selected(db, coll):
                tdb, _, tcoll = dst.partition(".")
                dest[tdb].drop_collection(tcoll)
