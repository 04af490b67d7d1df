"""The migration spec: one pydantic model read by the CLI, the Prefect UI form and the flows.

This module is the one place that knows what a valid spec is. Errors name the key to fix.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, SecretStr, Tag, ValidationError,
                      field_validator, model_validator)

from mongo_migrate.blocks.errors import SpecError
from mongo_migrate.blocks.mongo import MongoConnection, MongoEndpoint

if TYPE_CHECKING:
    from mongo_migrate.blocks.slack import SlackNotifier

SYSTEM_DATABASES = ("admin", "local", "config")
# the destination database where the migration keeps its own state (see README, "State")
META_DATABASE = "mongo_migrate_meta"
DB_NAME_FORBIDDEN = set('/\\. "$*<>:|?\0')
MAX_DB_NAME_BYTES = 63
MAX_NAMESPACE_BYTES = 255


def database_name_problem(name: str) -> str | None:
    if not name:
        return "database name is empty"
    bad = sorted(set(name) & DB_NAME_FORBIDDEN)
    if bad:
        return f"database name {name!r} contains {''.join(bad)!r}, which MongoDB does not allow"
    if len(name.encode()) > MAX_DB_NAME_BYTES:
        return f"database name {name!r} is longer than {MAX_DB_NAME_BYTES} bytes"
    return None


def collection_name_problem(name: str) -> str | None:
    if not name:
        return "collection name is empty"
    if "$" in name or "\0" in name:
        return f"collection name {name!r} contains '$' or a null character"
    if name.startswith("system."):
        return f"collection name {name!r} is reserved (system.*)"
    return None


# MongoEndpoint and SlackNotifier blocks loaded in this process, by block type and name: each is loaded
# from the Prefect API once per run (forget_loaded_blocks() as a run starts), then never again. The sync
# resolves its endpoints for every batch of changes; a load each time (~40 ms, more to a remote API) held
# it to ~30 changes/s, and a Prefect API that is down for a minute must not stop it (the databases are all
# it needs), nor keep a delay alarm or a failure from reaching Slack. Kept in this process's memory only:
# an endpoint as its plain connection settings, nothing Prefect stores.
_loaded_blocks: dict[tuple[str, str], Any] = {}
_loaded_blocks_lock = threading.Lock()


def forget_loaded_blocks() -> None:
    """Load MongoEndpoint and SlackNotifier blocks afresh: called as a run starts, so an edited block
    (a rotated password, another webhook) takes effect at the next run, and a resumed run, of the spec."""
    with _loaded_blocks_lock:
        _loaded_blocks.clear()


def _loaded_block(block_class: type, name: str, keep: Callable[[Any], Any] = lambda block: block) -> Any:
    """keep(the saved block `name`), loaded once per run (above); SpecError when no such block is saved."""
    key = (block_class.__name__, name)
    with _loaded_blocks_lock:
        kept = _loaded_blocks.get(key)
    if kept is None:
        try:
            kept = keep(block_class.load(name))
        except ValueError as exc:
            raise SpecError(f"{block_class.__name__} block {name!r} not found: save it first") from exc
        with _loaded_blocks_lock:
            kept = _loaded_blocks.setdefault(key, kept)
    return kept


class EndpointSpec(MongoConnection):
    """A deployment given inline (URI and options) or by the name of a saved MongoEndpoint block."""

    block: str | None = Field(
        None, title="MongoEndpoint block",
        description="Name of a saved MongoEndpoint block; when set, the block's settings are used.",
    )
    password_env: str | None = Field(
        None, title="Password environment variable",
        description="Read the password from this environment variable where the flow runs.",
    )
    storage_gb: float | None = Field(
        None, gt=0, title="Declared storage (GB)",
        description="Capacity of a managed destination, checked by the precheck.",
    )

    @model_validator(mode="after")
    def _uri_or_block(self) -> "EndpointSpec":
        if not self.uri and not self.block:
            raise ValueError("give either uri or block")
        if self.uri and self.block:
            raise ValueError("give uri or block, not both")
        if self.uri and not self.uri.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("uri must start with mongodb:// or mongodb+srv://")
        return self

    def resolve(self) -> MongoConnection:
        """Plain connection settings, with the block loaded and the environment read."""
        if self.block:
            conn = _loaded_block(MongoEndpoint, self.block, lambda endpoint: endpoint.connection())
        else:
            fields = {name: getattr(self, name) for name in MongoConnection.model_fields}
            conn = MongoConnection.model_validate(fields)
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise SpecError(f"environment variable {self.password_env} (password_env) is not set")
            conn = conn.model_copy(update={"password": SecretStr(value)})
        return conn

    def display(self) -> str:
        return f"block {self.block}" if self.block else super().display()


class ObjectSelection(BaseModel):
    """A database to migrate, whole or some of its collections."""

    model_config = ConfigDict(extra="forbid")
    database: str = Field(title="Database", description="Name of a source database.")
    collections: list[str] | None = Field(
        None, title="Collections", description="Only these collections (and views); all when omitted."
    )

    @field_validator("database")
    @classmethod
    def _valid_database(cls, v: str) -> str:
        problem = database_name_problem(v)
        if problem:
            raise ValueError(problem)
        if v in ("admin", "local"):
            raise ValueError(f"the {v} database cannot be migrated")
        if v == META_DATABASE:
            raise ValueError(f"{META_DATABASE} is mongo-migrate's own state database")
        return v

    @field_validator("collections")
    @classmethod
    def _valid_collections(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("collections is empty: omit it to select the whole database")
        for name in v:
            problem = collection_name_problem(name)
            if problem:
                raise ValueError(problem)
        if len(set(v)) != len(v):
            raise ValueError("a collection is listed twice")
        return v


# what a Dask runner needs besides the project: the extra that installs prefect-dask (and distributed)
DASK_INSTALL = "pip install 'mongo-migrate[dask]'"


class DaskLocalRunner(BaseModel):
    """A Dask LocalCluster of N worker processes on the machine the flow runs on, for this run only."""

    model_config = ConfigDict(extra="forbid", title="Dask LocalCluster")
    dask_local_workers: int = Field(
        ge=1, le=64, title="Dask worker processes",
        description="Worker processes of a LocalCluster started for the run (needs prefect-dask: "
        f"{DASK_INSTALL}).",
    )


class DaskAddressRunner(BaseModel):
    """An existing Dask cluster, by its scheduler's address."""

    model_config = ConfigDict(extra="forbid", title="Existing Dask cluster")
    dask_address: str = Field(
        title="Dask scheduler address",
        description="tcp://host:8786 of a running Dask scheduler; its workers need the project installed "
        f"({DASK_INSTALL}) and must reach both deployments and the Prefect API.",
        examples=["tcp://dask-scheduler:8786"],
    )

    @field_validator("dask_address")
    @classmethod
    def _address(cls, v: str) -> str:
        from urllib.parse import urlsplit

        v = v.strip()
        if "://" not in v:
            v = "tcp://" + v  # Dask's own default protocol
        parts = urlsplit(v)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None or parts.path:
            raise ValueError(f"{v!r} is not a Dask scheduler address: give tcp://host:port (e.g. "
                             "tcp://dask-scheduler:8786)")
        return v


