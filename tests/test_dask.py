"""copy_options.runner on Dask (prefect-dask's DaskTaskRunner): a migration whose copy and verification
run on a LocalCluster of 2 worker processes, reporting to a real `prefect server start`; a worker
process SIGKILLed mid-copy; an unreachable scheduler in the precheck; bad runner values."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from bson.raw_bson import RawBSONDocument

from mongo_migrate.sandbox.mongod import free_port
from mongo_migrate.sandbox.sample_data import encoded_documents
from tests.conftest import ROOT, raw_documents
from tests.prefect_server import PrefectServer

LOCAL_2 = {"dask_local_workers": 2}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A real Prefect server: Dask workers report their task runs to it (PREFECT_API_URL)."""
    server = PrefectServer(tmp_path_factory.mktemp("dask-prefect") / "home").start()
    yield server
    server.stop()


def seed(client, ns: str, n: int, doc_bytes: int = 512, start: int = 0) -> None:
    db, _, coll = ns.partition(".")
    docs = [RawBSONDocument(raw) for raw in encoded_documents(n, start, doc_bytes)]
    for i in range(0, n, 5000):
        client[db][coll].insert_many(docs[i:i + 5000], ordered=False)


def write_spec(tmp_path, source, dest, **copy_options) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({
        "source": {"uri": source.admin_uri()}, "destination": {"uri": dest.admin_uri()},
        "objects": [{"database": "shop"}], "copy_options": copy_options,
    }))
    return str(path)


def cli(*args: str, api: str | None, log: Path) -> subprocess.Popen:
    """`mongo-migrate --verbose ARGS` against `api` (none: the command's temporary server), its stderr
    (Prefect's and Dask's log lines) into `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    if api:
        env["PREFECT_API_URL"] = api
    proc = subprocess.Popen([sys.executable, "-m", "mongo_migrate.flows.cli", "--verbose", *args],
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env, cwd=ROOT)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float = 150) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); the command and its Dask workers are killed if it outlasts `timeout`."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"timed out; its log:\n{proc.log.read_text()[-4000:]}") from None
    return proc.returncode, out, proc.log.read_text()


def assert_equal_copy(src_client, dst_client, colls: list[str]) -> None:
    for coll in colls:
        a, b = raw_documents(src_client, "shop", coll), raw_documents(dst_client, "shop", coll)
        assert len(b) == len(a), f"{coll}: {len(a)} source documents, {len(b)} on the destination"
        assert b == a, f"{coll}: documents differ in their bytes"


def dask_workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The LocalCluster's worker processes: the command's children that multiprocessing spawned."""
    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()) and "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_migration_on_a_local_cluster_of_two_workers(source, dest, src_client, dst_client, prefect_server,
                                                    tmp_path):
    seed(src_client, "shop.big", 6000)            # range_docs 1000: six ranges
    seed(src_client, "shop.small", 300, start=10_000)
    src_client.shop.small.create_index("k")
    users = [{"_id": i, "email": f"u{i}@example.com"} for i in range(200)]
    users[150]["email"] = users[20]["email"]  # the source allows it; the destination's own index will not
    src_client.shop.users.insert_many(users)
    dst_client.shop.users.create_index("email", unique=True, name="email_unique")
    spec = write_spec(tmp_path, source, dest, range_docs=1000, parallel_workers=2, runner=LOCAL_2,
                      on_document_error="skip")
    code, out, err = finish(cli("run", spec, "--json", api=prefect_server.api, log=tmp_path / "cli.log"))
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["counts_match"] and summary["docs"] == 6499
    assert_equal_copy(src_client, dst_client, ["big", "small"])
    assert "Creating a new Dask cluster with `distributed.deploy.local.LocalCluster`" in err
    # the one cluster served the copy and the verification
    assert err.count("Creating a new Dask cluster") == 1
    units = list(dst_client.mongo_migrate_meta.copy_units.find({}, {"_id": 1, "done": 1}))
    assert sum(u["_id"].split(":", 1)[1].startswith("shop.big#") for u in units) == 6
    assert all(u.get("done") for u in units)
    # the document the destination refused, skipped on a worker and recorded as on threads
    assert [c["skipped"] for c in summary["collections"] if c["source_ns"] == "shop.users"] == [1]
    record = dst_client.mongo_migrate_meta.skipped_documents.find_one()
    assert (record["target_ns"], record["doc_id"], record["code"]) == ("shop.users", 150, 11000)
    src_client.shop.users.delete_one({"_id": 150})
    assert_equal_copy(src_client, dst_client, ["users"])
    # the range tasks ran in the worker processes and reported there to the Prefect server
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(prefect_server.api) as client:
        runs = client.read_task_runs()
        copies = [r for r in runs if r.name.startswith("copy_collection_range")]
        assert len(copies) == 8 and all(r.state.is_completed() for r in copies)
        progress = [a for a in client.read_artifacts() if a.key == "full-copy-progress"]
        assert progress and all(a.data == 100 for a in progress)


