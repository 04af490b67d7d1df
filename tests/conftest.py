"""Real mongods and a real (temporary) Prefect server for the whole suite."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"  # nor Prefect's client telemetry (no internet here; and its notice at a tty)
# the session turns flow-run heartbeats off (prefect_api); a value from the environment would not matter
os.environ.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)

import bson  # noqa: E402
import pytest  # noqa: E402
from bson.raw_bson import RawBSONDocument  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from pymongo.errors import WriteError  # noqa: E402

from mongo_migrate.blocks.mongo import close_clients  # noqa: E402
from mongo_migrate.blocks.spec import META_DATABASE, parse_spec  # noqa: E402
from mongo_migrate.sandbox.mongod import Mongod  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
KEEP = {"admin", "local", "config"}


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """One temporary Prefect server (SQLite) for the session; yields its API URL."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from mongo_migrate.flows.temporary_server import with_sqlite_server_settings

    # the test harness's server is set up as the command's temporary server is: without it each
    # incremental run's sync subflow began 5-15 s late here (flows/temporary_server.py says why)
    os.environ.update(with_sqlite_server_settings(os.environ))
    # no flow-run heartbeats in this process: their thread makes every flow run end up to a second
    # late (flows/migrate.py), a minute or more over the suite; nothing here looks for crashed runs
    with prefect_test_harness(server_startup_timeout=60), \
            temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield get_current_settings().api.url


# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup): each has its own mongods
# and Prefect server. The longest tests are handed out first, so that neither worker is left with a
# long one at the end; a module whose tests share a module-scoped fixture (a served Prefect, a set of
# CLI runs) stays on one worker so that the fixture is set up once.
LONGEST_FIRST = ["test_kills", "test_dask", "test_incremental", "test_throttle", "test_prefect_outage", "test_faults",
                 "test_cli", "test_ui", "test_destination_kills", "test_deployments", "test_alarms",
                 "test_versions_sync"]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the xdist_group marks set here
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank)))
    for item in items:
        if any(defs[-1].scope == "module" for defs in item._fixtureinfo.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_runtest_setup(item):
    """A test meant to share its module's fixture on one worker fails when its group did not reach
    pytest-xdist's scheduler: the fixture would be set up on both workers (the CLI module's 13 commands
    twice: a minute more), and nothing else would say so."""
    if getattr(item.config, "workerinput", None) is not None and item.config.getvalue("loadgroup") \
            and item.get_closest_marker("xdist_group") and "@" not in item.nodeid.rpartition("]")[2]:
        pytest.fail("pytest-xdist lost this test's group (--dist loadgroup): pytest 9.2 drops the group tag "
                    "(pytest-xdist#1386), and pyproject.toml's test extra asks for pytest<9.2: run `make test`",
                    pytrace=False)


def _drop_user_databases(m: Mongod) -> None:
    with m.client() as c:
        for name in c.list_database_names():
            if name not in KEEP:
                c.drop_database(name)


@pytest.fixture(scope="session")
def source_server(tmp_path_factory):
    m = Mongod(tmp_path_factory.mktemp("source"), replset="src").start()
    yield m
    m.destroy()


@pytest.fixture(scope="session")
def dest_server(tmp_path_factory):
    m = Mongod(tmp_path_factory.mktemp("dest"), replset="dst").start()
    yield m
    m.destroy()


@pytest.fixture
def source(source_server):
    """The source replica set, emptied after the test."""
    yield source_server
    close_clients()
    if source_server.proc is None:  # a test stopped it
        source_server.start()
    _drop_user_databases(source_server)


@pytest.fixture
def dest(dest_server):
    """The destination replica set, emptied after the test."""
    yield dest_server
    close_clients()
    if dest_server.proc is None:
        dest_server.start()
    _drop_user_databases(dest_server)


@pytest.fixture(scope="session")
def old_servers(tmp_path_factory):
    """old_servers("4.2.6", standalone=False) -> a running mongod of that version (a single-node
    replica set, or a standalone), started on first use and shared by the whole session. The binaries
    are fetched into the server cache on first use (sandbox.servers)."""
    started: dict[tuple[str, bool], Mongod] = {}

    def get(version: str, standalone: bool = False) -> Mongod:
        key = (version, standalone)
        if key not in started:
            kind = "standalone" if standalone else "rs"
            m = Mongod(tmp_path_factory.mktemp(f"source-{version}-{kind}"), version=version,
                       replset=None if standalone else "src" + version.replace(".", ""))
            started[key] = m.start()
        elif started[key].proc is None:  # a test stopped it
            started[key].start()
        return started[key]

    yield get
    for m in started.values():
        m.destroy()


@pytest.fixture
def old_source(old_servers):
    """old_source("4.2.6", standalone=False) -> a source mongod of that version, like `source`:
    shared by the session and emptied after the test."""
    used: list[Mongod] = []

    def get(version: str, standalone: bool = False) -> Mongod:
        m = old_servers(version, standalone)
        used.append(m)
        return m

    yield get
    close_clients()
    for m in used:
        if m.proc is None:
            m.start()
        _drop_user_databases(m)


@pytest.fixture
def src_client(source) -> MongoClient:
    with source.client() as c:
        yield c


@pytest.fixture
def dst_client(dest) -> MongoClient:
    with dest.client() as c:
        yield c


def make_spec(source: Mongod, dest: Mongod, **fields):
    data = {"source": {"uri": source.admin_uri()}, "destination": {"uri": dest.admin_uri()}}
    data.update(fields)
    return parse_spec(data)


@pytest.fixture
def spec_for(source, dest):
    """spec_for(objects=[...], name_mapping={...}, ...) -> MigrationSpec between the test mongods."""
    return lambda **fields: make_spec(source, dest, **fields)


@pytest.fixture(scope="session")
def run_cli(prefect_api):
    """Run the real `mongo-migrate` command against the session's Prefect server (session-scoped,
    so that a module fixture can start several commands at once)."""

    def run(*args: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "PREFECT_API_URL": prefect_api, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "mongo_migrate.flows.cli", "--verbose", *args], capture_output=True, text=True,
            timeout=timeout, env=full_env, cwd=ROOT,
        )

    return run


