"""Slack: slack_sdk (webhook and Web API clients) against a real HTTP server on 127.0.0.1 that records
what it receives; the migrate flow tells it about a failed precheck, a failed migration and the end;
an outage never fails the migration and costs a bounded time."""
from __future__ import annotations

import json
import logging
import socket
import time
from urllib.parse import urlsplit

import pytest
from prefect import get_client
from prefect.settings import PREFECT_UI_URL

from mongo_migrate.blocks.slack import SlackNotifier
from mongo_migrate.blocks.spec import SpecError, parse_spec
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.sandbox.mongod import free_port
from mongo_migrate.tasks.notify import notify_migration_failed, notify_precheck_failed, notify_ready_for_cutover
from mongo_migrate.tasks.precheck import PrecheckReport, check_notifications, failed, passed
from tests.slack_server import SlackServer

TOKEN = "secret-webhook-token"  # the last part of SlackServer.webhook_url


@pytest.fixture
def slack():
    with SlackServer() as server:
        yield server


def blocks_text(message: dict) -> str:
    """Every text of a Block Kit message, one per line (headers, sections, buttons)."""
    out = []
    for b in message["blocks"]:
        if "text" in b:
            out.append(b["text"]["text"])
        for e in b.get("elements", []):
            out.append(e.get("text", {}).get("text", "") if isinstance(e.get("text"), dict) else e.get("text", ""))
    return "\n".join(out)


