"""The load cap from the Prefect UI: the Prefect Variable `mongo-migrate-throttle`, watched by the
flow process and copied onto the destination, where every process of the run reads the live cap
(tasks/throttle.py). The copy's and the sync's paths never call the Prefect API: only this thread does,
and a Prefect API that is away only delays a change made in the UI.

The Variable's value is JSON: `{"docs_per_s": 5000, "mb_per_s": 20, "sync_docs_per_s": 1000}` (the keys
of the spec's `throttle`, windows aside), `{"off": true}` (no cap at all), or `{}` / deleted (back to
the spec's caps and windows). It is the whole live cap: a key it leaves out does not cap. A value set
before the run is applied as the run starts; afterwards, each change of it (and `mongo-migrate throttle`
as well: the last change wins).
"""
from __future__ import annotations

import contextvars
import json
import logging
import threading

from pydantic import ValidationError

from mongo_migrate.blocks.spec import Caps, MigrationSpec, format_validation_error
from mongo_migrate.tasks.throttle import set_live

log = logging.getLogger("mongo_migrate.throttle")

VARIABLE = "mongo-migrate-throttle"
WATCH_EVERY_S = 1.0
_UNSET = object()


def live_cap_of(value) -> Caps | None:
    """The live cap a Variable value asks for (None: back to the spec); ValueError naming the key."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError:
            raise ValueError(f"Variable {VARIABLE}: not JSON") from None
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ValueError(f'Variable {VARIABLE}: give an object such as {{"docs_per_s": 5000}} or {{"off": true}}')
    if value.get("off") is True and len(value) == 1:
        return Caps()
    try:
        return Caps.model_validate(value)
    except ValidationError as exc:
        raise ValueError(format_validation_error(exc, f"Variable {VARIABLE}")) from None


class VariableWatcher:
    """Reads the Variable every WATCH_EVERY_S in a thread of its own; `stop()` as the run ends."""

    def __init__(self, spec: MigrationSpec, logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
        self.spec = spec
        self.log = logger or log
        self._stop = threading.Event()
        self._seen = _UNSET
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                        daemon=True, name="throttle-variable")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        from prefect.variables import Variable

        away = False
        while True:
            try:
                value = Variable.get(VARIABLE, default=None)
                away = False
            except Exception as exc:  # noqa: BLE001 - the Prefect API away: the cap stays as it is
                if not away:
                    self.log.warning("the Prefect Variable %s cannot be read (%s); the load cap stays as "
                                     "it is until it can", VARIABLE, type(exc).__name__)
                away = True
            else:
                self._follow(value)
            if self._stop.wait(WATCH_EVERY_S):
                return

    def _follow(self, value) -> None:
        if value == self._seen or (self._seen is _UNSET and value is None):
            self._seen = value
            return
        try:
            caps = live_cap_of(value)
        except ValueError as exc:
            self.log.warning("%s; the load cap stays as it is", exc)
            self._seen = value
            return
        try:
            set_live(self.spec, caps, by=f"Prefect Variable {VARIABLE}")
        except Exception as exc:  # noqa: BLE001 - the destination away: tried again at the next read
            self.log.warning("the load cap from the Prefect Variable %s is not set yet: %s", VARIABLE, exc)
            return
        self._seen = value
        self.log.info("load cap from the Prefect Variable %s: %s", VARIABLE,
                      "the spec's" if caps is None else (caps.model_dump(exclude_none=True) or "none"))