def _runner_shape(value: object) -> str | None:
    """Which of the three runner forms a value is meant to be (None: none of them)."""
    if isinstance(value, (DaskLocalRunner, DaskAddressRunner)):
        return "dask_local_workers" if isinstance(value, DaskLocalRunner) else "dask_address"
    if value == "threads":
        return "threads"
    if isinstance(value, dict):
        keys = [k for k in ("dask_local_workers", "dask_address") if k in value]
        return keys[0] if len(keys) == 1 else None  # any other key is then refused by name
    return None


# copy_options.runner: where the full copy's range tasks and verification's run. A tagged union chosen
# by shape, so that a bad value gets one error about its own form, not one per form
RUNNER_TAGS = ("threads", "dask_local_workers", "dask_address")
RunnerChoice = Annotated[
    Union[Annotated[Literal["threads"], Tag("threads")],
          Annotated[DaskLocalRunner, Tag("dask_local_workers")],
          Annotated[DaskAddressRunner, Tag("dask_address")]],
    Discriminator(_runner_shape, custom_error_type="runner",
                  custom_error_message='give "threads", {dask_local_workers: N} or '
                  '{dask_address: "tcp://host:8786"}'),
]


def _choice_of_forms(schema: dict) -> None:
    """The Prefect run form offers a choice between anyOf options; a tagged union's schema is oneOf."""
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")