def button_urls(message: dict) -> list[str]:
    return [e["url"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def run_url(flow_run_id) -> str:
    return f"{PREFECT_UI_URL.value()}/runs/flow-run/{flow_run_id}"


def test_failed_precheck_tells_slack_with_items_remedies_and_run_link(src_client, dst_client, spec_for, slack):
    src_client.shop.orders.insert_many([{"_id": i} for i in range(10)])
    dst_client.shop.orders.insert_one({"_id": "already here"})
    before = sorted(dst_client.list_database_names())
    spec = spec_for(objects=[{"database": "shop"}], notifications={"slack": {"webhook_url": slack.webhook_url}})

    state = migrate(spec, return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    # nothing written: no new database (not even the migration's own state database)
    assert sorted(dst_client.list_database_names()) == before

    [message] = slack.messages()
    assert slack.received[0].path == "/services/T000/B000/" + TOKEN
    text = blocks_text(message)
    assert message["blocks"][0] == {"type": "header", "text": {
        "type": "plain_text", "text": ":x: Migration precheck failed", "emoji": True}}
    assert "*target namespaces*: already hold data: shop.orders" in text
    assert "*Remedy:* drop them, map to other names, or set copy_options.drop_existing_targets: true" in text
    assert "1 of " in text and "nothing was written" in text
    # the link goes to the migration's flow run (not the precheck subflow) in the Prefect UI
    assert button_urls(message) == [run_url(flow_run_id)]
    assert message["text"].startswith("mongo-migrate: precheck failed (target namespaces)")

    # the webhook URL is a secret: masked in the flow run's stored parameters
    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(flow_run_id).parameters
    assert parameters["spec"]["notifications"]["slack"]["webhook_url"] == "**********"
    assert TOKEN not in json.dumps(parameters)


def test_finished_migration_is_announced(src_client, spec_for, slack):
    src_client.shop.orders.insert_many([{"_id": i, "pad": "x" * 100} for i in range(300)])
    spec = spec_for(objects=[{"database": "shop"}], notifications={"slack": {"webhook_url": slack.webhook_url}})
    state = migrate(spec, return_state=True)
    summary = state.result()
    [message] = slack.messages()
    text = blocks_text(message)
    assert ":tada: Migration finished" in text and "300 documents" in text and "counts match" in text
    assert button_urls(message) == [run_url(state.state_details.flow_run_id)]
    assert summary.docs == 300


def test_slack_outage_does_not_fail_the_migration(src_client, dst_client, spec_for, slack):
    slack.answer_always(500)
    src_client.shop.orders.insert_many([{"_id": i} for i in range(50)])
    spec = spec_for(objects=[{"database": "shop"}], notifications={"slack": {"webhook_url": slack.webhook_url}})
    summary = migrate(spec)
    assert summary.counts_match and dst_client.shop.orders.count_documents({}) == 50
    # "finished" was tried three times (slack_sdk's server-error retries), then given up
    assert len(slack.received) == 3
    assert all(json.loads(r.body)["text"].startswith("mongo-migrate: migration finished") for r in slack.received)


def test_failed_migration_is_announced(src_client, dst_client, spec_for, slack):
    src_client.shop.orders.insert_many([{"_id": i} for i in range(20)])
    spec = spec_for(objects=[{"database": "shop"}], notifications={"slack": {"webhook_url": slack.webhook_url}})
    # an unfinished earlier run of this spec left its target, and a foreign document got in since:
    # the precheck lets the run resume, the verification at the end finds the stranger
    dst_client.mongo_migrate_meta.runs.insert_one({"_id": spec.digest(), "finished": False})
    dst_client.shop.orders.insert_one({"_id": "stranger"})
    state = migrate(spec, return_state=True)
    assert state.is_failed()
    [message] = slack.messages()
    text = blocks_text(message)
    assert ":rotating_light: Migration failed" in text and "*Error:* " in text
    assert "Rerun the same spec to resume" in text
    assert button_urls(message) == [run_url(state.state_details.flow_run_id)]


@pytest.fixture
def quiet_block(slack):
    """A saved SlackNotifier that has every switchable event turned off."""
    SlackNotifier(webhook_url=slack.webhook_url, notify_migration_failed=False, notify_ready_for_cutover=False,
                  notify_finished=False).save("quiet-slack", overwrite=True)
    return "quiet-slack"


def test_events_are_switchable_but_a_failed_precheck_is_always_sent(quiet_block, slack):
    spec = parse_spec({"source": {"uri": "mongodb://a"}, "destination": {"uri": "mongodb://b"},
                       "notifications": {"slack": {"block": quiet_block}}})
    assert notify_migration_failed(spec, "boom", None) is False
    assert notify_ready_for_cutover(spec, 3.0, None) is False
    assert slack.received == []
    report = PrecheckReport(items=[passed("source connectivity", "ok"),
                                   failed("destination storage", "needs 5 GB", "grow the disk")])
    assert notify_precheck_failed(spec, report, "http://ui/runs/flow-run/1") is True
    [message] = slack.messages()
    assert "*destination storage*: needs 5 GB\n*Remedy:* grow the disk" in blocks_text(message)
    # without a Prefect UI URL the message says so instead of linking
    assert button_urls(message) == ["http://ui/runs/flow-run/1"]



def test_a_slack_block_is_loaded_once_per_run_and_afresh_at_the_next(slack):
    """Loaded once per run like the endpoint blocks, so that a delay alarm or a failure is still told
    while the Prefect API is away; an edited block (another webhook) is used from the next run on."""
    from mongo_migrate.blocks.spec import forget_loaded_blocks

    SlackNotifier(webhook_url=slack.webhook_url).save("run-slack", overwrite=True)
    spec = parse_spec({"source": {"uri": "mongodb://a"}, "destination": {"uri": "mongodb://b"},
                       "notifications": {"slack": {"block": "run-slack"}}})
    forget_loaded_blocks()  # as a run starts
    assert notify_migration_failed(spec, "first", None) is True
    SlackNotifier(webhook_url=slack.webhook_url + "/edited").save("run-slack", overwrite=True)
    assert notify_migration_failed(spec, "second, same run", None) is True
    forget_loaded_blocks()  # the next run
    assert notify_migration_failed(spec, "third, next run", None) is True
    first = urlsplit(slack.webhook_url).path
    assert [r.path for r in slack.received] == [first, first, first + "/edited"]

def test_bot_token_posts_through_the_web_api(slack):
    SlackNotifier(bot_token="xoxb-test-token", channel="#migrations",
                  api_base_url=slack.api_url).save("bot-slack", overwrite=True)
    spec = parse_spec({"source": {"uri": "mongodb://a"}, "destination": {"uri": "mongodb://b"},
                       "notifications": {"slack": {"block": "bot-slack"}}})
    assert notify_ready_for_cutover(spec, 2.4, None) is True
    [request] = slack.received
    assert request.path == "/api/chat.postMessage"
    assert request.headers["authorization"] == "Bearer xoxb-test-token"
    message = request.payload
    assert message["channel"] == "#migrations"
    assert ":white_check_mark: Ready for cutover" in blocks_text(message) and "2s behind" in blocks_text(message)
    assert "No Prefect UI URL is configured" in blocks_text(message)


def test_rate_limits_are_retried_after_the_wait_slack_asks_for(slack):
    notifier = SlackNotifier(webhook_url=slack.webhook_url)
    slack.answer(429, times=2, retry_after=1)
    started = time.monotonic()
    assert notifier.send("hello", []) is True
    assert len(slack.received) == 3 and time.monotonic() - started >= 2.0

    # a Retry-After longer than the notifier accepts is not waited for
    slack.answer(429, retry_after=120)
    started = time.monotonic()
    assert notifier.send("hello", []) is False
    assert len(slack.received) == 4 and time.monotonic() - started < 2.0


@pytest.fixture
def silent_port():
    """Accepts connections, never answers: Slack hanging."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("outage", ["500", "closed port", "no answer"])
def test_an_outage_costs_a_bounded_time_and_a_warning(outage, slack, silent_port, caplog):
    url = {"500": slack.webhook_url, "closed port": f"http://127.0.0.1:{free_port()}/services/x/{TOKEN}",
           "no answer": f"http://127.0.0.1:{silent_port}/services/x/{TOKEN}"}[outage]
    if outage == "500":
        slack.answer_always(500)
    notifier = SlackNotifier(webhook_url=url, timeout_s=1, max_retries=2)
    caplog.set_level(logging.WARNING, logger="mongo_migrate.notify")
    started = time.monotonic()
    assert notifier.send("hello", []) is False
    elapsed = time.monotonic() - started
    assert elapsed <= notifier.worst_case_seconds()
    assert [r.levelname for r in caplog.records if r.name == "mongo_migrate.notify"] == ["WARNING"]
    assert TOKEN not in caplog.text
    if outage == "500":
        assert len(slack.received) == 3 and "HTTP 500" in caplog.text


def test_spec_slack_settings(slack):
    base = {"source": {"uri": "mongodb://a"}, "destination": {"uri": "mongodb://b"}}
    spec = parse_spec({**base, "notifications": {"slack": {"webhook_url": slack.webhook_url}}})
    assert TOKEN not in spec.model_dump_json() and TOKEN not in repr(spec)
    assert check_notifications(spec).status == "passed"
    for bad, message in (({}, "give either webhook_url or block"),
                         ({"webhook_url": slack.webhook_url, "block": "x"}, "give either webhook_url or block"),
                         ({"webhook_url": "hooks.slack.com/x"}, r"must be an http\(s\) URL"),
                         ({"channel": "#x"}, "unknown key")):
        with pytest.raises(SpecError, match=message):
            parse_spec({**base, "notifications": {"slack": bad}})
    missing = parse_spec({**base, "notifications": {"slack": {"block": "never-saved"}}})
    row = check_notifications(missing)
    assert row.status == "failed" and "SlackNotifier block 'never-saved' not found" in row.detail
