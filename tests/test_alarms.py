"""A sync that runs for days, watched: the delay alarm (Slack and Prefect events), the oplog window
left, and the spec keys that set them."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
from prefect.client.orchestration import get_client

from mongo_migrate.blocks.mongo import MongoConnection, close_clients
from mongo_migrate.blocks.spec import SpecError, parse_spec
from mongo_migrate.flows.approval import approve_cutover, waiting_for_approval
from mongo_migrate.flows.migrate import migrate
from mongo_migrate.flows.progress import (DELAY_ALARM_EVENT, DELAY_RECOVERED_EVENT, SYNC_STATUS_EVENT, ThresholdAlarm,
                                          format_duration)
from mongo_migrate.flows.status import read_status
from mongo_migrate.sandbox.mongod import Mongod
from mongo_migrate.tasks.sync.position import oplog_window_left_s
from tests.conftest import make_spec
from tests.slack_server import SlackServer
from tests.test_slack import blocks_text


def test_an_alarm_is_raised_once_after_its_delay_and_cleared_when_back():
    alarm = ThresholdAlarm(60, for_s=30)
    assert [alarm.observe(v, t) for v, t in [(None, 0), (61, 10), (90, 30), (120, 40), (200, 60),
                                             (30, 70), (20, 80), (100, 90)]] == \
        [None, None, None, "raised", None, "cleared", None, None]
    assert alarm.past_since == 90
    window = ThresholdAlarm(3600, above=False)  # the oplog window: low is bad, at once
    assert [window.observe(v, t) for v, t in [(None, 0), (7200, 1), (100, 2), (50, 3), (4000, 4)]] == \
        [None, None, "raised", None, "cleared"]
    assert [format_duration(s) for s in (None, 4.4, 240, 7500, 3 * 86400 + 4 * 3600)] == \
        ["-", "4 s", "4 min", "2 h 05 min", "3 d 4 h"]


@pytest.mark.parametrize("options, message", [
    ({"delay_alarm_s": 0}, "incremental_options.delay_alarm_s: Input should be greater than 0"),
    ({"delay_alarm_s": -5}, "incremental_options.delay_alarm_s: Input should be greater than 0"),
    ({"oplog_window_alarm_s": "a day"}, "incremental_options.oplog_window_alarm_s: not a duration: give "
                                        "seconds, or a number with s, m, h or d (e.g. 24h)"),
    ({"delay_alarm_for_s": "soon"}, "incremental_options.delay_alarm_for_s: not a duration"),
])
def test_alarm_settings_that_are_not_durations_are_refused_naming_the_key(options, message):
    base = {"source": {"uri": "mongodb://a"}, "destination": {"uri": "mongodb://b"},
            "objects": [{"database": "x"}], "migration_types": ["full", "incremental"]}
    with pytest.raises(SpecError) as exc:
        parse_spec({**base, "incremental_options": options})
    assert message in str(exc.value)
    spec = parse_spec({**base, "incremental_options": {"delay_alarm_s": "5m", "oplog_window_alarm_s": "2d"}})
    assert (spec.incremental_options.delay_alarm_s, spec.incremental_options.oplog_window_alarm_s) == (300, 172800)


def test_oplog_window_left_is_when_the_oplog_overwrites_the_position(tmp_path):
    """A 1 MB oplog written at a steady ~100 KB/s: the window left projected for the newest position
    is within 25% of the time the oplog then actually takes to drop that position."""
    doc_pad = "x" * 2000
    with Mongod(tmp_path / "tiny", replset="tinyw", oplog_size_mb=1,
                extra_args=["--syncdelay", "1"]) as m, m.client() as client:
        coll = client.w.docs
        coll.insert_many([{"pad": doc_pad} for _ in range(600)])  # the oplog is full from here on
        stop = threading.Event()

        def steady_writes(per_s: int = 50) -> None:  # on a schedule: a slow moment is caught up
            started, n = time.monotonic(), 0
            while not stop.is_set():
                due = started + n / per_s
                time.sleep(max(0.0, due - time.monotonic()))
                coll.insert_one({"pad": doc_pad})
                n += 1

        writer = threading.Thread(target=steady_writes, daemon=True)
        writer.start()
        try:
            time.sleep(10)
            oplog = client.local["oplog.rs"]
            position = oplog.find_one({}, {"ts": 1}, sort=[("$natural", -1)])["ts"]
            projected = oplog_window_left_s(MongoConnection(uri=m.admin_uri()), position, rate_window_s=8)
            projected_at = time.monotonic()
            while oplog.find_one({}, {"ts": 1}, sort=[("$natural", 1)])["ts"] <= position:
                assert time.monotonic() - projected_at < 120, "the oplog never dropped the position"
                time.sleep(0.1)
            actual = time.monotonic() - projected_at
        finally:
            stop.set()
            writer.join(10)
        close_clients()
    print(f"oplog window left: projected {projected:.1f} s, the position dropped after {actual:.1f} s")
    assert projected is not None and abs(projected - actual) <= 0.25 * actual, (projected, actual)


def read_events(prefix: str, resource_id: str) -> list:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(filter=EventFilter(
            event=EventNameFilter(prefix=[prefix]),
            resource=EventResourceFilter(id=[resource_id])), limit=50)
    return page.events


@pytest.mark.timeout(300)
def test_delay_alarm_is_sent_when_the_destination_is_slow_and_cleared_when_it_is_fast(
        source, src_client, tmp_path):
    """The destination's writes held 3 s each (failCommand blockConnection): Slack hears "sync behind"
    once, then "caught up again" once the destination is fast; both are Prefect events too."""
    started = datetime.now(timezone.utc)
    src_client.shop.orders.insert_many([{"_id": i, "n": i} for i in range(200)])
    with SlackServer() as slack, Mongod(tmp_path / "dest", replset="slowdst",
                                        extra_args=["--setParameter", "enableTestCommands=1"]) as dest, \
            dest.client() as dst_client:
        spec = make_spec(source, dest, objects=[{"database": "shop"}], migration_types=["full", "incremental"],
                         notifications={"slack": {"webhook_url": slack.webhook_url}},
                         incremental_options={"delay_alarm_s": 1, "delay_alarm_for_s": 1})
        outcome: list = []
        runner = threading.Thread(target=lambda: outcome.append(migrate(spec)), daemon=True)
        runner.start()
        writing = threading.Event()

        def writes() -> None:
            n = 1000
            while not writing.is_set():
                src_client.shop.orders.insert_one({"_id": n, "n": n})
                n += 1
                time.sleep(0.05)

        writer = threading.Thread(target=writes, daemon=True)
        try:
            deadline = time.monotonic() + 120
            while not [r for r in waiting_for_approval() if r.created >= started]:
                assert time.monotonic() < deadline and runner.is_alive(), "no approval wait"
                time.sleep(0.2)
            dst_client.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
                "failCommands": ["insert", "update", "delete"], "blockConnection": True,
                "blockTimeMS": 3000, "appName": "mongo-migrate"})
            writer.start()

            def titles() -> list[str]:
                return [m["blocks"][0]["text"]["text"] for m in slack.messages()
                        if "sync" in m["blocks"][0]["text"]["text"].lower()]

            deadline = time.monotonic() + 60
            while ":warning: Sync behind" not in titles():
                assert time.monotonic() < deadline, f"no delay alarm: {titles()}"
                time.sleep(0.2)
            dst_client.admin.command("configureFailPoint", "failCommand", mode="off")
            deadline = time.monotonic() + 60
            while ":white_check_mark: Sync caught up again" not in titles():
                assert time.monotonic() < deadline, f"the alarm was not cleared: {titles()}"
                time.sleep(0.2)
            # `mongo-migrate status` meanwhile: the sync's own last report
            waiting = read_status(spec)
        finally:
            writing.set()
            dst_client.admin.command("configureFailPoint", "failCommand", mode="off")
            for run in [r for r in waiting_for_approval() if r.created >= started]:
                approve_cutover(str(run.id), approve=False, note="alarm test done")
            runner.join(60)
        ended = read_status(spec)
        close_clients()
    assert outcome and outcome[0].sync.status == "declined"
    assert (waiting.stage, waiting.delay_from, waiting.flow_run_state) == ("waiting for approval", "sync", "RUNNING")
    assert waiting.delay_s is not None and waiting.delay_s >= 0 and waiting.oplog_window_left_s > 3600
    assert [(c.source_ns, c.docs_copied, c.done) for c in waiting.collections] == [("shop.orders", 200, True)]
    assert waiting.changes_applied > 0 and waiting.applied_up_to
    assert (ended.stage, ended.delay_from, ended.flow_run_state) == ("stopped without cutover", "saved position",
                                                                     "COMPLETED")
    assert titles() == [":warning: Sync behind", ":white_check_mark: Sync caught up again"]
    behind = blocks_text(slack.messages()[[m["blocks"][0]["text"]["text"] for m in slack.messages()]
                                          .index(":warning: Sync behind")])
    assert "behind since" in behind and "UTC (alarm over 1 s)" in behind
    resource = f"mongo-migrate.migration.{spec.digest()}"
    deadline = time.monotonic() + 30
    while True:  # the server stores events a moment after they are sent
        names = [e.event for e in read_events("mongo-migrate.sync", resource)]
        if {DELAY_ALARM_EVENT, DELAY_RECOVERED_EVENT, SYNC_STATUS_EVENT} <= set(names) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert names.count(DELAY_ALARM_EVENT) == 1 and names.count(DELAY_RECOVERED_EVENT) == 1, names
    status = next(e for e in read_events(SYNC_STATUS_EVENT, resource))
    assert {"delay_s", "oplog_window_left_s", "changes_applied"} <= set(status.payload)
