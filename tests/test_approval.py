"""Finding and answering the run that waits for cutover approval (flows/approval.py), against the real
Prefect API of the test harness: sync runs are paused there as Prefect's `pause_flow_run` pauses them
(a Paused state with the approval key and its run-input keyset, then the form), with or without the
form, under one migrate run."""
from __future__ import annotations

import time

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.input.run_input import keyset_from_paused_state, read_flow_run_input
from prefect.states import Completed, Paused, Running

from mongo_migrate.blocks.errors import ApprovalError
from mongo_migrate.flows import approval
from mongo_migrate.flows.approval import APPROVAL_KEY, SYNC_FLOW_NAME, CutoverApproval, approve_cutover, \
    waiting_for_approval


@flow(name=SYNC_FLOW_NAME)
def sync_flow() -> None:  # never called: the runs below are made through the API
    pass


@flow(name="migrate")
def migrate_flow() -> None:
    pass


@task
def sync_subflow_placeholder() -> None:
    pass


@pytest.fixture
def paused_sync_runs(prefect_api):
    """Makes a migrate run and `count` sync subflow runs under it, each paused for approval, the form saved
    where `with_form` says; returns the ids (migrate, [syncs]). The runs are ended afterwards: other tests
    on this Prefect server answer "the" waiting run."""
    made: list = []

    def make(count: int, *, with_form: list[bool]) -> tuple[str, list[str]]:
        syncs = []
        with get_client(sync_client=True) as client:
            parent = client.create_flow_run(migrate_flow, state=Running())
            made.append(parent.id)
            for k in range(count):
                placeholder = client.create_task_run(sync_subflow_placeholder, flow_run_id=parent.id,
                                                     dynamic_key=str(k))
                run = client.create_flow_run(sync_flow, parent_task_run_id=placeholder.id, state=Running())
                made.append(run.id)
                paused = Paused(pause_key=APPROVAL_KEY)
                keyset = keyset_from_paused_state(paused)
                paused.state_details.run_input_keyset = keyset
                client.set_flow_run_state(run.id, paused, force=True)
                if with_form[k]:
                    CutoverApproval.with_initial_data(description="test").save(keyset, flow_run_id=run.id)
                syncs.append(str(run.id))
        return str(parent.id), syncs

    yield make
    with get_client(sync_client=True) as client:
        for run_id in made:
            client.set_flow_run_state(run_id, Completed(), force=True)


def test_a_paused_run_without_its_form_is_not_offered_and_approve_says_so(paused_sync_runs, monkeypatch):
    monkeypatch.setattr(approval, "FORM_WAIT_S", 1)
    migrate_id, (sync_id,) = paused_sync_runs(1, with_form=[False])
    assert waiting_for_approval(sync_id) == [] and waiting_for_approval(migrate_id) == []
    started = time.monotonic()
    with pytest.raises(ApprovalError) as error:
        approve_cutover(migrate_id, note="too early")
    assert time.monotonic() - started >= 1  # it waited for the form first
    assert str(error.value).startswith(f"flow run {migrate_id} is not ready for approval yet: ")
    assert "is paused but its approval form is not saved" in str(error.value)

    # the run saves its form (as the waiting run does once the API answers): now it is answered
    keyset = keyset_from_paused_state(Paused(pause_key=APPROVAL_KEY))
    CutoverApproval.with_initial_data(description="test").save(keyset, flow_run_id=sync_id)
    assert [str(r.id) for r in waiting_for_approval(migrate_id)] == [sync_id]
    answered = approve_cutover(migrate_id, approve=False, note="now")
    assert str(answered.id) == sync_id
    assert read_flow_run_input(keyset["response"], flow_run_id=answered.id) == {"approve": False, "note": "now"}
    assert waiting_for_approval(sync_id) == []


def test_two_paused_runs_are_ambiguous_whether_or_not_their_forms_are_saved(paused_sync_runs):
    migrate_id, syncs = paused_sync_runs(2, with_form=[True, False])
    assert [str(r.id) for r in waiting_for_approval(migrate_id)] == [syncs[0]]
    started = time.monotonic()
    with pytest.raises(ApprovalError, match="^2 runs wait for cutover approval; give one: ") as error:
        approve_cutover(migrate_id)
    assert time.monotonic() - started < approval.FORM_WAIT_S  # no wait for a form when it is ambiguous anyway
    assert all(sync_id in str(error.value) for sync_id in syncs)
    # given one, the one with its form is answered
    assert str(approve_cutover(syncs[0], note="this one").id) == syncs[0]