class CopyOptions(BaseModel):
    """Tuning of the full copy; the defaults suit most deployments."""

    model_config = ConfigDict(extra="forbid")
    parallel_workers: int = Field(
        4, ge=1, le=64, title="Parallel copy workers",
        description="Collections (or ranges of big ones) copied at the same time.",
    )
    batch_docs: int = Field(
        2000, ge=1, le=100_000, title="Documents per insert batch",
        description="Most documents read and inserted in one batch (a batch never exceeds 16 MB).",
    )
    range_docs: int = Field(
        250_000, ge=1000, title="Documents per copy range",
        description="Collections larger than this are split into _id ranges copied in parallel.",
    )
    drop_existing_targets: bool = Field(
        False, title="Drop existing target collections",
        description="Drop target collections that already hold data instead of failing the precheck.",
    )
    on_document_error: Literal["fail", "skip"] = Field(
        "fail", title="When the destination refuses a document",
        description="fail: stop, naming the namespace and _id. skip: leave it out, record it in "
        "mongo_migrate_meta.skipped_documents and go on (verification lists it as skipped).",
    )
    runner: RunnerChoice = Field(
        "threads", title="Where the copy runs",
        description='"threads": a thread pool of parallel_workers in the flow\'s process. '
        '{"dask_local_workers": N}: a Dask LocalCluster of N processes (parallel_workers ranges at once '
        'across them). {"dask_address": "tcp://host:8786"}: an existing Dask cluster (as many ranges at '
        f'once as its workers have threads). Dask needs prefect-dask ({DASK_INSTALL}) and a Prefect '
        "server (PREFECT_API_URL) the workers reach. Verification runs where the copy does.",
        json_schema_extra=_choice_of_forms,
    )


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(s|m|h|d)?\s*", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value):
    """Seconds from a number or a string such as "90", "90s", "15m", "24h", "2d"."""
    if isinstance(value, bool):
        raise ValueError("not a duration: give seconds, or a number with s, m, h or d (e.g. 24h)")
    if isinstance(value, (int, float)):
        return value
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("not a duration: give seconds, or a number with s, m, h or d (e.g. 24h)")
    return float(match.group(1)) * _UNIT_S[(match.group(2) or "s").lower()]


# seconds, written as a number or with a unit ("15m", "24h") in a spec file or form
Duration = Annotated[float, BeforeValidator(parse_duration)]


class IncrementalOptions(BaseModel):
    """The incremental sync after the full copy, and the cutover; the defaults suit most deployments."""

    model_config = ConfigDict(extra="forbid")
    ready_delay_s: float = Field(
        2.0, gt=0, le=3600, title="Ready-for-cutover delay (s)",
        description="At or under this delay the destination counts as not delayed: the run says "
        "'ready for cutover' and waits for approval.",
    )
    approval_timeout_s: int = Field(
        7 * 24 * 3600, ge=1, title="Approval timeout (s)",
        description="How long to wait for cutover approval (default 7 days); then the run ends with "
        "the sync state saved, and running the spec again continues the sync.",
    )
    checkpoint_interval_s: float = Field(
        5.0, gt=0, le=600, title="Checkpoint interval (s)",
        description="How often the position of the last applied change is saved on the destination; "
        "a restarted run replays at most this much.",
    )
    apply_workers: int = Field(
        4, ge=1, le=64, title="Parallel apply workers",
        description="Writes of one batch applied at the same time (each document keeps its order).",
    )
    batch_events: int = Field(
        5000, ge=1, le=100_000, title="Changes per batch",
        description="Most change events read before their writes are applied in one round.",
    )
    block_source_writes_at_cutover: bool = Field(
        False, title="Block source writes at cutover",
        description="After approval, block user writes on the source (setUserWriteBlockMode; the "
        "account needs the privilege) so that nothing is written after the drain. Otherwise stop "
        "the application's writes yourself when you approve.",
    )
    verify_sample_docs: int = Field(
        100, ge=0, le=100_000, title="Documents compared per collection at cutover",
        description="Besides the counts, this many random documents per collection are compared "
        "byte for byte after the drain.",
    )
    delay_alarm_s: Duration | None = Field(
        None, gt=0, title="Delay alarm (s)",
        description="Tell Slack when the sync stays further behind than this (for delay_alarm_for_s), "
        "and again when it has caught up; seconds or e.g. '5m'. Empty: no delay alarm.",
        examples=[300],
    )
    delay_alarm_for_s: Duration = Field(
        60, ge=0, title="Delay alarm after (s)",
        description="How long the delay must stay over delay_alarm_s before the alarm is sent.",
    )
    oplog_window_alarm_s: Duration = Field(
        24 * 3600, gt=0, title="Oplog window warning (s)",
        description="Tell Slack when the time left before the source's oplog overwrites the sync's "
        "position, at the current write rate, falls under this; seconds or e.g. '24h'.",
    )



