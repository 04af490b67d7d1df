"""The project's Prefect deployments, registered on the server PREFECT_API_URL names.

    python -m mongo_migrate.deployments.deploy [--pool NAME] [--image IMAGE] [--timezone ZONE]
                                 [--off-peak-cron "0 2 * * *"]

Registers the block types (MongoEndpoint, SlackNotifier), creates the work pool when it is missing,
and creates or updates three deployments:

- migrate/on-demand   the whole migration, started from the UI or `prefect deployment run`
- migrate/off-peak    the same, on a cron schedule in a time zone (02:00 local time by default)
- precheck/on-demand  only the precheck; writes nothing

Their default parameters name the endpoints by block: save MongoEndpoint blocks called
`migration-source` and `migration-destination` (or pick other block names in the run form).

With the default process pool the flows run from this checkout (a worker started here). For a docker
or kubernetes pool pass `--image`: an image with this project installed (`pip install .`); runs import
the flows by module path (mongo_migrate.flows.migrate.migrate). Nothing is built or pushed here.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mongo_migrate.blocks.errors import DeployError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POOL = "mongo-migrate"
OFF_PEAK_CRON = "0 2 * * *"
SOURCE_BLOCK = "migration-source"
DESTINATION_BLOCK = "migration-destination"
BLOCK_MODULES = ("mongo_migrate.blocks.mongo", "mongo_migrate.blocks.slack")
# (flow entrypoint, deployment name, scheduled?)
DEPLOYMENTS = (
    ("flows/migrate.py:migrate", "on-demand", False),
    ("flows/migrate.py:migrate", "off-peak", True),
    ("flows/migrate.py:precheck", "on-demand", False),
)


def default_spec() -> dict:
    """The run form's starting point: endpoints by block name, a full migration of everything."""
    return {
        "source": {"block": SOURCE_BLOCK},
        "destination": {"block": DESTINATION_BLOCK},
        "migration_types": ["full"],
    }


def local_timezone() -> str:
    """The IANA name of this machine's time zone ("UTC" when it cannot be told)."""
    if os.environ.get("TZ") and _valid_zone(os.environ["TZ"]):
        return os.environ["TZ"]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target and _valid_zone(name := target.split("zoneinfo/", 1)[1]):
            return name
    except OSError:
        pass
    return "UTC"


def _valid_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
        return True
    except (ZoneInfoNotFoundError, ValueError):
        return False


def off_peak_schedule(cron: str = OFF_PEAK_CRON, timezone: str | None = None):
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron

    timezone = timezone or local_timezone()
    if not _valid_zone(timezone):
        raise DeployError(f"--timezone {timezone!r} is not an IANA time zone (e.g. Europe/Paris)")
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError:
        raise DeployError(f"--off-peak-cron {cron!r} is not a cron expression (e.g. '0 2 * * *')") from None
    return Cron(cron, timezone=timezone)


def register_blocks() -> list[str]:
    """What `prefect block register -m <module>` does, for each block module of the project."""
    from prefect.blocks.core import Block

    registered = []
    for name in BLOCK_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, Block) and value is not Block
                    and value.__module__ == module.__name__):
                value.register_type_and_schema()
                registered.append(value.get_block_type_name())
    return registered


