"""What `mongo-migrate` shows while it works.

Prefect logs a line per task run; a copy of a thousand ranges would scroll past. So, unless --verbose,
Prefect's INFO lines go to a log file (the terminal keeps warnings and errors) and the command draws
the progress instead: at a terminal, a bar per collection (the biggest MAX_BARS, the rest summed) with
docs/s and the time left, then one live line for the sync (rich, which Prefect already brings); in a
pipe (CI, a log collector), one plain line every PLAIN_EVERY_S. The figures are those of the progress
artifacts (flows/progress.py), heard in this process.
"""
from __future__ import annotations

import logging
import re
import sys
import threading
import time
from pathlib import Path

from mongo_migrate.flows.progress import CopySnapshot, format_duration

MAX_BARS = 8
PLAIN_EVERY_S = 5.0


def send_info_to_file(path: Path) -> None:
    """The console keeps WARNING and above; every record Prefect's loggers let through (INFO and up)
    goes to `path` too, formatted as on the console."""
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
    to_file.setLevel(logging.INFO)
    for handler in consoles:
        handler.setLevel(max(handler.level, logging.WARNING))
    root.addHandler(to_file)


class TerminalProgress:
    """Draws the copy's bars and the sync's line on `stream` (stderr: stdout stays the summary)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._lock = threading.Lock()
        self._progress = None  # rich.progress.Progress while the copy is drawn
        self._tasks: dict[str, int] = {}
        self._live = None  # rich.live.Live for the sync's line
        self._last_plain = 0.0
        self._copy_done = False
        self._cap_shown: str | None = None

    # -- the full copy --------------------------------------------------------------------------------
    def copy_progress(self, snap: CopySnapshot) -> None:
        with self._lock:
            if self._copy_done:
                return
            finished = all(c.finished for c in snap.collections)
            if self.tty:
                self._draw_bars(snap)
            elif finished or time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
                self._last_plain = time.monotonic()
                self._plain(self.copy_line(snap))
            if finished:
                self._copy_done = True
                self._stop_bars()

    @staticmethod
    def copy_line(snap: CopySnapshot) -> str:
        copied = sum(c.copied for c in snap.collections)
        expected = sum(c.expected for c in snap.collections)
        done = sum(c.finished for c in snap.collections)
        percent = 100.0 if done == len(snap.collections) else 100.0 * copied / max(expected, 1)
        left = ", done" if done == len(snap.collections) else (
            "" if snap.eta_s is None else f", about {format_duration(snap.eta_s)} left")
        return (f"full copy: {percent:.0f}% ({copied:,} of about {expected:,} documents; {done} of "
                f"{len(snap.collections)} collections done), {snap.docs_per_s:,.0f} docs/s{left}"
                f"{snap.cap_text()}")

    def _draw_bars(self, snap: CopySnapshot) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        if self._progress is None:
            # drawn when the copy's figures change (every PROGRESS_EVERY_S), not on a timer of its own
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.completed:>12,.0f} docs"), TextColumn("{task.fields[rate]:>10} docs/s"),
                TextColumn("{task.fields[left]}"),
                console=Console(file=self.stream), auto_refresh=False, transient=False,
                redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
        biggest = sorted(snap.collections, key=lambda c: -c.expected)
        rows = [(c.source_ns, [c]) for c in biggest[:MAX_BARS]]
        if len(biggest) > MAX_BARS:
            rows.append((f"{len(biggest) - MAX_BARS} more collections", biggest[MAX_BARS:]))
        width = max(len(name) for name, _ in rows)
        figures = []
        for name, members in rows:
            copied = sum(c.copied for c in members)
            expected = max(sum(c.expected for c in members), copied, 1)
            rate = copied / snap.seconds
            if all(c.finished for c in members):
                copied, left = expected, "done"
            else:
                left = f"about {format_duration((expected - copied) / rate)} left" if rate > 0 else ""
            figures.append((name, copied, expected, f"{rate:,.0f}", left))
        for name, copied, expected, rate, left in figures:
            if name not in self._tasks:  # rich draws as a row is added: its figures go in with it
                self._tasks[name] = self._progress.add_task(name.ljust(width), total=expected, completed=copied,
                                                            rate=rate, left=left)
        for name, copied, expected, rate, left in figures:
            self._progress.update(self._tasks[name], completed=copied, total=expected, rate=rate, left=left)
        if snap.cap != self._cap_shown:  # printed above the bars as the cap changes
            self._cap_shown = snap.cap
            self._progress.console.print(f"load cap on the copy: {snap.cap or 'none'}")
        self._progress.refresh()

    def _stop_bars(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- the sync --------------------------------------------------------------------------------------
    def sync_progress(self, line: str, ready: bool) -> None:
        if ready:
            line += " — approve with `mongo-migrate approve`"
        with self._lock:
            self._stop_bars()
            if not self.tty:
                self._plain(line)
                return
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            if self._live is None:
                self._live = Live(Text(line), console=Console(file=self.stream), auto_refresh=False,
                                  redirect_stdout=False, redirect_stderr=False)
                self._live.start()
            self._live.update(Text(line), refresh=True)

    def close(self) -> None:
        with self._lock:
            self._stop_bars()
            if self._live is not None:
                self._live.stop()
                self._live = None

    def _plain(self, line: str) -> None:
        print(re.sub(r"\s+", " ", line), file=self.stream, flush=True)
