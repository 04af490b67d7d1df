"""Credentials and TLS.

Passwords come from a Secret-backed MongoEndpoint block, the environment (password_env) or the URI
(moved to a secret on load); none of them may appear in CLI output, Prefect logs, artifacts, flow-run
parameters, task runs, block documents as the API returns them, Slack messages or the migration's state
database. The accounts have the least-privilege roles listed in the README. TLS: a mongod that
requires TLS with client certificates, with certificates made here.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import time
from pathlib import Path

import pytest
from pymongo import MongoClient

from mongo_migrate.blocks.mongo import MongoEndpoint
from mongo_migrate.blocks.spec import META_DATABASE, EndpointSpec, parse_spec
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.sandbox.mongod import Mongod
from mongo_migrate.tasks.connect import check_connectivity
from tests.conftest import assert_same_documents, raw_documents
from tests.slack_server import SlackServer

# least privilege for a full migration (README, "Security"); the precheck checks the same
SOURCE_ROLES = [{"role": "read", "db": "shop"}]
DESTINATION_ROLES = [{"role": "readWrite", "db": "shop_v2"}, {"role": "dbAdmin", "db": "shop_v2"},
                     {"role": "readWrite", "db": META_DATABASE}]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """One replica set with --auth: the source database `shop` is copied into `shop_v2` on the same
    deployment, each side by its own least-privilege user."""
    m = Mongod(tmp_path_factory.mktemp("auth"), replset="sec", auth=True).start()
    yield m
    m.destroy()


def _paged(read, **kw) -> list:
    found, offset = [], 0
    while True:
        page = read(**kw, offset=offset, limit=200)
        found += page
        if len(page) < 200:
            return found
        offset += 200


def everything_prefect_stored(since: dt.datetime) -> str:
    """Flow runs (parameters, names, state messages), their task runs and logs, every artifact and
    every block document, as the API returns them, in one string."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime, LogFilter, LogFilterFlowRunId

    # the server's task-run recorder writes what it has received once a second (SQLITE_SERVER_SETTINGS
    # in flows/temporary_server.py): the last task runs' states are in the database after that
    time.sleep(1.5)
    with get_client(sync_client=True) as client:
        runs = _paged(client.read_flow_runs, flow_run_filter=FlowRunFilter(
            start_time=FlowRunFilterStartTime(after_=since)))
        assert runs, "no flow run was recorded"
        ids = [r.id for r in runs]
        logs = _paged(client.read_logs, log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        assert logs, "no log line was recorded"
        task_runs = _paged(client.read_task_runs, flow_run_filter=FlowRunFilter(id={"any_": ids}))
        artifacts = _paged(client.read_artifacts)
        blocks = client.read_block_documents(include_secrets=False)  # as the UI and API show them
    parts = [r.model_dump_json() for r in runs + task_runs + artifacts + blocks]
    parts += [line.message for line in logs]
    return "\n".join(parts)


def test_passwords_never_shown_with_least_privilege_users(auth_server, run_cli, prefect_api, tmp_path,
                                                          monkeypatch):
    source_pw, dest_pw, wrong_pw = (f"pw-{name}-{secrets.token_hex(8)}" for name in ("src", "dst", "bad"))
    with auth_server.client() as admin:
        for user, pw, roles in (("reader", source_pw, SOURCE_ROLES), ("writer", dest_pw, DESTINATION_ROLES)):
            admin.admin.command("createUser", user, pwd=pw, roles=roles)
        admin.shop.orders.insert_many([{"_id": i, "item": f"i{i}", "qty": i % 7} for i in range(500)])
        admin.shop.orders.create_index("item", unique=True)
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)

    # the destination's password is only in a Secret-backed block; the source's is in the URI
    MongoEndpoint(uri=auth_server.uri(), username="writer", password=dest_pw, auth_source="admin").save(
        "security-destination", overwrite=True)
    with SlackServer() as slack:
        spec_file = tmp_path / "spec.json"
        spec_file.write_text(json.dumps({
            "source": {"uri": auth_server.uri("reader", source_pw)},
            "destination": {"block": "security-destination"},
            "objects": [{"database": "shop"}], "name_mapping": {"shop": "shop_v2"},
            "notifications": {"slack": {"webhook_url": slack.webhook_url}},
        }))
        ok = run_cli("run", str(spec_file), "--json")
        assert ok.returncode == 0, ok.stderr[-3000:]

        # a wrong password, from the environment: refused with one line, and not shown either
        bad_file = tmp_path / "bad.json"
        bad_file.write_text(json.dumps({
            "source": {"uri": auth_server.uri(authSource="admin"), "username": "reader",
                       "password_env": "MM_SOURCE_PW"},
            "destination": {"block": "security-destination"},
            "objects": [{"database": "shop"}], "name_mapping": {"shop": "shop_v2"},
            "notifications": {"slack": {"webhook_url": slack.webhook_url}},
        }))
        bad = run_cli("run", str(bad_file), env={"MM_SOURCE_PW": wrong_pw})
        assert bad.returncode == 2
        assert "source" in bad.stderr and "authentication failed" in bad.stderr
        time.sleep(1)  # the webhook's last message
        sent = [json.dumps(m) for m in slack.messages()]
    assert len(sent) >= 2, "Slack heard of neither run"

    with auth_server.client() as admin:
        assert_same_documents(admin, admin, "shop.orders", "shop_v2.orders")
        state = json.dumps([raw.hex() for name in admin[META_DATABASE].list_collection_names()
                            for raw in raw_documents(admin, META_DATABASE, name)])
        state += json.dumps([d for name in admin[META_DATABASE].list_collection_names()
                             for d in admin[META_DATABASE][name].find()], default=str)

    stored = everything_prefect_stored(started)
    # the grep reads the right things: the spec as a flow-run parameter, with its password masked
    assert "security-destination" in stored and '"username":"reader","password":"**********"' in stored
    for where, text in (("run stdout", ok.stdout), ("run stderr", ok.stderr), ("failed run stdout", bad.stdout),
                        ("failed run stderr", bad.stderr), ("Prefect API", stored), ("Slack", "\n".join(sent)),
                        ("mongo_migrate_meta", state)):
        for pw in (source_pw, dest_pw, wrong_pw):
            assert pw not in text, f"a password appears in {where}"