def check_work_pool(name: str, image: str | None) -> None:
    """Create the default process pool when it is missing; any other pool must exist already.

    Docker and kubernetes pools get their job template from their worker package (prefect-docker,
    prefect-kubernetes), so they are created with `prefect work-pool create`, not here.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            if image:
                raise DeployError(
                    f"work pool {name!r} does not exist: create it first, e.g. `prefect work-pool "
                    f"create {name} --type docker` (or --type kubernetes)") from None
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return
    if pool.type == "process" and image:
        raise DeployError(f"work pool {name!r} is a process pool: it runs this checkout, drop --image")
    if pool.type != "process" and not image:
        raise DeployError(f"work pool {name!r} ({pool.type}) runs flows in an image: give --image")


def build_deployments(*, timezone: str | None = None, cron: str = OFF_PEAK_CRON,
                      image: str | None = None) -> list:
    from prefect import Flow
    from prefect.deployments.runner import EntrypointType

    schedule = off_peak_schedule(cron, timezone)
    deployments = []
    for entrypoint, name, scheduled in DEPLOYMENTS:
        if image:
            # the image has the project installed: runs import the flow by module path
            path, _, attr = entrypoint.partition(":")
            module = importlib.import_module("mongo_migrate." + path.removesuffix(".py").replace("/", "."))
            flow = getattr(module, attr)
            options = {"entrypoint_type": EntrypointType.MODULE_PATH}
        else:
            # process pool: the worker runs the flow from this checkout
            flow = Flow.from_source(str(ROOT), entrypoint)
            options = {}
        deployments.append(flow.to_deployment(
            name=name,
            parameters={"spec": default_spec()},
            schedules=[schedule] if scheduled else None,
            description=_describe(flow.name, name, schedule if scheduled else None),
            tags=["mongo-migrate"],
            **options,
        ))
    return deployments


def _describe(flow_name: str, name: str, schedule) -> str:
    what = "Only the precheck; writes nothing." if flow_name == "precheck" else \
        "Full (and incremental) migration."
    if schedule is None:
        return f"{what} Start it from the UI (Run > Custom run) or `prefect deployment run`."
    return f"{what} Runs at '{schedule.cron}' in {schedule.timezone}; pause the schedule when done."


def deploy_all(*, pool: str = DEFAULT_POOL, image: str | None = None, timezone: str | None = None,
               cron: str = OFF_PEAK_CRON) -> list:
    """Register blocks, ensure the pool, create or update the deployments; returns their ids."""
    from prefect import deploy

    deployments = build_deployments(timezone=timezone, cron=cron, image=image)
    check_work_pool(pool, image)
    register_blocks()
    kwargs = {"image": image, "build": False, "push": False} if image else {}
    ids = deploy(*deployments, work_pool_name=pool, print_next_steps_message=False,
                 ignore_warnings=True, **kwargs)
    schedule_upcoming_runs([i for i, d in zip(ids, deployments) if d.schedules])
    return ids


def schedule_upcoming_runs(deployment_ids: list) -> None:
    """Create the next scheduled runs now, as the server's scheduler would within a minute.

    A changed schedule drops the runs of the old one; this makes the new ones show in the UI (and
    in `prefect deployment ls`) straight away.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for deployment_id in deployment_ids:
            client.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id},
                           json={}).raise_for_status()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mongo_migrate.deployments.deploy",
                                description=__doc__.strip().splitlines()[0])
    p.add_argument("--pool", default=DEFAULT_POOL, help="work pool (default %(default)s, a process "
                   "pool created when missing; a docker or kubernetes pool must exist)")
    p.add_argument("--image", help="image with this project installed, for a docker or kubernetes pool")
    p.add_argument("--timezone", help="time zone of the off-peak schedule (default: this machine's)")
    p.add_argument("--off-peak-cron", default=OFF_PEAK_CRON, help="default %(default)r")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = _parser().parse_args(argv)
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        print("deploy: error: PREFECT_API_URL is not set: point it at a Prefect server "
              "(e.g. http://127.0.0.1:4200/api) or run `make serve`", file=sys.stderr)
        return 2
    try:
        deploy_all(pool=args.pool, image=args.image,
                   timezone=args.timezone, cron=args.off_peak_cron)
    except DeployError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the server unreachable, a refused request: one line, no traceback
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"deploy: error: {text} (server {api})", file=sys.stderr)
        return 1
    tz = args.timezone or local_timezone()
    print(f"deployed to {api}: migrate/on-demand, migrate/off-peak ('{args.off_peak_cron}' {tz}), "
          f"precheck/on-demand on work pool {args.pool!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
