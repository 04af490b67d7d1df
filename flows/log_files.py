"""Where the command's log files go: $MONGO_MIGRATE_LOG_DIR, else ~/.cache/mongo-migrate/logs.

Standard library only: the temporary Prefect server (flows/temporary_server.py) opens its log here
before this process imports Prefect."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

LOG_DIR_ENV = "MONGO_MIGRATE_LOG_DIR"


def log_folder() -> Path:
    folder = Path(os.environ.get(LOG_DIR_ENV) or Path.home() / ".cache" / "mongo-migrate" / "logs").expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_file_for(command: str) -> Path:
    """<log folder>/<command>-<local time>-<pid>.log"""
    return log_folder() / f"{command}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
