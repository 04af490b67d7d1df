"""The deployments on a real local Prefect server with a process worker (what `make serve` starts):
what is registered, a run started with `prefect deployment run`, the off-peak schedule's local time,
progress artifacts, `python -m mongo_migrate.deployments.deploy` (what `make deploy` runs) and its errors."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.deployments.deploy import DEFAULT_POOL, DESTINATION_BLOCK, SOURCE_BLOCK, default_spec
from mongo_migrate.deployments.deploy import main as deploy_main
from tests.conftest import ROOT, assert_same_documents
from tests.served import params_json, run_id_from_cli, served_prefect

# every JSON-schema type the run form renders as an input; anything else would be a raw JSON box
FORM_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with served_prefect(tmp_path_factory.mktemp("served"), "test_deployments") as s:
        yield s


def test_serve_registers_three_deployments_on_a_process_pool(served):
    pool = served.http.get(f"/work_pools/{DEFAULT_POOL}").json()
    assert pool["type"] == "process"
    workers = served.http.post(f"/work_pools/{DEFAULT_POOL}/workers/filter", json={}).json()
    assert [w["status"] for w in workers] == ["ONLINE"]
    for name, entrypoint in (("migrate/on-demand", "flows/migrate.py:migrate"),
                             ("migrate/off-peak", "flows/migrate.py:migrate"),
                             ("precheck/on-demand", "flows/migrate.py:precheck")):
        d = served.deployment(name)
        assert (d["work_pool_name"], d["entrypoint"]) == (DEFAULT_POOL, entrypoint)
        assert d["parameters"] == {"spec": default_spec()}
        assert d["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
        assert d["enforce_parameter_schema"] is True
    assert served.deployment("migrate/on-demand")["schedules"] == []
    assert default_spec()["source"] == {"block": SOURCE_BLOCK}
    block_types = {b["slug"] for b in served.http.post("/block_types/filter", json={}).json()}
    assert "mongoendpoint" in block_types
    assert "slacknotifier" in block_types


def _form_problems(schema: dict) -> list[str]:
    """Fields without a title or a description, and types the run form cannot show."""
    problems = []

    def check(where: str, prop: dict) -> None:
        for option in prop.get("anyOf", [prop]):
            if "$ref" in option:
                continue
            kind = option.get("type")
            if kind not in FORM_TYPES or "prefixItems" in option or "oneOf" in option or "allOf" in option:
                problems.append(f"{where}: type {option} has no form input")
            if kind == "array" and "items" in option and "$ref" not in option["items"]:
                check(f"{where}[]", option["items"])

    definitions = schema.get("definitions") or schema.get("$defs") or {}
    models = dict(definitions)
    if "spec" not in schema.get("properties", {}):  # a model's own schema: its root is a model too
        models[schema["title"]] = schema
    for model, definition in models.items():
        for name, prop in definition.get("properties", {}).items():
            where = f"{model}.{name}"
            # pydantic leaves out a field's title or description when the referenced model has it
            ref = prop.get("$ref", "").rpartition("/")[2]
            shown = {**definitions.get(ref, {}), **prop}
            if not shown.get("title"):
                problems.append(f"{where}: no title")
            if not shown.get("description"):
                problems.append(f"{where}: no description")
            check(where, prop)
    return problems


def test_run_form_fields_all_have_titles_descriptions_and_form_types(served):
    assert _form_problems(MigrationSpec.model_json_schema()) == []
    for name in ("migrate/on-demand", "precheck/on-demand"):
        schema = served.deployment(name)["parameter_openapi_schema"]
        assert schema["properties"]["spec"]["$ref"].endswith("/MigrationSpec")
        assert _form_problems(schema) == [], name
        endpoint = schema["definitions"]["EndpointSpec"]["properties"]
        assert endpoint["block"]["title"] == "MongoEndpoint block"


def test_off_peak_runs_are_at_two_in_the_schedule_time_zone(served):
    zone = ZoneInfo(served.timezone)
    d = served.deployment("migrate/off-peak")
    [schedule] = d["schedules"]
    assert schedule["active"] is True
    assert schedule["schedule"] == {"cron": "0 2 * * *", "timezone": served.timezone, "day_or": True}
    runs = served.flow_runs(
        deployments={"id": {"any_": [d["id"]]}}, flow_runs={"state": {"type": {"any_": ["SCHEDULED"]}}},
        sort="EXPECTED_START_TIME_ASC",
    )
    starts = [datetime.fromisoformat(r["expected_start_time"]) for r in runs]
    assert len(starts) >= 3
    local = [s.astimezone(zone) for s in starts]
    assert [(t.hour, t.minute) for t in local] == [(2, 0)] * len(local)
    # one run per night, and the zone was applied: 02:00 there is not 02:00 UTC
    assert [b.date() - a.date() for a, b in zip(local, local[1:])] == [timedelta(days=1)] * (len(local) - 1)
    assert {s.astimezone(ZoneInfo("UTC")).hour for s in starts} != {2}
    assert starts[0] > datetime.now(ZoneInfo("UTC"))


def _watch_progress(served, stop: threading.Event, seen: list[float]) -> None:
    """Read the "full-copy-progress" artifact every 0.2 s while the run goes on, and once more after it
    has ended (its last move is written before the run completes, possibly after the previous read)."""
    while True:
        ended = stop.is_set()
        for artifact in served.artifacts(artifacts={"key": {"any_": ["full-copy-progress"]}}):
            if not seen or seen[-1] != artifact["data"]:
                seen.append(artifact["data"])
        if ended:
            return
        time.sleep(0.2)


def test_cli_run_with_parameters_completes_and_progress_moves(served, src_client, dst_client,
                                                             source, dest):
    # one worker under a load cap of 1,250 docs/s: the copy lasts about 16 s, so the overall bar is seen
    # moving and both collections are still being copied at the 10 s tick that gives each its own bar
    # (biggest first: the customers wait behind the orders)
    src_client.shop.orders.insert_many([{"_id": i, "item": f"sku-{i % 97}", "qty": i % 7}
                                        for i in range(20_000)])
    src_client.shop.customers.insert_many([{"name": f"c{i}"} for i in range(100)])
    spec = {
        "source": {"uri": source.admin_uri()}, "destination": {"uri": dest.admin_uri()},
        "objects": [{"database": "shop"}], "name_mapping": {"shop": "shop_cli"},
        "copy_options": {"parallel_workers": 1, "batch_docs": 100}, "throttle": {"docs_per_s": 1250},
    }
    done = served.prefect("deployment", "run", "migrate/on-demand", "--params", params_json(spec))
    assert done.returncode == 0, done.stderr + done.stdout
    run_id = run_id_from_cli(done.stdout)
    seen: list[float] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_progress, args=(served, stop, seen), daemon=True)
    watcher.start()
    try:
        run = served.wait_for_state(run_id)
    finally:
        stop.set()
        watcher.join(10)
    assert run["state_type"] == "COMPLETED", served.logs(run_id)[-3000:]
    assert run["parameters"]["spec"]["name_mapping"] == {"shop": "shop_cli"}
    assert_same_documents(src_client, dst_client, "shop.orders", "shop_cli.orders")
    assert_same_documents(src_client, dst_client, "shop.customers", "shop_cli.customers")
    assert "shop" not in dst_client.list_database_names()

    # the overall bar moved through values between 0 and 100, never backwards, and ended at 100
    assert seen[-1] == 100.0, seen
    assert any(0 < v < 100 for v in seen), seen
    assert seen == sorted(seen), seen
    # the copy's tasks (and bars) belong to the migrate run itself
    bars = served.artifacts(artifacts={"flow_run_id": {"any_": [run_id]},
                                       "type": {"any_": ["progress"]}})
    per_collection = {a["description"].split(" (")[0]: a["data"] for a in bars if not a["key"]}
    assert per_collection == {"Full copy of shop.orders -> shop_cli.orders": 100.0,
                              "Full copy of shop.customers -> shop_cli.customers": 100.0}
    # so do the precheck's items and its table: a full run has no subflow
    assert served.subflow_runs(run_id) == []
    [table] = served.artifacts(artifacts={"key": {"any_": ["precheck"]},
                                          "flow_run_id": {"any_": [run_id]}})
    assert table["type"] == "table"


def test_precheck_deployment_with_endpoints_named_by_block(served, src_client, dst_client,
                                                          source, dest):
    src_client.crm.leads.insert_one({"x": 1})
    served.save_endpoint_block(SOURCE_BLOCK, source.admin_uri())
    served.save_endpoint_block(DESTINATION_BLOCK, dest.admin_uri())
    # the deployment's default parameters name the endpoints by block; only objects is given
    done = served.prefect("deployment", "run", "precheck/on-demand", "--param",
                          'spec={"source": {"block": "%s"}, "destination": {"block": "%s"}, '
                          '"objects": [{"database": "crm"}]}' % (SOURCE_BLOCK, DESTINATION_BLOCK))
    assert done.returncode == 0, done.stderr + done.stdout
    run = served.wait_for_state(run_id_from_cli(done.stdout))
    assert run["state_type"] == "COMPLETED", served.logs(run["id"])[-3000:]
    [table] = served.artifacts(artifacts={"key": {"any_": ["precheck"]},
                                          "flow_run_id": {"any_": [run["id"]]}})
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert {r["name"]: r["status"] for r in rows}["source connectivity"] == "passed"
    assert "crm" not in dst_client.list_database_names()  # a precheck writes nothing


def test_deploy_updates_the_deployments_on_the_server_prefect_api_url_names(served):
    """`make deploy`: the same deployments registered again against a running server."""
    before = served.deployment("migrate/off-peak")
    done = subprocess.run([sys.executable, "-m", "mongo_migrate.deployments.deploy", "--timezone", "Europe/Paris",
                           "--off-peak-cron", "30 1 * * 1-5"], env=served.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "migrate/off-peak ('30 1 * * 1-5' Europe/Paris)" in done.stdout
    after = served.deployment("migrate/off-peak")
    assert after["id"] == before["id"]
    assert after["schedules"][0]["schedule"]["timezone"] == "Europe/Paris"
    runs = served.flow_runs(deployments={"id": {"any_": [after["id"]]}},
                            flow_runs={"state": {"type": {"any_": ["SCHEDULED"]}}})
    paris = [datetime.fromisoformat(r["expected_start_time"]).astimezone(ZoneInfo("Europe/Paris"))
             for r in runs]
    assert paris and {(t.hour, t.minute) for t in paris} == {(1, 30)}
    assert {t.weekday() for t in paris} <= {0, 1, 2, 3, 4}


def test_deploy_errors_are_one_line(capsys, tmp_path):
    assert deploy_main(["--timezone", "Mars/Olympus"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deploy: error: --timezone 'Mars/Olympus' is not an IANA time zone (e.g. Europe/Paris)")
    assert deploy_main(["--off-peak-cron", "0 25 * * *"]) == 2
    assert "--off-peak-cron '0 25 * * *' is not a cron expression" in capsys.readouterr().err
    assert deploy_main(["--pool", "k8s-pool", "--image", "mongo-migrate:1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "deploy: error: work pool 'k8s-pool' does not exist: create it first, e.g. "
        "`prefect work-pool create k8s-pool --type docker` (or --type kubernetes)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "mongo_migrate.deployments.deploy"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "deploy: error: PREFECT_API_URL is not set: point it at a Prefect server "
        "(e.g. http://127.0.0.1:4200/api) or run `make serve`"]


def test_deploy_to_a_docker_pool_with_an_image(served):
    """The documented docker (or kubernetes) route: an image with the project installed; runs import
    the flows by module path. Registration only: this machine runs no docker worker."""
    # what `prefect work-pool create mm-docker --type docker` makes (prefect-docker's template, cut
    # down to its image variable; the package is not installed here)
    template = {"job_configuration": {"image": "{{ image }}"},
                "variables": {"type": "object", "properties": {"image": {"type": "string"}}}}
    served.http.post("/work_pools/", json={"name": "mm-docker", "type": "docker",
                                            "base_job_template": template}).raise_for_status()
    refused = subprocess.run([sys.executable, "-m", "mongo_migrate.deployments.deploy", "--pool", "mm-docker"],
                             env=served.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("deploy: error: work pool 'mm-docker' (docker) runs flows in an "
                                      "image: give --image")
    done = subprocess.run([sys.executable, "-m", "mongo_migrate.deployments.deploy", "--pool", "mm-docker",
                           "--image", "registry.example/mongo-migrate:1.0"],
                          env=served.env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    try:
        assert done.returncode == 0, done.stderr
        d = served.deployment("migrate/on-demand")
        assert (d["work_pool_name"], d["entrypoint"]) == ("mm-docker", "mongo_migrate.flows.migrate.migrate")
        assert d["job_variables"] == {"image": "registry.example/mongo-migrate:1.0"}
        assert d["pull_steps"] in (None, [])
        assert served.deployment("precheck/on-demand")["entrypoint"] == "mongo_migrate.flows.migrate.precheck"
    finally:
        # back on the process pool for anything that runs after
        subprocess.run([sys.executable, "-m", "mongo_migrate.deployments.deploy", "--timezone", served.timezone],
                       env=served.env, cwd=ROOT, capture_output=True, timeout=120, check=True)