# -- the load cap (tasks/throttle.py applies it) ------------------------------------------------------
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def clock_minutes(value: str, key: str) -> int:
    """Minutes after midnight from "HH:MM" ("24:00" too, as an end)."""
    if value == "24:00" and key == "end":
        return 24 * 60
    match = _CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError('not a time of day: give HH:MM from 00:00 to 23:59, e.g. "08:00"')
    return int(match.group(1)) * 60 + int(match.group(2))


# a cap: positive, a number (a string that is not one is refused by pydantic, naming the key)
Rate = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Caps(BaseModel):
    """Caps of the source's load; an omitted one does not cap."""

    model_config = ConfigDict(extra="forbid")
    docs_per_s: Rate | None = Field(
        None, title="Copy: documents per second",
        description="The full copy reads at most this many documents per second, all workers together.")
    mb_per_s: Rate | None = Field(
        None, title="Copy: MB per second",
        description="The full copy reads at most this many MB (10^6 bytes) per second, all workers together.")
    sync_docs_per_s: Rate | None = Field(
        None, title="Sync: documents per second",
        description="The incremental sync writes at most this many documents per second.")
    sync_mb_per_s: Rate | None = Field(
        None, title="Sync: MB per second",
        description="The incremental sync writes at most this many MB per second.")

    def any(self) -> bool:
        return any(getattr(self, k) is not None for k in Caps.model_fields)


