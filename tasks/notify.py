"""Slack messages about a migration, built as Block Kit and sent by the spec's `SlackNotifier`
(blocks/slack.py: its client, retries and the never-fatal send).

Every `notify_*` function returns whether Slack took the message; a Slack outage is a warning and
costs at most `SlackNotifier.worst_case_seconds()`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from mongo_migrate.blocks.slack import Event, SlackNotifier

if TYPE_CHECKING:
    from mongo_migrate.blocks.spec import MigrationSpec
    from mongo_migrate.tasks.precheck import PrecheckReport

log = logging.getLogger("mongo_migrate.notify")

MAX_TEXT = 2900  # Slack refuses section texts over 3000 characters
MAX_ITEMS = 20  # and messages over 50 blocks


def notify(notifier: Optional[SlackNotifier], event: Event, text: str, blocks: list[dict]) -> bool:
    if notifier is None or not notifier.sends(event):
        return False
    return notifier.send(text, blocks)


def notifier_for(spec: "MigrationSpec") -> Optional[SlackNotifier]:
    """The spec's Slack notifier, or None; a notifier that cannot be loaded is a warning here (the
    precheck reports it as a failed item)."""
    slack = spec.notifications.slack
    if slack is None:
        return None
    try:
        return slack.resolve()
    except Exception as exc:  # noqa: BLE001
        log.warning("Slack notifications are off: %s", exc)
        return None


# -- Block Kit -----------------------------------------------------------------------------------

def escape(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def header(text: str) -> dict:
    return {"type": "header", "text": {"type": "plain_text", "text": clip(text, 150), "emoji": True}}


def section(mrkdwn: str) -> dict:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(mrkdwn)}}


def run_link(run_url: Optional[str]) -> list[dict]:
    if not run_url:
        return [{"type": "context", "elements": [
            {"type": "mrkdwn", "text": "No Prefect UI URL is configured (PREFECT_UI_URL)."}]}]
    return [{"type": "actions", "elements": [{
        "type": "button", "action_id": "open_flow_run", "url": run_url,
        "text": {"type": "plain_text", "text": "Open the flow run in Prefect"},
    }]}]


def route(spec: "MigrationSpec") -> str:
    return f"`{escape(spec.source.display())}` → `{escape(spec.destination.display())}`"


def precheck_failed_message(spec: "MigrationSpec", report: "PrecheckReport",
                            run_url: Optional[str]) -> tuple[str, list[dict]]:
    failed = report.failed
    names = ", ".join(i.name for i in failed)
    text = f"mongo-migrate: precheck failed ({names}); nothing was written."
    if run_url:
        text += f" {run_url}"
    blocks = [
        header(":x: Migration precheck failed"),
        section(f"{route(spec)}\n{len(failed)} of {len(report.items)} check items failed; "
                "nothing was written to the destination."),
        {"type": "divider"},
    ]
    for item in failed[:MAX_ITEMS]:
        blocks.append(section(f"*{escape(item.name)}*: {escape(item.detail)}\n"
                              f"*Remedy:* {escape(item.remedy or 'see the detail')}"))
    if len(failed) > MAX_ITEMS:
        blocks.append(section(f"…and {len(failed) - MAX_ITEMS} more failed items in the run's table."))
    return text, blocks + run_link(run_url)


def migration_failed_message(spec: "MigrationSpec", error: str,
                             run_url: Optional[str]) -> tuple[str, list[dict]]:
    text = f"mongo-migrate: migration failed: {error}"
    blocks = [
        header(":rotating_light: Migration failed"),
        section(f"{route(spec)}\n*Error:* {escape(error)}\n"
                "Rerun the same spec to resume: finished collections and ranges are not copied again."),
    ]
    return clip(text), blocks + run_link(run_url)


def ready_for_cutover_message(spec: "MigrationSpec", lag_seconds: float,
                              run_url: Optional[str]) -> tuple[str, list[dict]]:
    text = f"mongo-migrate: ready for cutover (replication lag {lag_seconds:.0f}s)"
    blocks = [
        header(":white_check_mark: Ready for cutover"),
        section(f"{route(spec)}\nThe destination is {lag_seconds:.0f}s behind the source. Stop writes "
                "to the source, then resume the flow run to finish the cutover."),
    ]
    return text, blocks + run_link(run_url)


def finished_message(spec: "MigrationSpec", summary: Any,
                     run_url: Optional[str]) -> tuple[str, list[dict]]:
    n = len(summary.collections)
    text = (f"mongo-migrate: migration finished: {summary.docs:,} documents in {n} collections, "
            f"{summary.seconds:.0f}s")
    blocks = [
        header(":tada: Migration finished"),
        section(f"{route(spec)}\n{summary.docs:,} documents, {summary.bytes / 1e6:,.1f} MB in {n} "
                f"collections and {len(summary.views)} views; {summary.seconds:,.1f}s; counts "
                f"{'match' if summary.counts_match else 'DIFFER'}."),
    ]
    return text, blocks + run_link(run_url)


def sync_alarm_message(spec: "MigrationSpec", title: str, detail: str,
                       run_url: Optional[str]) -> tuple[str, list[dict]]:
    """":warning: Sync behind" / "the sync is 4 min behind since 10:02 UTC", caught up again, oplog
    window low."""
    text = f"mongo-migrate: {detail}"
    blocks = [header(title), section(f"{route(spec)}\n{escape(detail)}")]
    return clip(text), blocks + run_link(run_url)


def notify_precheck_failed(spec: "MigrationSpec", report: "PrecheckReport",
                           run_url: Optional[str]) -> bool:
    return notify(notifier_for(spec), "precheck_failed", *precheck_failed_message(spec, report, run_url))


def notify_migration_failed(spec: "MigrationSpec", error: str, run_url: Optional[str]) -> bool:
    return notify(notifier_for(spec), "migration_failed", *migration_failed_message(spec, error, run_url))


def notify_ready_for_cutover(spec: "MigrationSpec", lag_seconds: float, run_url: Optional[str]) -> bool:
    return notify(notifier_for(spec), "ready_for_cutover",
                  *ready_for_cutover_message(spec, lag_seconds, run_url))


def notify_finished(spec: "MigrationSpec", summary: Any, run_url: Optional[str]) -> bool:
    return notify(notifier_for(spec), "finished", *finished_message(spec, summary, run_url))


def notify_sync_alarm(spec: "MigrationSpec", title: str, detail: str, run_url: Optional[str]) -> bool:
    return notify(notifier_for(spec), "sync_alarm", *sync_alarm_message(spec, title, detail, run_url))


def flow_run_url() -> Optional[str]:
    """The Prefect UI page of the current top-level flow run (PREFECT_UI_URL + the flow run id)."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    try:
        run_id = flow_run.get_root_flow_run_id() or flow_run.get_id()
    except Exception:  # noqa: BLE001 - no API to ask: the link is only a convenience
        run_id = flow_run.get_id()
    return url_for("flow-run", obj_id=run_id) if run_id else None
