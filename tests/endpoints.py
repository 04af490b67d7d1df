"""The same fault test against other endpoints: `endpoints` is a fixture parametrized (indirectly) by

- "6.0.5": the session's 6.0.5 source, endpoints given by URI in the spec (what the tests did before);
- "4.2.6": the shared 4.2.6 single-node replica set (`old_source`) as the source, by URI;
- "blocks": the 6.0.5 source, source and destination given as saved `MongoEndpoint` blocks
  (`{"block": name}`), loaded from the test Prefect server by every process that runs the spec;
- "4.2.6+blocks": both at once (where running each alone costs more time than the test is worth).

The destination is always the session's 6.0.5 `dest`. Use it as
`@pytest.mark.parametrize("endpoints", ENDPOINTS, indirect=True)`, importing `endpoints` into the test
module (a fixture outside conftest.py is found by its name there).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

from mongo_migrate.blocks.mongo import MongoEndpoint
from mongo_migrate.blocks.spec import MigrationSpec, parse_spec
from mongo_migrate.sandbox.mongod import Mongod

ENDPOINTS = ["6.0.5", "4.2.6", "blocks"]
KINDS = {*ENDPOINTS, "4.2.6+blocks"}
SOURCE_BLOCK, DESTINATION_BLOCK = "faults-source", "faults-destination"


@dataclass
class Endpoints:
    kind: str
    source: Mongod
    dest: Mongod
    src_client: MongoClient  # on `source`, closed after the test

    def spec_data(self, **fields) -> dict:
        """A spec's fields (plain values: a dumped model would mask secrets) with these endpoints."""
        if "blocks" in self.kind:
            ends = {"source": {"block": SOURCE_BLOCK}, "destination": {"block": DESTINATION_BLOCK}}
        else:
            ends = {"source": {"uri": self.source.admin_uri()}, "destination": {"uri": self.dest.admin_uri()}}
        return {**ends, **fields}

    def spec(self, **fields) -> MigrationSpec:
        return parse_spec(self.spec_data(**fields))

    def write(self, path: Path, **fields) -> Path:
        self.spec(**fields)  # valid, or the test stops here
        path.write_text(json.dumps(self.spec_data(**fields)))
        return path


@pytest.fixture
def endpoints(request, dest) -> Endpoints:
    kind = request.param
    assert kind in KINDS, kind
    # each source fixture empties its server after the test
    if kind.startswith("4.2.6"):
        source = request.getfixturevalue("old_source")("4.2.6")
    else:
        source = request.getfixturevalue("source")
    if "blocks" in kind:
        MongoEndpoint(uri=source.admin_uri()).save(SOURCE_BLOCK, overwrite=True)
        MongoEndpoint(uri=dest.admin_uri()).save(DESTINATION_BLOCK, overwrite=True)
    with source.client() as client:
        yield Endpoints(kind, source, dest, client)
