"""Cutover approval: the form a person answers, the sync run's wait for it, and finding and answering
a waiting run (`mongo-migrate approve`; the UI's Resume button fills in the same form).

The wait is Prefect's pause (`pause_flow_run(wait_for_input=...)`): the run shows as Paused, with the
form, in the UI. It may last days while people prepare the cutover, so a Prefect API that is away for
a while (a restarted server, a network cut) must not end it: the changes keep being applied meanwhile
(the sync needs only the two databases), and the wait goes on once the API answers again.

Prefect records the pause in two steps: the Paused state, then the form (the run input's schema, which
a resume is checked against). A run is offered for approval only once both are there; if the API went
away between them, the waiting run saves the form itself when the API is back.
"""
from __future__ import annotations

import time
from typing import Callable
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId,
                                            FlowRunFilterParentFlowRunId, FlowRunFilterState, FlowRunFilterStateType)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.input.run_input import Keyset, keyset_from_paused_state, read_flow_run_input
from prefect.runtime import flow_run
from prefect.states import Paused
from pydantic import Field

from mongo_migrate.blocks.errors import ApprovalError

SYNC_FLOW_NAME = "incremental-sync"
APPROVAL_KEY = "cutover-approval"
APPROVAL_POLL_S = 2
# `approve` waits this long for a run that is paused but whose form is not saved yet (the pause's next
# request, or the run's own retry once the API answers again)
FORM_WAIT_S = 10


class CutoverApproval(RunInput):
    """The form a person fills in to approve (or decline) the cutover."""

    approve: bool = Field(
        True, title="Approve cutover",
        description="Yes: stop source writes, drain the last changes, verify and end the sync. "
        "No: end the sync now without cutover (running the spec again continues it).",
    )
    note: str = Field("", title="Note", description="Who decides and why; kept in the run's report.")


# The CLI's interactive prompt hears here that a run in this process waits for approval.
_approval_listeners: list[Callable[[str, float | None], None]] = []


def add_approval_listener(callback: Callable[[str, float | None], None]) -> None:
    _approval_listeners.append(callback)


def tell_approval_listeners(run_id: str, delay_s: float | None) -> None:
    for listener in list(_approval_listeners):
        listener(run_id, delay_s)


# -- the sync run's wait -------------------------------------------------------------------------------
def wait_for_approval(description: str, timeout_s: int, sync_error: Callable[[], BaseException | None],
                      logger) -> CutoverApproval:
    """Pause this flow run until a person answers the approval form; FlowPauseTimeout after
    `timeout_s`. If the Prefect API stops answering (Prefect's client has retried a refused or
    broken connection PREFECT_CLIENT_MAX_RETRIES times, about a minute by default), the wait goes on
    here, asking the API every APPROVAL_POLL_S, until the answer arrives or the time is up; a sync
    that fails meanwhile (`sync_error()`) ends it."""
    deadline = time.monotonic() + timeout_s
    form = CutoverApproval.with_initial_data(description=description)
    # the keys of the form and of its answer: Prefect's own naming, from the state the pause proposes
    keyset = keyset_from_paused_state(Paused(pause_key=APPROVAL_KEY))
    while True:
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise FlowPauseTimeout("no cutover approval arrived in time")
        try:
            return pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=APPROVAL_POLL_S,
                                  key=APPROVAL_KEY)
        except httpx.HTTPError as exc:
            logger.warning("the Prefect API does not answer (%s): changes keep being applied; the "
                           "approval is heard when the API is back", str(exc) or type(exc).__name__)
        answer = _answer_when_api_returns(form, keyset, deadline, sync_error, logger)
        if answer is not None:
            return answer
        # the run is not paused (the API went away before the pause was recorded): pause it now


