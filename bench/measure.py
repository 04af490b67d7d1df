"""What the benchmarks share: run the real `mongo-migrate` and sample its memory from /proc."""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compile_project() -> None:
    """The project's modules compiled, as an install leaves them (`make install`; pip, for a regular
    install): a command timed here must not compile them at its start, as it would under
    PYTHONDONTWRITEBYTECODE after an edit of the sources. The folders are pyproject.toml's."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        folders = tomllib.load(f)["tool"]["setuptools"]["package-dir"].values()
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], cwd=ROOT, check=True)


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's resident memory from /proc (VmHWM: its peak so far; VmRSS: now), in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def add_data_set_args(ap: argparse.ArgumentParser, default_docs: int) -> None:
    """The generated data set's options, shared by the benchmarks that copy or compare one."""
    ap.add_argument("--docs", type=int, default=default_docs)
    ap.add_argument("--collections", type=int, default=4)
    ap.add_argument("--doc-bytes", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=4)


def data_set(args: argparse.Namespace) -> argparse.Namespace:
    """What follows from the options: n_per (documents per collection), colls (names), total."""
    args.n_per = args.docs // args.collections
    args.colls = [f"c{i}" for i in range(args.collections)]
    args.total = args.n_per * args.collections
    return args


def data_set_args(description: str, default_docs: int) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    add_data_set_args(ap, default_docs)
    return data_set(ap.parse_args())


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process on `cpus` (threads it starts later inherit it from theirs)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that ended since the listing
            pass


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuAccount:
    """CPU seconds (user + system) used between `start()` and `stop()` by named running processes, by
    this process and by its children that ended meanwhile (a command run with subprocess), from /proc
    and getrusage: where a measured second of work went, process by process."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.used: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()} | {
            "this process": own.ru_utime + own.ru_stime, "children": children.ru_utime + children.ru_stime}

    def start(self) -> CpuAccount:
        self._started = self._now()
        return self

    def stop(self) -> dict[str, float]:
        self.used = {k: v - self._started[k] for k, v in self._now().items()}
        return self.used


class CpuTimeline:
    """The CPU seconds of named processes, sampled while a command runs (`run_cli_json`), so that a
    stretch of it (a step of the migration) can be given its CPU process by process (`between`)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self.samples: list[tuple[float, dict[str, float]]] = []  # (time.perf_counter(), CPU s by name)
        self.started = self.ended = 0.0

    def sample(self, more: dict[str, int]) -> None:
        """One sample of every process (`more`: ones known only while the command runs)."""
        now: dict[str, float] = {}
        for name, pid in (self.pids | more).items():
            try:
                now[name] = cpu_seconds(pid)
            except OSError:  # ended: its last sample stands
                pass
        self.samples.append((time.perf_counter(), now))

    def _at(self, when: float, name: str) -> float:
        """A process's CPU seconds at `when`, between the samples around it (0 before it was seen)."""
        before = (self.samples[0][0], 0.0)
        for t, cpu in self.samples:
            if name not in cpu:
                continue
            if t >= when:
                span = t - before[0]
                return before[1] + (cpu[name] - before[1]) * ((when - before[0]) / span if span > 0 else 1.0)
            before = (t, cpu[name])
        return before[1]

    def between(self, start: float, end: float) -> dict[str, float]:
        names = {name for _, cpu in self.samples for name in cpu}
        return {name: self._at(end, name) - self._at(start, name) for name in sorted(names)}


def cpu_floor(used: dict[str, float], pinned: str | None = None) -> float:
    """The fewest wall seconds in which these CPU seconds fit on this process's CPUs, every one of them
    busy all the time; `pinned`: the process alone on a CPU of its own, everything else on the rest."""
    cpus = len(os.sched_getaffinity(0))
    if pinned is None:
        return sum(used.values()) / cpus
    return max(used[pinned], sum(v for k, v in used.items() if k != pinned) / cpus)


def wait_until_idle(pid: int, timeout: float = 300.0) -> float:
    """Wait until process `pid` uses under 5% of a core over a second (a Prefect server still digesting
    the events of the run before: with many collections that takes it seconds after the command has
    ended, and a run started meanwhile would share the cores with it); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.05:
            break
    return time.monotonic() - started


def _children(pid: int) -> list[int]:
    """The processes that `pid`'s main thread started (the CLI starts the temporary server there)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_cli_json(args: list[str], env: dict, ok_codes: tuple[int, ...] = (0,),
                 descendants_cpu: dict[int, float] | None = None,
                 timeline: CpuTimeline | None = None) -> tuple[dict, float, float, int]:
    """Run `mongo-migrate ARGS --json`; returns (its JSON, wall seconds, peak RSS MB, exit code).
    `descendants_cpu`: filled with the CPU seconds of each process the command started (the temporary
    Prefect server), as last seen while the command ran. `timeline`: sampled every 0.05 s, with the
    command as "command" and the first process it started (the temporary server) as "Prefect server"."""
    t = time.perf_counter()
    proc = subprocess.Popen([str(ROOT / ".venv/bin/mongo-migrate"), *args, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    if timeline is not None:
        timeline.started = t

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, rss_mb(proc.pid))
            children = _children(proc.pid)
            if descendants_cpu is not None:
                for child in children:
                    try:
                        descendants_cpu[child] = cpu_seconds(child)
                    except OSError:
                        pass
            if timeline is not None:
                timeline.sample({"command": proc.pid} | {"Prefect server": child for child in children[:1]})
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    if timeline is not None:
        timeline.sample({})
        timeline.ended = time.perf_counter()
    if proc.returncode not in ok_codes:
        sys.exit(f"mongo-migrate {args[0]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1]), time.perf_counter() - t, peak, proc.returncode


def prefect_server(home: Path, settings: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free port, as a Prefect user runs one (with `settings` in its
    environment); returns (process, API URL)."""
    from mongo_migrate.sandbox.mongod import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **(settings or {}), "PREFECT_HOME": str(home), "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([str(ROOT / ".venv/bin/prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(1200):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("the Prefect server did not start")