def user_collections(client: MongoClient, db: str) -> list[str]:
    return sorted(n for n in client[db].list_collection_names() if not n.startswith("system."))


def raw_documents(client: MongoClient, db: str, coll: str) -> list[bytes]:
    """Every document's exact bytes, in _id order."""
    from mongo_migrate.tasks.common import RAW

    c = client[db].get_collection(coll, codec_options=RAW)
    return [bytes(d.raw) for d in c.find({}, sort=[("_id", 1)])]  # .raw may be a memoryview


def assert_same_documents(src: MongoClient, dst: MongoClient, src_ns: str, dst_ns: str | None = None):
    sdb, _, scoll = src_ns.partition(".")
    ddb, _, dcoll = (dst_ns or src_ns).partition(".")
    a, b = raw_documents(src, sdb, scoll), raw_documents(dst, ddb, dcoll)
    assert len(a) == len(b), f"{src_ns}: {len(a)} source documents, {len(b)} on the destination"
    assert sorted(a) == sorted(b), f"{src_ns}: documents differ in their bytes"


def index_specs(client: MongoClient, ns: str) -> dict[str, dict]:
    db, _, coll = ns.partition(".")
    return {ix["name"]: {k: v for k, v in ix.items() if k != "ns"} for ix in client[db][coll].list_indexes()}


def collection_options(client: MongoClient, ns: str) -> dict:
    db, _, coll = ns.partition(".")
    info = next(client[db].list_collections(filter={"name": coll}))
    return info.get("options", {})


def load_bson(relative: str) -> list:
    """The documents of a .bson file under tests/data, as RawBSONDocuments over the file's bytes."""
    from mongo_migrate.tasks.common import RAW

    return bson.decode_all((DATA / relative).read_bytes(), RAW)


MAX_BSON = 16 * 1024 * 1024  # the largest document a server stores


def padding(_id, size: int) -> int:
    """The length of the string field "p" that makes {_id, p} a document of exactly `size` bytes."""
    return size - len(bson.encode({"_id": _id, "p": ""}))


def sized(_id, size: int) -> RawBSONDocument:
    """A document of exactly `size` bytes with this _id (a string field "p" pads it)."""
    doc = RawBSONDocument(bson.encode({"_id": _id, "p": "x" * padding(_id, size)}))
    assert len(doc.raw) == size
    return doc


def insert_large(coll, doc, attempts=5):
    return write_large(coll, lambda: coll.insert_one(doc), attempts)


def write_large(coll, write, attempts=5):
    """A 15-16 MB write (`write()`) into a mongod with a 0.25 GB cache that has seen few writes yet can be
    refused as "transaction is too large ... cache" (code 388) until its cache has warmed up: try again."""
    for attempt in range(attempts):
        try:
            return write()
        except WriteError as exc:
            if exc.code != 388 or attempt == attempts - 1:
                raise
            coll.database.warmup.insert_many([{"pad": "p" * 1000} for _ in range(1000)])
            coll.database.drop_collection("warmup")


def add_member(primary: Mongod, member: Mongod, **settings) -> None:
    """Start `member` (not initiated: it joins) and add it to `primary`'s replica set with `settings`
    (priority, votes, arbiterOnly...)."""
    member.dbpath.mkdir(parents=True, exist_ok=True)
    member.proc = subprocess.Popen(member.command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    member._wait_accepting(60)
    with primary.client() as c:
        config = c.admin.command("replSetGetConfig")["config"]
        config["version"] += 1
        config["members"].append({"_id": max(m["_id"] for m in config["members"]) + 1, "host": member.host,
                                  **settings})
        c.admin.command("replSetReconfig", config)


def insert_raw(client: MongoClient, ns: str, docs: list) -> None:
    """Insert documents as given (raw BSON or dicts); RawBSONDocuments are written byte for byte."""
    from mongo_migrate.tasks.common import RAW

    db, _, coll = ns.partition(".")
    client[db].get_collection(coll, codec_options=RAW).insert_many(docs)


__all__ = ["META_DATABASE", "MAX_BSON", "add_member", "assert_same_documents", "collection_options", "index_specs",
           "insert_large", "insert_raw", "load_bson", "make_spec", "padding", "raw_documents", "sized",
           "user_collections", "write_large", "DATA", "ROOT"]
