"""The incremental sync's parts (being split out of tasks/changes.py): where change events come from."""