def test_worker_killed_mid_copy_the_range_runs_again_elsewhere(source, dest, src_client, dst_client,
                                                               prefect_server, tmp_path):
    seed(src_client, "shop.big", 40_000, doc_bytes=1024)   # sixteen ranges of 2,500
    spec = write_spec(tmp_path, source, dest, range_docs=2500, batch_docs=250, parallel_workers=2,
                      runner=LOCAL_2)
    proc = cli("run", spec, "--json", api=prefect_server.api, log=tmp_path / "cli.log")
    killed = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        # mid-copy: both workers busy with a range each, most of the data still to come
        copied = dst_client.shop.big.estimated_document_count()
        workers = dask_workers(proc)
        if 5_000 < copied < 30_000 and len(workers) == 2:
            killed = workers[0]
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert killed is not None, "the copy was never caught mid-way"
    code, out, err = finish(proc)
    # Dask's nanny starts a new worker process and the scheduler runs the lost range again; the range
    # resumes from its checkpoint, and documents already there are not inserted twice
    assert code == 0, err[-3000:]
    assert f"Worker process {killed.pid} was killed by signal 9" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["counts_match"]
    assert_equal_copy(src_client, dst_client, ["big"])
    assert dst_client.shop.big.count_documents({}) == 40_000


def test_an_existing_cluster_by_its_address_with_the_commands_temporary_prefect_server(
        source, dest, src_client, dst_client, prefect_server, tmp_path):
    """A cluster started beforehand (a LocalCluster of this test process, reached by address only):
    the precheck asks each worker to reach both deployments; the run, without PREFECT_API_URL, uses the
    command's temporary Prefect server, whose address the task runs carry to the workers."""
    from distributed import LocalCluster

    seed(src_client, "shop.big", 3000)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        spec = write_spec(tmp_path, source, dest, range_docs=1000, runner={"dask_address": address})
        code, out, err = finish(cli("precheck", spec, api=prefect_server.api, log=tmp_path / "precheck.log"))
        assert code == 0, out + err[-2000:]
        row = next(line for line in out.splitlines() if " Dask cluster " in line)
        assert row.startswith("ok ") and row.split("Dask cluster", 1)[1].strip() == (
            f"the Dask cluster at {address}: 1 workers, 2 threads, each reaching both deployments")
        code, out, err = finish(cli("run", spec, "--json", api=None, log=tmp_path / "run.log"))
        assert code == 0, err[-3000:]
        assert f"Connecting to an existing Dask cluster at {address}" in err
    assert json.loads(out.strip().splitlines()[-1])["counts_match"]
    assert_equal_copy(src_client, dst_client, ["big"])


def test_a_refused_document_raised_on_a_worker_reaches_the_flow_whole():
    """A range task's own error is pickled back from the Dask worker (cloudpickle, as distributed does)."""
    import pickle

    import cloudpickle

    from mongo_migrate.blocks.errors import DocumentWriteError

    back = pickle.loads(cloudpickle.dumps(DocumentWriteError("app.users", 150, 11000, "E11000 duplicate key")))
    assert (type(back), back.target_ns, back.doc_id, back.code) == (DocumentWriteError, "app.users", 150, 11000)
    assert str(back) == "app.users: document _id=150 was refused (code 11000): E11000 duplicate key"


