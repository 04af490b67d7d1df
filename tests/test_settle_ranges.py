"""flows/migrate.py _settle_ranges: the copy waits for every range, with no process alarm armed.

prefect.futures.wait(timeout=...) arms SIGALRM on the main thread, where the command's flow runs; an
alarm fired inside the wait's lock once failed a migration with "RuntimeError: release unlocked lock"."""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from prefect import flow, task

from mongo_migrate.flows.migrate import _settle_ranges


class RecordedProgress:
    """The two calls _settle_ranges makes on flows/progress.py CopyProgress."""

    def __init__(self) -> None:
        self.finished: list[str] = []
        self.updates = 0

    def range_finished(self, source_ns: str) -> None:
        self.finished.append(source_ns)

    def update(self) -> None:
        self.updates += 1


@contextmanager
def as_the_command_runs():
    """No SIGALRM handler and no timer, as in `mongo-migrate run` (pytest-timeout sets both; prefect
    then cancels by a watcher thread instead of the alarm, which would hide it)."""
    handler = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    timer = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, *timer)


@task
def copy_range(n: int) -> list[int]:
    time.sleep(0.2 + 0.3 * n)
    if n == 1:
        raise ValueError("range 1 failed")
    return [n]


def test_every_range_settles_before_the_first_error_is_raised_and_no_alarm_is_armed(prefect_api):
    assert threading.current_thread() is threading.main_thread()  # where the alarm would be armed
    progress = RecordedProgress()
    alarms: list[float] = []
    stop = threading.Event()

    def watch_the_process_timer() -> None:
        while not stop.wait(0.002):
            left = signal.getitimer(signal.ITIMER_REAL)[0]
            if left > 0:
                alarms.append(left)

    @flow
    def settle() -> list:
        futures = [copy_range.submit(n) for n in range(4)]
        units = [[SimpleNamespace(plan=SimpleNamespace(source_ns=f"db.c{n}"))] for n in range(4)]
        watcher = threading.Thread(target=watch_the_process_timer, daemon=True)
        watcher.start()
        try:
            return _settle_ranges(futures, units, progress)
        finally:
            stop.set()
            watcher.join()

    with as_the_command_runs(), pytest.raises(ValueError, match="range 1 failed"):
        settle()
    # the failed range (the second to end) did not stop the wait: every range ended first, in order
    assert progress.finished == ["db.c0", "db.c1", "db.c2", "db.c3"]
    assert progress.updates >= 1  # the progress moved at the end at least
    assert alarms == []
