"""Where the command's log files go: $MONGO_MIGRATE_LOG_DIR, else ~/.cache/mongo-migrate/logs.

Log files not written to for $MONGO_MIGRATE_LOG_KEEP_DAYS days (30; 0 keeps them all) are removed when a
command opens the folder, so that scheduled runs do not fill a disk; only files named as this module
names them, so a folder shared with other programs keeps theirs.

Standard library only: the temporary Prefect server (flows/temporary_server.py) opens its log here
before this process imports Prefect."""
from __future__ import annotations

import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

LOG_DIR_ENV = "MONGO_MIGRATE_LOG_DIR"
KEEP_DAYS_ENV = "MONGO_MIGRATE_LOG_KEEP_DAYS"
KEEP_DAYS = 30
# <command>-<local time>-<pid>.log (log_file_for) and the temporary server's
_OURS = re.compile(r"([a-z]+-\d{8}-\d{6}-\d+|temporary-prefect-server-\d+)\.log")
_warned = False  # about a bad MONGO_MIGRATE_LOG_KEEP_DAYS, once per process


def log_folder() -> Path:
    folder = Path(os.environ.get(LOG_DIR_ENV) or Path.home() / ".cache" / "mongo-migrate" / "logs").expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    _remove_old_logs(folder)
    return folder


def _remove_old_logs(folder: Path) -> None:
    global _warned
    value = os.environ.get(KEEP_DAYS_ENV) or str(KEEP_DAYS)
    try:
        days = float(value)
    except ValueError:
        if not _warned:
            _warned = True
            print(f"mongo-migrate: {KEEP_DAYS_ENV}={value!r} is not a number of days; log files are kept "
                  f"{KEEP_DAYS} days", file=sys.stderr)
        days = KEEP_DAYS
    if days <= 0:
        return
    oldest = time.time() - days * 86400
    for entry in os.scandir(folder):
        try:
            if _OURS.fullmatch(entry.name) and entry.is_file() and entry.stat().st_mtime < oldest:
                os.unlink(entry.path)
        except OSError:  # removed meanwhile by another command, or not ours to remove
            pass


def log_file_for(command: str) -> Path:
    """<log folder>/<command>-<local time>-<pid>.log"""
    return log_folder() / f"{command}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