# -- TLS -----------------------------------------------------------------------------------------

def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mongo-migrate tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def issue(cn: str, usage, san: list | None) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM) + pem(key)

    files = {"ca": directory / "ca.pem", "server": directory / "server.pem", "client": directory / "client.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["server"].write_bytes(issue("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                                      [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.DNSName("localhost")]))
    files["client"].write_bytes(issue("mongo-migrate client", ExtendedKeyUsageOID.CLIENT_AUTH, None))
    return files


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """A standalone mongod that accepts only TLS connections with a client certificate of our CA."""
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    m = Mongod(tmp_path_factory.mktemp("tls"), extra_args=[
        "--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(certs["server"]),
        "--tlsCAFile", str(certs["ca"])]).start()
    yield m, certs
    m.destroy()


def test_migration_over_tls_with_a_client_certificate(src_client, source, tls_server, run_cli, tmp_path):
    server, certs = tls_server
    src_client.shop.orders.insert_many([{"_id": i, "v": "x" * i} for i in range(300)])
    destination = {"uri": server.uri(), "tls": True, "tls_ca_file": str(certs["ca"]),
                   "tls_certificate_key_file": str(certs["client"])}
    spec = parse_spec({"source": {"uri": source.admin_uri()}, "destination": destination,
                       "objects": [{"database": "shop"}]})
    summary = migrate(spec)
    assert summary.counts_match
    with MongoClient(server.uri(), tls=True, tlsCAFile=str(certs["ca"]),
                     tlsCertificateKeyFile=str(certs["client"])) as dst:
        assert_same_documents(src_client, dst, "shop.orders")
        dst.drop_database("shop")
        dst.drop_database(META_DATABASE)

    # TLS required but not used: a clear cause, from the CLI a one-line error and exit code 2
    plain = check_connectivity(EndpointSpec(uri=server.uri(), timeout_s=3), "destination")
    assert plain.cause == "tls" and "may require TLS (set tls: true)" in plain.problem
    no_cert = check_connectivity(EndpointSpec(uri=server.uri(), tls=True, tls_ca_file=str(certs["ca"]),
                                              timeout_s=3), "destination")
    assert no_cert.cause == "tls" and not no_cert.reachable
    spec_file = tmp_path / "plain.json"
    spec_file.write_text(json.dumps({"source": {"uri": source.admin_uri()},
                                     "destination": {"uri": server.uri(), "timeout_s": 3},
                                     "objects": [{"database": "shop"}]}))
    refused = run_cli("precheck", str(spec_file))
    assert refused.returncode == 2
    assert "may require TLS (set tls: true)" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