class ThrottleWindow(Caps):
    """A daily time window in which its own caps replace the top-level ones."""

    start: str = Field(title="Start", description="HH:MM, local time in timezone", examples=["08:00"])
    end: str = Field(title="End", description="HH:MM (exclusive); before start: the window runs past "
                     "midnight", examples=["20:00"])
    timezone: str = Field("UTC", title="Time zone", description="IANA name, e.g. Europe/Paris",
                          examples=["Europe/Paris"])

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str, info) -> str:
        clock_minutes(v, info.field_name)
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}: give an IANA name such as Europe/Paris or UTC") from None
        return v

    @model_validator(mode="after")
    def _window(self) -> "ThrottleWindow":
        if clock_minutes(self.start, "start") == clock_minutes(self.end, "end") % (24 * 60):
            raise ValueError(f"start and end are both {self.start}: a window needs a length")
        if not self.any():
            raise ValueError("a window caps nothing: give docs_per_s, mb_per_s, sync_docs_per_s or "
                             "sync_mb_per_s")
        return self

    def label(self) -> str:
        return f"{self.start}-{self.end} {self.timezone}"

    def contains(self, when: datetime) -> bool:
        """Is the instant `when` (timezone-aware) inside the window, in the window's own time zone?"""
        from zoneinfo import ZoneInfo

        local = when.astimezone(ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute
        start, end = clock_minutes(self.start, "start"), clock_minutes(self.end, "end")
        if start < end:
            return start <= minute < end
        return minute >= start or minute < end  # past midnight


def overlapping_windows(windows: list[ThrottleWindow]) -> tuple[int, int] | None:
    """The first two windows that are ever open at the same minute, or None. Two daily windows
    overlap when one opens inside the other; windows in different time zones move against each
    other with daylight saving time, so their openings on days of January and of July are tried."""
    from zoneinfo import ZoneInfo

    for i, w in enumerate(windows):
        minutes = clock_minutes(w.start, "start")
        for day in (datetime(2026, 1, 14), datetime(2026, 1, 15), datetime(2026, 7, 14), datetime(2026, 7, 15)):
            opens = (day + timedelta(minutes=minutes)).replace(tzinfo=ZoneInfo(w.timezone))
            for j, other in enumerate(windows):
                if j != i and other.contains(opens):
                    return min(i, j), max(i, j)
    return None


def active_window(windows: list[ThrottleWindow], when: datetime) -> ThrottleWindow | None:
    return next((w for w in windows if w.contains(when)), None)


class ThrottleSpec(Caps):
    """The load cap on the source; `mongo-migrate throttle` changes it while the migration runs."""

    windows: list[ThrottleWindow] = Field(
        default_factory=list, title="Time windows",
        description="Daily windows with caps of their own (e.g. business hours); outside them the "
        "top-level caps apply (none: full speed).")

    @field_validator("windows")
    @classmethod
    def _apart(cls, v: list[ThrottleWindow]) -> list[ThrottleWindow]:
        pair = overlapping_windows(v)
        if pair is not None:
            i, j = pair
            raise ValueError(f"windows {i} ({v[i].label()}) and {j} ({v[j].label()}) overlap")
        return v


class SlackSettings(BaseModel):
    """Where Slack messages go: an incoming-webhook URL, or a saved SlackNotifier block."""

    model_config = ConfigDict(extra="forbid")
    webhook_url: SecretStr | None = Field(
        None, title="Incoming-webhook URL",
        description="https://hooks.slack.com/services/... (a secret: masked in stored flow parameters). "
        "Every event is sent; use a SlackNotifier block to choose events or to post with a bot token.",
    )
    block: str | None = Field(
        None, title="SlackNotifier block",
        description="Name of a saved SlackNotifier block (webhook or bot token, events to send).",
    )

    @model_validator(mode="after")
    def _webhook_or_block(self) -> "SlackSettings":
        if (self.webhook_url is None) == (self.block is None):
            raise ValueError("give either webhook_url or block")
        url = self.webhook_url.get_secret_value() if self.webhook_url is not None else ""
        if self.webhook_url is not None and not url.startswith(("https://", "http://")):
            raise ValueError("webhook_url must be an http(s) URL")
        return self

    def resolve(self) -> "SlackNotifier":
        from mongo_migrate.blocks.slack import SlackNotifier

        if self.block:
            return _loaded_block(SlackNotifier, self.block)
        return SlackNotifier(webhook_url=self.webhook_url)


class Notifications(BaseModel):
    """Who hears about the migration."""

    model_config = ConfigDict(extra="forbid")
    slack: SlackSettings | None = Field(
        None, title="Slack",
        description="Precheck failed (always), migration failed, ready for cutover, finished.",
    )


class MigrationSpec(BaseModel):
    """What to migrate, from where to where."""

    # hide_input_in_errors: a validation error never repeats the input, which may hold a password
    model_config = ConfigDict(extra="forbid", title="Migration spec", hide_input_in_errors=True)

    source: EndpointSpec = Field(title="Source", description="The deployment to migrate from.")
    destination: EndpointSpec = Field(title="Destination", description="The deployment to migrate to.")
    migration_types: list[Literal["full", "incremental"]] = Field(
        default_factory=lambda: ["full"], title="Migration types",
        description="full: copy existing data; incremental: then keep applying changes until cutover.",
    )
    objects: list[ObjectSelection] = Field(
        default_factory=list, title="Objects",
        description="Databases and collections to migrate; every database but admin, local and "
        "config when empty.",
    )
    name_mapping: dict[str, str] = Field(
        default_factory=dict, title="Name mapping",
        description="Rename on the destination, as JSON: {\"db\": \"new_db\", "
        "\"db.coll\": \"other_db.new_coll\"}.",
        examples=[{"shop": "shop_v2", "crm.customers": "sales.clients"}],
    )
    copy_options: CopyOptions = Field(
        default_factory=CopyOptions, title="Copy options",
        description="Tuning of the full copy; the defaults suit most deployments.",
    )
    incremental_options: IncrementalOptions = Field(
        default_factory=IncrementalOptions, title="Incremental sync and cutover",
        description="Used when migration_types has incremental: delay threshold, approval timeout, "
        "checkpoints, parallelism, write blocking at cutover.",
    )
    notifications: Notifications = Field(
        default_factory=Notifications, title="Notifications",
        description="Slack messages about the migration.",
    )
    throttle: ThrottleSpec = Field(
        default_factory=ThrottleSpec, title="Load cap",
        description="Caps of the copy's reads and the sync's writes, with daily windows; "
        "mongo-migrate throttle SPEC changes them while the migration runs.",
    )

    @field_validator("migration_types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("choose at least one of: full, incremental")
        if "full" not in v:
            raise ValueError("incremental migration needs full migration first: use [full, incremental]")
        return list(dict.fromkeys(v))

    @field_validator("name_mapping")
    @classmethod
    def _mapping(cls, v: dict[str, str]) -> dict[str, str]:
        targets: dict[str, str] = {}
        for src, dst in v.items():
            if "." in src:
                if "." not in dst:
                    raise ValueError(f"{src!r} is a collection; map it to 'database.collection', not {dst!r}")
            elif "." in dst:
                raise ValueError(f"{src!r} is a database; map it to a database name, not {dst!r}")
            for name in (src, dst):
                db, _, coll = name.partition(".")
                problem = database_name_problem(db) or (coll and collection_name_problem(coll))
                if problem:
                    raise ValueError(f"{name!r}: {problem}")
            if src == dst:
                raise ValueError(f"{src!r} is mapped onto itself: remove that entry")
            if dst.partition(".")[0] in ("admin", "local", "config", META_DATABASE):
                raise ValueError(f"{src!r} is mapped into the reserved database {dst.partition('.')[0]!r}")
            if dst in targets:
                raise ValueError(f"{targets[dst]!r} and {src!r} are both mapped to {dst!r}")
            targets[dst] = src
        return v

    @model_validator(mode="after")
    def _selection(self) -> "MigrationSpec":
        seen: set[str] = set()
        for obj in self.objects:
            if obj.database in seen:
                raise ValueError(f"database {obj.database!r} is listed twice in objects")
            seen.add(obj.database)
        return self

    @property
    def incremental(self) -> bool:
        return "incremental" in self.migration_types

    def digest(self) -> str:
        """Identifies what this spec migrates (not how fast), to recognise a rerun of it."""
        what = self.model_dump(mode="json", include={"objects", "name_mapping", "migration_types"})
        what["source"] = self.source.display()
        what["destination"] = self.destination.display()
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def format_validation_error(exc: ValidationError, source: str = "spec") -> str:
    """One line per problem, each naming the key: 'spec.yaml: objects.0.database: Field required'."""
    lines = []
    for err in exc.errors():
        # the tag of a runner form (copy_options.runner.dask_address.dask_address) is not a key
        loc = [str(p) for p in err["loc"] if p not in ("function-after",)]
        loc = ".".join(p for i, p in enumerate(loc) if not (i and loc[i - 1] == "runner" and p in RUNNER_TAGS))
        loc = loc or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}")
    return "; ".join(lines)


def parse_spec(data: object, source: str = "spec") -> MigrationSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping with source, destination, ...")
    try:
        return MigrationSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None


def load_spec(path: str | os.PathLike) -> MigrationSpec:
    """Read a spec from a YAML or JSON file."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{p}: no such spec file") from None
    except OSError as exc:
        raise SpecError(f"{p}: cannot read the spec file ({exc.strerror})") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise SpecError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}{at}") from None
    return parse_spec(data, p.name)
