"""Where log lines go: the log folder keeps what is recent and what is not its own (flows/log_files.py);
the project's lines reach a run's logs in the Prefect API (tasks/common.py)."""
from __future__ import annotations

import os
import time

from mongo_migrate.flows.log_files import KEEP_DAYS_ENV, LOG_DIR_ENV, log_file_for


def _aged(path, days: float) -> None:
    path.write_text("a log line\n")
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_logs_unwritten_for_the_keep_days_are_removed_and_nothing_else(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(KEEP_DAYS_ENV, raising=False)
    old_run, old_server = tmp_path / "run-20261001-101500-4242.log", tmp_path / "temporary-prefect-server-4242.log"
    recent, foreign = tmp_path / "verify-20261120-090000-77.log", tmp_path / "app-server.log"
    for path, days in ((old_run, 31), (old_server, 45), (recent, 29), (foreign, 400)):
        _aged(path, days)
    new = log_file_for("run")
    assert new.parent == tmp_path and new.name.startswith("run-") and new.name.endswith(f"-{os.getpid()}.log")
    assert sorted(p.name for p in tmp_path.iterdir()) == [foreign.name, recent.name]

    monkeypatch.setenv(KEEP_DAYS_ENV, "7")
    log_file_for("verify")
    assert sorted(p.name for p in tmp_path.iterdir()) == [foreign.name]

    monkeypatch.setenv(KEEP_DAYS_ENV, "a month")  # said once, and the default applies
    _aged(old_run, 31)
    log_file_for("run")
    log_file_for("run")
    assert not old_run.exists()
    assert capsys.readouterr().err == ("mongo-migrate: MONGO_MIGRATE_LOG_KEEP_DAYS='a month' is not a number of "
                                       "days; log files are kept 30 days\n")

    monkeypatch.setenv(KEEP_DAYS_ENV, "0")  # keep everything
    _aged(old_run, 3650)
    log_file_for("precheck")
    assert old_run.exists()


def test_project_lines_go_to_runs_once_and_lines_outside_a_run_warn_about_nothing(recwarn):
    """tasks/common.py: the project's loggers send to the Prefect API (tests/test_faults.py shows a line
    reaching a run's logs); attached once however often it is asked, and a line with no run is not
    sent, so Prefect does not warn that a logger wrote outside a flow run."""
    import logging

    from prefect.logging.handlers import APILogHandler

    from mongo_migrate.tasks.common import PROJECT_LOGGER, send_logs_to_runs

    send_logs_to_runs()
    send_logs_to_runs()
    logger = logging.getLogger(PROJECT_LOGGER)
    assert sum(isinstance(h, APILogHandler) for h in logger.handlers) == 1
    assert logger.getEffectiveLevel() == logging.INFO
    logging.getLogger(f"{PROJECT_LOGGER}.copy").warning("a line written where no run is")
    assert [str(w.message) for w in recwarn if "without a flow run id" in str(w.message)] == []