def _answer_when_api_returns(form: type[CutoverApproval], keyset: Keyset, deadline: float,
                             sync_error: Callable[[], BaseException | None], logger) -> CutoverApproval | None:
    """Poll this run's state until the API answers: still paused, save the form if the pause could
    not, and go on polling; resumed, its answer; None if the run is not paused and has no answer (the
    pause must be proposed again)."""
    run_id = UUID(str(flow_run.get_id()))
    away: float | None = time.monotonic()
    form_saved = False
    while time.monotonic() < deadline:
        error = sync_error()
        if error is not None:
            raise error
        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run_id).state
            if away is not None:
                logger.info("the Prefect API answers again after %.0f s; the run %s", time.monotonic() - away,
                            "still waits for approval" if state is not None and state.is_paused() else
                            "has been answered")
                away = None
            if state is not None and state.is_paused():
                if not form_saved and read_flow_run_input(keyset["schema"], flow_run_id=run_id) is None:
                    # the pause was recorded, its form was not: without it no resume is accepted
                    form.save(keyset, flow_run_id=run_id)
                    logger.info("saved the approval form, which the pause could not (the API failed between the two)")
                form_saved = True
                time.sleep(APPROVAL_POLL_S)
                continue
            answer = read_flow_run_input(keyset["response"], flow_run_id=run_id)
        except httpx.HTTPError:
            time.sleep(APPROVAL_POLL_S)
            continue
        return None if answer is None else CutoverApproval(**answer)
    raise FlowPauseTimeout("no cutover approval arrived in time")


# -- finding the run that waits (for `mongo-migrate approve`) ---------------------------------------
def _paused(flow_run_filter: FlowRunFilter | None = None) -> FlowRunFilter:
    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    if flow_run_filter is None:
        return FlowRunFilter(state=state)
    return flow_run_filter.model_copy(update={"state": state})


def _paused_for_approval(run_id: str | None) -> list[FlowRun]:
    """Sync runs paused with the approval key: all of them, or the one given (a sync run's id, or the
    id of the migrate run it belongs to)."""
    flows = FlowFilter(name=FlowFilterName(any_=[SYNC_FLOW_NAME]))
    with get_client(sync_client=True) as client:
        if run_id is None:
            runs = client.read_flow_runs(flow_filter=flows, flow_run_filter=_paused())
        else:
            try:
                wanted = UUID(run_id)
            except ValueError:
                raise ApprovalError(f"{run_id!r} is not a flow run id (a UUID)") from None
            runs = client.read_flow_runs(flow_filter=flows, flow_run_filter=_paused(
                FlowRunFilter(id=FlowRunFilterId(any_=[wanted]))))
            if not runs:
                runs = client.read_flow_runs(flow_filter=flows, flow_run_filter=_paused(
                    FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[wanted]))))
    return [r for r in runs if r.state and r.state.state_details.pause_key == APPROVAL_KEY]


def _form_saved(run: FlowRun) -> bool:
    keyset = run.state.state_details.run_input_keyset if run.state else None
    return bool(keyset) and read_flow_run_input(keyset["schema"], flow_run_id=run.id) is not None


def waiting_for_approval(run_id: str | None = None) -> list[FlowRun]:
    """Sync runs waiting for cutover approval, their form saved: all of them, or the one given (a sync
    run's id, or the id of the migrate run it belongs to)."""
    return [r for r in _paused_for_approval(run_id) if _form_saved(r)]


def approve_cutover(run_id: str | None = None, *, approve: bool = True, note: str = "") -> FlowRun:
    """Resume the run waiting for cutover approval with the person's answer."""
    deadline = time.monotonic() + FORM_WAIT_S
    while True:
        paused = _paused_for_approval(run_id)
        ready = [r for r in paused if _form_saved(r)]
        if len(paused) != 1 or ready or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # paused, its form not saved yet
    which = f"flow run {run_id} is not" if run_id else "no run is"
    if not paused:
        raise ApprovalError(f"{which} waiting for cutover approval")
    if len(paused) > 1:
        raise ApprovalError(f"{len(paused)} runs wait for cutover approval; give one: "
                            + ", ".join(f"{r.id} ({r.name})" for r in paused))
    if not ready:
        raise ApprovalError(f"{which} ready for approval yet: {paused[0].name} is paused but its approval form "
                            "is not saved (the Prefect API failed while it paused; the run saves it when the "
                            "API answers it again): try again in a minute")
    resume_flow_run(ready[0].id, run_input={"approve": approve, "note": note})
    return ready[0]
