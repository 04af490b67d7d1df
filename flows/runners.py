"""Where the full copy's range tasks and verification's tasks run: copy_options.runner as a Prefect
task runner, for flows/migrate.py `full_copy` and flows/verify.py `verify_plan`.

"threads" is a ThreadPoolTaskRunner in the flow's process. The Dask forms are prefect-dask's
DaskTaskRunner: a LocalCluster of N worker processes started for the step, or an existing cluster by
its scheduler's address. Prefect pickles each task with its arguments (the spec, a CollectionPlan, a
CopyRange: plain pydantic values) and the flow run's context, and the task run is recorded by the worker
itself through the Prefect API, so the workers must reach that API (PREFECT_API_URL) as well as both
deployments. Each worker process opens its own pooled clients (blocks/mongo.py open_client) and loads
endpoint blocks once (blocks/spec.py). A worker lost mid-range: Dask runs the range again on another
worker, which resumes from the range's checkpoint on the destination (tasks/copy.py).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from mongo_migrate.blocks.errors import RunnerUnavailable
from mongo_migrate.blocks.spec import DaskLocalRunner, MigrationSpec, forget_loaded_blocks
from mongo_migrate.tasks.precheck.connectivity import (DASK_CONNECT_TIMEOUT_S, dask_runner_problem,
                                                       unreachable_scheduler_remedy)

# the runner of an enclosing range_runner: a full run keeps one from its copy to its verification, so that
# a LocalCluster is started (its worker processes import Prefect and the project: seconds) only once
_open: ContextVar[TaskRunner | None] = ContextVar("mongo_migrate_range_runner", default=None)


@contextmanager
def range_runner(spec: MigrationSpec) -> Iterator[TaskRunner]:
    """The started task runner of copy_options.runner, stopped (a LocalCluster shut down) on leaving;
    inside another range_runner, that one.

    The thread pool and a LocalCluster both run `parallel_workers` ranges at once (a LocalCluster's
    threads are spread over its processes); an existing cluster runs as many as its workers have threads."""
    outer = _open.get()
    if outer is not None:
        yield outer
        return
    with _started_runner(spec) as runner:
        token = _open.set(runner)
        try:
            yield runner
        finally:
            _open.reset(token)


@contextmanager
def _started_runner(spec: MigrationSpec) -> Iterator[TaskRunner]:
    choice = spec.copy_options.runner
    workers = spec.copy_options.parallel_workers
    if choice == "threads":
        with ThreadPoolTaskRunner(max_workers=workers) as runner:
            yield runner
        return
    problem = dask_runner_problem(spec)
    if problem:
        raise RunnerUnavailable(f"copy_options.runner: {problem[0]}; {problem[1]}")
    from prefect_dask import DaskTaskRunner

    if isinstance(choice, DaskLocalRunner):
        n = choice.dask_local_workers
        runner = DaskTaskRunner(cluster_kwargs={
            "n_workers": n, "processes": True, "threads_per_worker": max(1, math.ceil(workers / n)),
            # the dashboard on any free port: its fixed one (8787) would clash with another run's
            "dashboard_address": ":0",
        })
    else:
        runner = DaskTaskRunner(address=choice.dask_address,
                                client_kwargs={"timeout": DASK_CONNECT_TIMEOUT_S})
    with runner:
        try:
            client = runner.client  # connects (or starts the LocalCluster) now, not at the first task
        except (OSError, TimeoutError) as exc:
            raise RunnerUnavailable(f"copy_options.runner: the Dask scheduler at {choice.dask_address} "
                                    f"cannot be reached ({exc}); "
                                    f"{unreachable_scheduler_remedy(choice.dask_address)}") from None
        # a long-lived worker loads the endpoint blocks afresh for this run, as the flow's process does
        # (an edited block, a rotated password, takes effect at the next run there too)
        client.run(forget_loaded_blocks)
        yield runner
