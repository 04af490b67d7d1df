"""`spec_flow`: Prefect's `flow` decorator for the flows that take the MigrationSpec.

A flow run's parameters are stored with it as JSON. Prefect makes that JSON with FastAPI's
`jsonable_encoder`, and importing FastAPI for it took 0.2-0.3 s of every command's start here (a
20,000-document run lasts 5-6 s). What that encoder returns for a pydantic model is the model's JSON
dump by alias, so these flows store the dump itself: the same JSON (tests/test_spec_flow.py compares
the two), passwords masked as before. A JSON scalar (a float, a string, None) is stored as it is;
anything else goes to Prefect's own serializer.

Prefect's `Flow.__init__` also builds the JSON schema of the flow's parameters at once, which for the
spec is pydantic walking the whole MigrationSpec: 0.13 s (quiet) to 0.5 s (loaded) of every command's
start here for the four spec flows, for a schema no run reads (a deployment builds its own,
`RunnerDeployment.from_flow`). These flows build it when `flow.parameters` is first read, the same
schema (tests/test_spec_flow.py).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import prefect.flows
from prefect import Flow
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel

_SCALARS = (str, int, float, bool, type(None))
_constructing = threading.Lock()


class SpecFlow(Flow):
    def __init__(self, fn: Callable[..., Any], **options: Any) -> None:
        # Flow.__init__ calls prefect.flows.parameter_schema(fn); for this fn it answers None, "not built
        # yet" (a schema is never None; None also survives a pickled flow, where a sentinel object would not)
        with _constructing:
            prefect_schema = prefect.flows.parameter_schema

            def schema_later(f: Callable[..., Any]) -> Any:
                return None if f is fn else prefect_schema(f)

            prefect.flows.parameter_schema = schema_later
            try:
                super().__init__(fn, **options)
            finally:
                prefect.flows.parameter_schema = prefect_schema

    @property
    def parameters(self) -> Any:
        if self._parameters is None:
            self._parameters = parameter_schema(self.fn)
        return self._parameters

    @parameters.setter
    def parameters(self, value: Any) -> None:
        self._parameters = value

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        others = {k: v for k, v in parameters.items() if not isinstance(v, (BaseModel, *_SCALARS))}
        serialized = super().serialize_parameters(others) if others else {}
        for k, v in parameters.items():
            if isinstance(v, BaseModel):
                serialized[k] = v.model_dump(mode="json", by_alias=True)
            elif isinstance(v, _SCALARS):
                serialized[k] = v
        return {k: serialized[k] for k in parameters if k in serialized}  # in the signature's order


def spec_flow(**options: Any):
    """`@spec_flow(name=..., description=...)` where `@flow(...)` would be."""
    return lambda fn: SpecFlow(fn, **options)
