"""`spec_flow`: Prefect's `flow` decorator for the flows that take the MigrationSpec.

A flow run's parameters are stored with it as JSON. Prefect makes that JSON with FastAPI's
`jsonable_encoder`, and importing FastAPI for it took 0.2-0.3 s of every command's start here (a
20,000-document run lasts 5-6 s). What that encoder returns for a pydantic model is the model's JSON
dump by alias, so these flows store the dump itself: the same JSON (tests/test_spec_flow.py compares
the two), passwords masked as before. A JSON scalar (a float, a string, None) is stored as it is;
anything else goes to Prefect's own serializer.
"""
from __future__ import annotations

from typing import Any

from prefect import Flow
from pydantic import BaseModel

_SCALARS = (str, int, float, bool, type(None))


class SpecFlow(Flow):
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
