"""Step 5, the incremental sync: source change events become destination writes.

- events.py    a change event -> a whole-document write (DocWrite) or DDL actions (plan_change); batches,
               partitions, resume-token time, the change stream's pipeline. Pure: no I/O
- sources.py   where events come from: the change stream, and before 6.0 the oplog's DDL (OplogDDL)
- engine.py    ChangeSync: reader thread, apply loop, batched parallel writes, checkpoints, delay
- conflicts.py a write a unique index refuses for a while: holders parked and written back (UniqueConflicts)
- ddl.py       DDL actions applied on the destination (DestinationDDL), recopy_collection
- position.py  the start point and saved position in META_DATABASE.sync_state; OplogWindowExceeded
"""
