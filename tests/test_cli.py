"""The real `mongo-migrate` command: outputs, exit codes, and bad input told in one clear line.

Every command of this module is started at once by one fixture (each is a separate process costing a
few seconds of Prefect start-up); the tests then read their outcomes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import yaml

from mongo_migrate.blocks.mongo import close_clients
from mongo_migrate.blocks.spec import EndpointSpec
from mongo_migrate.sandbox.mongod import Mongod, free_port
from mongo_migrate.tasks.connect import check_connectivity
from tests.conftest import _drop_user_databases

WRONG_PASSWORD = "Wr0ng-Pa55word-7c1e"
URI_PASSWORD = "S3cret-In-A-Bad-Uri"
UNESCAPED_PASSWORD = "S3cret/Not?Escaped"  # breaks the URI where parsers look for credentials
ERROR = "mongo-migrate: error: "


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith(ERROR)]

    @property
    def error(self) -> str:
        assert len(self.error_lines) == 1, self.stderr[-3000:]
        return self.error_lines[0].removeprefix(ERROR)


@pytest.fixture(scope="module")
def cli(source_server, dest_server, run_cli, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    auth = Mongod(tmp / "auth", auth=True).start()  # a standalone with real users
    closed_port = free_port()
    with source_server.client() as src, dest_server.client() as dst:
        for db in ("cli_text", "cli_json", "cli_fail", "cli_occupied"):
            src[db].items.insert_many([{"_id": i, "u": i % 15, "s": "é" * i} for i in range(20)])
        src.cli_json.items.create_index("s", name="s_1")
        src.cli_json.create_collection("small", viewOn="items", pipeline=[{"$match": {"_id": {"$lt": 5}}}])
        # targets that exist, empty, with a unique index the source's documents break: the copy fails
        for target in ("cli_fail_a", "cli_fail_b"):
            dst[target].items.create_index("u", unique=True)
        dst.cli_occupied.items.insert_one({"_id": "someone else's"})

    def spec_file(name: str, source: str | dict, destination: str | dict, suffix: str = ".yaml", **fields) -> str:
        data = {"source": source if isinstance(source, dict) else {"uri": source},
                "destination": destination if isinstance(destination, dict) else {"uri": destination}, **fields}
        path = tmp / f"{name}{suffix}"
        path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data, allow_unicode=True))
        return str(path)

    src_uri, dst_uri = source_server.admin_uri(), dest_server.admin_uri()
    (tmp / "not_yaml.yaml").write_text("source: {uri: 'mongodb://h:1'\ndestination: [\n")
    commands = {
        "run_text": ["run", spec_file("text", src_uri, dst_uri, objects=[{"database": "cli_text"}],
                                      name_mapping={"cli_text": "cli_text_v2"})],
        "run_json": ["run", spec_file("json", src_uri, dst_uri, ".json", objects=[{"database": "cli_json"}]),
                     "--json"],
        # a destination with access control, reached with the right password
        "precheck_auth": ["precheck", spec_file("auth", src_uri, auth.admin_uri(),
                                                objects=[{"database": "cli_text"}])],
        "wrong_password": ["precheck", spec_file("wrong_pw", auth.uri("admin", WRONG_PASSWORD), dst_uri)],
        "bad_endpoints": ["run", spec_file(
            "bad_endpoints", f"mongodb://admin:{URI_PASSWORD}@127.0.0.1:99999/",
            {"uri": f"mongodb://127.0.0.1:{closed_port}/", "timeout_s": 1})],
        "unknown_database": ["run", spec_file("unknown_db", src_uri, dst_uri, objects=[
            {"database": "cli_occupied"}, {"database": "no_such_db"}]), "--json"],
        "failed": ["run", spec_file("fail_a", src_uri, dst_uri, objects=[{"database": "cli_fail"}],
                                    name_mapping={"cli_fail": "cli_fail_a"})],
        "failed_debug": ["--debug", "run", spec_file("fail_b", src_uri, dst_uri, objects=[{"database": "cli_fail"}],
                                                     name_mapping={"cli_fail": "cli_fail_b"})],
        "missing_file": ["run", str(tmp / "nowhere.yaml")],
        "not_yaml": ["precheck", str(tmp / "not_yaml.yaml")],
        "unknown_key": ["run", spec_file("unknown_key", src_uri, dst_uri, copy_options={"paralel_workers": 2})],
        "unescaped_password": ["run", spec_file("unescaped", f"mongodb://admin:{UNESCAPED_PASSWORD}@127.0.0.1/",
                                                dst_uri)],
        "status_no_run": ["status", spec_file("status_none", src_uri, dst_uri, objects=[{"database": "cli_text"}],
                                              name_mapping={"cli_text": "cli_never_migrated"})],
        "wrong_type": ["run", spec_file("wrong_type", src_uri, dst_uri, copy_options={"batch_docs": "lots"},
                                        objects=[{"database": "cli_text", "collections": "items"}])],
    }

    def timed(args: list[str]) -> Outcome:
        started = time.monotonic()
        done = run_cli(*args)
        return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(timed, args) for name, args in commands.items()}
            outcomes = {name: f.result() for name, f in futures.items()}
        # after the run it reports on
        outcomes["status_json"] = timed(["status", commands["run_json"][1], "--json"])
        yield outcomes
    finally:
        auth.destroy()
        close_clients()
        _drop_user_databases(source_server)
        _drop_user_databases(dest_server)


def test_run_prints_a_summary(cli):
    out = cli["run_text"]
    assert out.code == 0, out.stderr[-3000:]
    assert "cli_text.items" in out.stdout and "cli_text_v2.items" in out.stdout
    assert "20 documents" in out.stdout and "counts match" in out.stdout
    assert not out.error_lines and "Traceback" not in out.stderr


def test_run_json_prints_one_json_object(cli):
    out = cli["run_json"]
    assert out.code == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # the whole of stdout is one object
    assert summary["status"] == "completed" and summary["counts_match"] is True
    assert summary["views"] == ["cli_json.small"]
    [items] = summary["collections"]
    assert (items["source_ns"], items["target_docs"], items["indexes"]) == ("cli_json.items", 20, 1)


def test_status_of_a_finished_run_and_of_a_spec_never_run(cli):
    out = cli["status_json"]
    assert out.code == 0, out.stderr[-3000:]
    status = json.loads(out.stdout)
    assert status["stage"] == "finished" and status["flow_run_state"] == "COMPLETED"
    assert [(c["source_ns"], c["target_ns"], c["ranges_done"], c["ranges"], c["docs_copied"])
            for c in status["collections"]] == [("cli_json.items", "cli_json.items", 1, 1, 20)]
    assert status["delay_s"] is None and status["oplog_window_left_s"] is None and status["last_error"] is None
    none = cli["status_no_run"]
    assert none.code == 2 and none.stdout == ""
    assert none.error.startswith("no run of this spec on the destination mongodb://") and \
        none.error.endswith("start one with `mongo-migrate run SPEC`")


def test_precheck_passes_with_access_control_and_never_prints_the_password(cli):
    out = cli["precheck_auth"]
    assert out.code == 0, out.stdout + out.stderr[-3000:]
    assert "precheck passed" in out.stdout
    assert "mongodb://admin:****@" in out.stdout
    assert "admin-secret" not in out.stdout + out.stderr


def test_wrong_password(cli):
    out = cli["wrong_password"]
    assert out.code == 2
    assert "FAIL  source connectivity" in out.stdout
    assert "authentication failed; check username, password and auth_source" in out.stdout
    assert out.stdout.rstrip().endswith("precheck FAILED")
    assert WRONG_PASSWORD not in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_malformed_uri_and_unreachable_host(cli):
    out = cli["bad_endpoints"]
    assert out.code == 2, out.stderr[-3000:]
    assert "source (mongodb://admin:****@127.0.0.1:99999/): malformed connection settings: " \
           "Port must be an integer between 0 and 65535" in out.stdout
    assert "connection refused; is mongod running on that host and port?" in out.stdout
    assert out.error.startswith("precheck failed; nothing was written: source connectivity, "
                                "destination connectivity")
    assert URI_PASSWORD not in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize("uri, problem", [
    ("mongodb://u:pw-secret@127.0.0.1:99999/", "Port must be an integer between 0 and 65535"),
    ("mongodb://u:pw-secret@127.0.0.1:1,/", "Empty host (or extra comma in host list)"),
])
def test_malformed_uris_are_named_without_their_password(uri, problem):
    info = check_connectivity(EndpointSpec(uri=uri), "source")
    assert (info.reachable, info.cause) == (False, "uri")
    assert info.problem.startswith("source (mongodb://u:****@127.0.0.1:")
    assert info.problem.endswith(f": malformed connection settings: {problem}")
    assert "pw-secret" not in info.problem


def test_unreachable_host_gives_up_within_the_spec_timeout():
    endpoint = EndpointSpec(uri=f"mongodb://127.0.0.1:{free_port()}/", timeout_s=1)
    started = time.monotonic()
    info = check_connectivity(endpoint, "destination")
    assert time.monotonic() - started < 5  # the driver's default would wait 30 s
    assert (info.reachable, info.cause) == (False, "refused")


def test_unknown_database_and_occupied_target_fail_the_precheck_as_json(cli):
    out = cli["unknown_database"]
    assert out.code == 2
    report = json.loads(out.stdout)  # the whole of stdout is one object
    assert report["status"] == "precheck_failed"
    failed = {i["name"]: i for i in report["items"] if i["status"] == "failed"}
    assert list(failed) == ["selected objects", "target namespaces"]
    assert failed["selected objects"]["detail"] == "not on the source: no_such_db"
    assert failed["target namespaces"]["detail"] == "already hold data: cli_occupied.items"
    assert "drop_existing_targets: true" in failed["target namespaces"]["remedy"]
    assert out.error == "precheck failed; nothing was written: selected objects, target namespaces"


def test_failed_migration_exits_1_in_one_line_and_debug_shows_the_traceback(cli):
    out = cli["failed"]
    assert out.code == 1, out.stdout + out.stderr[-3000:]
    assert out.error.startswith("migration failed: cli_fail_a.items: document _id=")
    assert "was refused (code 11000)" in out.error and "index: u_1 dup key" in out.error
    assert "Traceback" not in out.stdout + out.stderr
    # a refused document is refused again: not retried
    assert "Retry 1/3" not in out.stderr

    debug = cli["failed_debug"]
    assert debug.code == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "mongo_migrate.blocks.errors.DocumentWriteError: cli_fail_b.items: document _id=" in debug.stderr


@pytest.mark.parametrize("case, message", [
    ("missing_file", "nowhere.yaml: no such spec file"),
    ("not_yaml", "not_yaml.yaml: not valid YAML at line 2"),
    ("unknown_key", "unknown_key.yaml: copy_options.paralel_workers: unknown key"),
    ("unescaped_password", "unescaped.yaml: source: the user name or password in uri holds an unescaped "
                           "'/', '?' or '#': percent-escape it (urllib.parse.quote_plus) or give it in password"),
    ("wrong_type", "wrong_type.yaml: objects.0.collections: Input should be a valid list; "
                   "wrong_type.yaml: copy_options.batch_docs: Input should be a valid integer, unable to "
                   "parse string as an integer"),
])
def test_bad_spec_is_one_line_naming_what_to_fix(cli, case, message):
    out = cli[case]
    assert out.code == 2
    assert out.error.endswith(message), out.error
    assert out.stdout == ""
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert UNESCAPED_PASSWORD not in out.stderr


def test_passwords_reach_no_prefect_record(cli):
    """Flow-run parameters, logs and artifacts kept by the Prefect server hold no password."""
    from prefect.client.orchestration import get_client

    def every(read, **kw) -> list:
        found, offset = [], 0
        while batch := read(limit=200, offset=offset, **kw):
            found += batch
            offset += len(batch)
        return found

    with get_client(sync_client=True) as client:
        records = [json.dumps(r.parameters, default=str) for r in every(client.read_flow_runs)]
        records += [log.message for log in every(client.read_logs)]
        records += [json.dumps(a.data, default=str) + (a.description or "") for a in every(client.read_artifacts)]
    text = "\n".join(records)
    assert '"password": "**********"' in text  # the specs with passwords were recorded, masked
    for secret in ("admin-secret", WRONG_PASSWORD, URI_PASSWORD, UNESCAPED_PASSWORD):
        assert secret not in text


def test_the_commands_flow_run_does_not_wait_for_the_heartbeat_thread(monkeypatch):
    """The command ends its process after its run: it does not join Prefect's heartbeat thread (up to
    1 s). If a Prefect release renames or reshapes the function, this shows the saving is gone."""
    import functools

    from prefect import flow_engine

    import mongo_migrate.flows.cli as cli

    monkeypatch.setattr(flow_engine, "_send_heartbeats", flow_engine._send_heartbeats)
    cli._heartbeat_not_awaited()
    patched = flow_engine._send_heartbeats
    assert isinstance(patched, functools.partial) and patched.keywords == {"join_on_exit": False}
    cli._heartbeat_not_awaited()  # twice is once
    assert flow_engine._send_heartbeats is patched


MONITORS_AT_THE_LAST_EXIT_HANDLER = """
import atexit, os, sys, threading
def last():  # registered first, so it runs last, as console_main's end_now
    alive = [t for t in threading.enumerate() if t.name.startswith("pymongo_server_monitor")]
    print(len(alive), flush=True)
    os._exit(0)
atexit.register(last)
from pymongo import MongoClient
client = MongoClient(sys.argv[1])
client.admin.command("ping")
if sys.argv[2] == "command":
    from mongo_migrate.flows.cli import _no_monitor_joins_at_exit
    _no_monitor_joins_at_exit()
"""


def test_the_command_does_not_wait_at_exit_for_pymongos_monitor_threads(source):
    """pymongo's exit handler stops and joins the threads monitoring each server (each sees its stop
    flag within 0.5 s: 0.13-0.45 s at the end of every command). The command ends its process without the
    interpreter's teardown those joins guard against, so it does not run that handler: the monitors are
    still there when its last exit handler ends the process. If a pymongo release moves the handler,
    this shows the saving is gone."""
    def monitors_left(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", MONITORS_AT_THE_LAST_EXIT_HANDLER, source.uri(), mode],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        return int(out.split()[-1])

    assert monitors_left("plain") == 0  # pymongo's own handler joined them
    assert monitors_left("command") >= 1