def test_dask_needs_a_prefect_api_the_workers_reach(spec_for):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mongo_migrate.tasks.precheck.connectivity import dask_runner_problem

    local = spec_for(copy_options={"runner": LOCAL_2})
    remote = spec_for(copy_options={"runner": {"dask_address": "tcp://dask-scheduler:8786"}})
    assert dask_runner_problem(spec_for()) is None
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # Prefect's in-process ephemeral API
        assert dask_runner_problem(local) == (
            "copy_options.runner asks for Dask, whose workers report their task runs to the Prefect API, and "
            "no Prefect server is configured (PREFECT_API_URL)",
            "set PREFECT_API_URL to a Prefect server (prefect server start, make serve), or start the migration "
            "with the mongo-migrate command, which starts one for the run")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        assert dask_runner_problem(local) is None
        assert dask_runner_problem(remote) == (
            "the Prefect API http://127.0.0.1:4200/api is a loopback address, which the workers of the Dask "
            "cluster at tcp://dask-scheduler:8786 cannot reach (mongo-migrate's temporary server is one)",
            "run a Prefect server the workers can reach and set PREFECT_API_URL to its address as they see it "
            "(http://prefect-host:4200/api)")
    with temporary_settings(updates={PREFECT_API_URL: "http://prefect.internal:4200/api"}):
        assert dask_runner_problem(remote) is None


def test_dask_runner_without_prefect_dask_installed_fails_the_precheck_item(spec_for, monkeypatch):
    """Where the flow runs without the `dask` extra (`import prefect_dask` fails), the precheck's Dask
    row says so and how to install it, instead of the run failing as its runner starts."""
    import sys

    from mongo_migrate.tasks.precheck import check_dask_cluster

    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # what `import prefect_dask` meets uninstalled
    row = check_dask_cluster(spec_for(copy_options={"runner": LOCAL_2}))
    assert (row.status, row.detail, row.remedy) == (
        "failed", "copy_options.runner asks for Dask, and prefect-dask is not installed where the flow runs",
        "pip install 'mongo-migrate[dask]', or set copy_options.runner: threads")


def test_unreachable_scheduler_fails_the_precheck(source, dest, src_client, prefect_server, tmp_path):
    src_client.shop.orders.insert_one({"_id": 1})
    address = f"tcp://127.0.0.1:{free_port()}"
    spec = write_spec(tmp_path, source, dest, runner={"dask_address": address})
    code, out, err = finish(cli("precheck", spec, api=prefect_server.api, log=tmp_path / "cli.log"))
    assert code == 2, err[-2000:]
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("FAIL  Dask cluster"))
    assert lines[row].split("Dask cluster", 1)[1].strip() == (
        f"the Dask scheduler at {address} cannot be reached (no answer within 10 s)")
    remedy = (f"start the Dask scheduler and its workers (dask scheduler; dask worker {address}), or fix "
              "copy_options.runner.dask_address; check that this machine reaches that host and port")
    assert lines[row + 1].split("-> ", 1)[1] == remedy
    # `verify` runs no precheck: the runner says it in one line as it starts
    code, out, err = finish(cli("verify", spec, api=prefect_server.api, log=tmp_path / "verify.log"))
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("mongo-migrate: error:")]
    assert errors == [f"mongo-migrate: error: cannot verify: copy_options.runner: the Dask scheduler at {address} "
                      f"cannot be reached (Timed out trying to connect to {address} after 10 s); {remedy}"], err[-2000:]


@pytest.mark.parametrize("runner, message", [
    ("dask", 'copy_options.runner: give "threads", {dask_local_workers: N} or {dask_address: "tcp://host:8786"}'),
    ({"dask_local_workers": 0}, "copy_options.runner.dask_local_workers: Input should be greater than or equal to 1"),
    ({"dask_local_workers": 2, "threads": 4}, "copy_options.runner.threads: unknown key"),
    ({"dask_address": "http://scheduler:8786"}, "copy_options.runner.dask_address: 'http://scheduler:8786' is not "
     "a Dask scheduler address: give tcp://host:port (e.g. tcp://dask-scheduler:8786)"),
])
def test_bad_runner_values_are_refused_in_one_line(tmp_path, runner, message):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"source": {"uri": "mongodb://127.0.0.1:1"},
                                "destination": {"uri": "mongodb://127.0.0.1:2"},
                                "copy_options": {"runner": runner}}))
    proc = subprocess.run([sys.executable, "-m", "mongo_migrate.flows.cli", "precheck", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"})  # none is started
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"mongo-migrate: error: spec.json: {message}"]
