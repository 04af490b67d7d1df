"""flows/spec_flow.py: the flows taking the spec store their parameters as Prefect's own serializer
(FastAPI's jsonable_encoder) would, without importing FastAPI for it, and build their parameter schema
only when it is read."""
from __future__ import annotations

import json
import subprocess
import sys

import cloudpickle
from prefect import Flow

from mongo_migrate.blocks.spec import MigrationSpec, parse_spec
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.flows.verify import verify
from mongo_migrate.tasks.namespaces import CollectionPlan, MigrationPlan

SPEC = {
    "source": {"uri": "mongodb://migrator:s3cret@db1.example.com:27017/?replicaSet=rs0", "tls": True},
    "destination": {"block": "managed-destination", "storage_gb": 50},
    "migration_types": ["full", "incremental"],
    "objects": [{"database": "shop"}, {"database": "crm", "collections": ["customers", "leads"]}],
    "name_mapping": {"shop": "shop_v2", "crm.customers": "sales.clients"},
    "copy_options": {"parallel_workers": 2, "runner": {"dask_local_workers": 2}},
    "incremental_options": {"approval_timeout_s": 172800, "delay_alarm_s": "30s"},
    "notifications": {"slack": {"webhook_url": "https://hooks.slack.com/services/T/B/secret"}},
    "throttle": {"docs_per_s": 5000, "windows": [{"start": "08:00", "end": "20:00", "timezone": "Europe/Paris",
                                                  "docs_per_s": 1000}]},
}


def test_the_stored_parameters_are_those_prefects_serializer_makes():
    spec = parse_spec(SPEC, "spec.json")
    plan = MigrationPlan(collections=[CollectionPlan(source_db="shop", source_name="orders", target_db="shop_v2",
                                                     target_name="orders", kind="collection",
                                                     options_ejson='{"validator": {"n": {"$gt": 1}}}')])
    for flow, parameters in ((migrate, {"spec": spec}),
                             (verify, {"spec": spec, "plan": plan, "recheck_delay_s": 2.5}),
                             (verify, {"spec": spec, "plan": None, "recheck_delay_s": 5})):
        stored = flow.serialize_parameters(parameters)
        assert stored == Flow.serialize_parameters(flow, parameters)  # FastAPI's encoder
        assert list(stored) == list(parameters)
        assert "s3cret" not in json.dumps(stored) and "**********" in json.dumps(stored)
    assert stored["recheck_delay_s"] == 5 and stored["plan"] is None


def test_a_run_of_the_command_does_not_import_fastapi_to_store_them():
    code = ("import sys, json; from mongo_migrate.blocks.spec import parse_spec; "
            "from mongo_migrate.flows.migrate import migrate; "
            f"migrate.serialize_parameters({{'spec': parse_spec(json.loads({json.dumps(json.dumps(SPEC))}))}}); "
            "print('fastapi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_the_parameter_schema_is_built_when_read_and_is_prefects():
    from prefect.utilities.callables import parameter_schema

    from mongo_migrate.flows.spec_flow import spec_flow

    def sample(spec: MigrationSpec, recheck_delay_s: float = 5.0) -> None:
        """A flow taking the spec."""

    built = spec_flow(name="sample")(sample)
    assert built._parameters is None  # not built by the constructor
    assert built.parameters == parameter_schema(sample)  # what Flow.__init__ would have stored
    assert built.parameters.model_dump()["required"] == ["spec"]
    assert migrate.parameters == parameter_schema(migrate.fn)
    assert cloudpickle.loads(cloudpickle.dumps(built)).parameters == parameter_schema(sample)
    # the constructor leaves Prefect's function in place: a plain flow still builds its schema at once
    import prefect.flows
    assert prefect.flows.parameter_schema is parameter_schema
    assert Flow(sample, name="plain").parameters == parameter_schema(sample)
