"""The sync needs the two databases, not the Prefect API (issue: endpoints resolved once).

One migration, full + incremental, with both endpoints given as saved MongoEndpoint blocks, the real
CLI talking to a real `prefect server start` through a proxy that holds every request 100 ms: each
block is loaded once in the whole run. Then, while the run waits for cutover approval, the Prefect
server is stopped for 60 s (connections refused): the source's changes keep arriving on the
destination, the run waits the outage out, hears the approval once the server is back, and cuts
over with the destination equal to the source byte for byte.

A second run meets an API that fails between the two requests recording its pause (the Paused state,
then the approval form): it is not offered for approval until it has saved its form again.

The CLI runs with PREFECT_CLIENT_MAX_RETRIES=2, so that Prefect's client gives up on the refused
connection after ~6 s instead of ~1 min of retries: the wait must outlast the client's retries.
"""
from __future__ import annotations

import json
import time

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from mongo_migrate.blocks.errors import ApprovalError
from mongo_migrate.blocks.mongo import MongoEndpoint
from mongo_migrate.flows.approval import approve_cutover, waiting_for_approval
from tests.conftest import assert_same_documents
from tests.load import SourceLoad, seed
from tests.prefect_server import DelayingProxy, PrefectServer
from tests.test_faults import write_spec
from tests.test_kills import Run

OUTAGE_S = 60


def arrival_s(src_client, dst_client, doc_id: str, timeout: float = 20) -> float | None:
    """Insert a document on the source; seconds until the destination has it (None: not in time)."""
    started = time.monotonic()
    src_client.shop.orders.insert_one({"_id": doc_id, "marker": True})
    while time.monotonic() - started < timeout:
        if dst_client.shop_v2.orders.find_one({"_id": doc_id}) is not None:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


@pytest.mark.timeout(600)
def test_block_endpoints_sync_through_a_slow_prefect_api_and_a_minute_without_it(
        source, dest, src_client, dst_client, tmp_path):
    server = PrefectServer(tmp_path / "prefect-home").start()
    proxy = DelayingProxy(server.port, delay_s=0.1).listen()
    load = None
    run = None
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api}):
            MongoEndpoint(uri=source.admin_uri()).save("outage-source", overwrite=True)
            MongoEndpoint(uri=dest.admin_uri()).save("outage-destination", overwrite=True)
        seed(src_client, docs=600)
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({
            "source": {"block": "outage-source"}, "destination": {"block": "outage-destination"},
            "migration_types": ["full", "incremental"], "objects": [{"database": "shop"}],
            "name_mapping": {"shop": "shop_v2"}}))
        load = SourceLoad(src_client, seed_docs=600, pace_s=0.02).start()
        run = Run(proxy.api, str(spec), tmp_path / "run.log", env={"PREFECT_CLIENT_MAX_RETRIES": "2"})

        def waiting():
            with temporary_settings(updates={PREFECT_API_URL: server.api}):
                return waiting_for_approval()

        assert run.wait_until(waiting, 180), f"no approval wait\n{run.tail()}"
        # the slow API is on no path of the sync: each block was loaded once, by the whole run
        for block in ("outage-source", "outage-destination"):
            loads = proxy.requests_matching(f"block_documents/name/{block}")
            assert len(loads) == 1, (block, loads)
        through_slow_api = [arrival_s(src_client, dst_client, f"slow-{k}") for k in range(5)]
        assert all(s is not None and s < 5 for s in through_slow_api), through_slow_api

        # the Prefect server goes away for a minute; the application keeps writing
        proxy.close()
        server.stop()
        away = time.monotonic()
        during_outage = []
        while time.monotonic() - away < OUTAGE_S:
            during_outage.append(arrival_s(src_client, dst_client, f"outage-{len(during_outage)}"))
            assert run.proc.poll() is None, f"the run ended while the Prefect API was away\n{run.tail()}"
            time.sleep(5)
        assert all(s is not None and s < 10 for s in during_outage), during_outage
        server.start()
        proxy.listen()

        assert run.wait_until(lambda: run.saw("the Prefect API answers again"), 120), run.tail()
        load.stop()  # a person stops the application's writes, then approves
        with temporary_settings(updates={PREFECT_API_URL: server.api}):
            approve_cutover(note="after a minute without Prefect")
        assert run.proc.wait(240) == 0, run.tail()
    finally:
        if load is not None:
            load._stop.set()
        if run is not None and run.proc.poll() is None:
            run.kill()
        proxy.close()
        server.stop()
    assert run.saw("the Prefect API does not answer"), run.tail()
    assert len(during_outage) >= 8
    for coll in ("orders", "items"):
        assert_same_documents(src_client, dst_client, f"shop.{coll}", f"shop_v2.{coll}")


@pytest.mark.timeout(400)
def test_a_pause_whose_form_the_api_refused_is_offered_for_approval_once_the_run_saved_it_again(
        source, dest, src_client, dst_client, tmp_path):
    """Prefect records a pause in two requests: the Paused state, then the form (the run input's schema,
    which a resume is checked against). Here the API refuses the second (the proxy cuts every run-input
    POST): the paused run is not offered for approval and `approve` says why, instead of failing in
    Prefect's resume; once the API takes the form, the waiting run saves it itself and the approval
    goes through."""
    server = PrefectServer(tmp_path / "prefect-home").start()
    proxy = DelayingProxy(server.port, delay_s=0).listen()
    proxy.refuse(r"^POST /api/flow_runs/[^/ ]+/input ")
    run = None
    try:
        seed(src_client, docs=300)
        spec = write_spec(tmp_path / "spec.json", source, dest, migration_types=["full", "incremental"],
                          objects=[{"database": "shop"}], name_mapping={"shop": "shop_v2"})
        run = Run(proxy.api, str(spec), tmp_path / "run.log", env={"PREFECT_CLIENT_MAX_RETRIES": "2"})
        assert run.wait_until(lambda: run.saw("the Prefect API does not answer"), 180), run.tail()
        assert proxy.requests_matching(r"^POST /api/flow_runs/[^/ ]+/input ")
        with temporary_settings(updates={PREFECT_API_URL: server.api}):
            assert waiting_for_approval() == []
            with pytest.raises(ApprovalError, match="is paused but its approval form is not saved"):
                approve_cutover(note="too early")
            # the changes go on meanwhile
            arrived = arrival_s(src_client, dst_client, "while-paused-without-form")
            assert arrived is not None and arrived < 10, arrived

            proxy.refuse(None)
            assert run.wait_until(waiting_for_approval, 60), run.tail()
            assert run.wait_until(lambda: run.saw("saved the approval form"), 10), run.tail()
            approve_cutover(note="form saved again")
        assert run.proc.wait(240) == 0, run.tail()
    finally:
        if run is not None and run.proc.poll() is None:
            run.kill()
        proxy.close()
        server.stop()
    for coll in ("orders", "items"):
        assert_same_documents(src_client, dst_client, f"shop.{coll}", f"shop_v2.{coll}")
