"""Slack messages about a migration: built as Block Kit, sent with slack_sdk, never fatal.

Every `notify_*` function returns whether Slack took the message. A Slack outage is logged as a warning
and costs at most `SlackNotifier.worst_case_seconds()`: slack_sdk's own retry handlers retry rate
limits (429, honouring a short Retry-After), server errors (5xx) and connection errors with backoff.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.webhook import WebhookClient
from slack_sdk.web import WebClient

from blocks.slack import Event, SlackNotifier

if TYPE_CHECKING:
    from blocks.spec import MigrationSpec
    from tasks.precheck import PrecheckReport

log = logging.getLogger("mongo_migrate.notify")
# slack_sdk logs each failed attempt as an ERROR; the one warning below says it once, without the URL
_sdk_log = logging.getLogger("mongo_migrate.notify.slack_sdk")
_sdk_log.setLevel(logging.CRITICAL)

MAX_TEXT = 2900  # Slack refuses section texts over 3000 characters
MAX_ITEMS = 20  # and messages over 50 blocks


class AnyServerErrorRetryHandler(ServerErrorRetryHandler):
    """slack_sdk's server-error handler retries 500 and 503 only; a proxy's 502 or 504 is as passing."""

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        return response is not None and 500 <= response.status_code < 600


class ShortRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """slack_sdk's rate-limit handler, but only when Retry-After is short: the migration never waits
    longer than `max_retry_after_s` for Slack."""

    def __init__(self, max_retry_count: int, max_retry_after_s: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_retry_after_s = max_retry_after_s

    def _can_retry(self, *, state, request, response=None, error=None) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        for name, values in response.headers.items():
            if name.lower() == "retry-after":
                try:
                    return float(values[0]) <= self.max_retry_after_s
                except (ValueError, IndexError):
                    return False
        return True  # no Retry-After: slack_sdk waits 1-2 s


def retry_handlers(notifier: SlackNotifier) -> list[RetryHandler]:
    backoff = BackoffRetryIntervalCalculator(backoff_factor=0.5)
    n = notifier.max_retries
    return [
        ConnectionErrorRetryHandler(max_retry_count=n, interval_calculator=backoff),
        ShortRateLimitRetryHandler(n, notifier.max_retry_after_s),
        AnyServerErrorRetryHandler(max_retry_count=n, interval_calculator=backoff),
    ]


def send_slack(notifier: SlackNotifier, text: str, blocks: list[dict]) -> bool:
    """Post one message; True if Slack accepted it. Never raises: failures are logged as warnings."""
    try:
        if notifier.webhook_url is not None:
            client = WebhookClient(
                notifier.webhook_url.get_secret_value(), timeout=notifier.timeout_s,
                retry_handlers=retry_handlers(notifier), logger=_sdk_log,
            )
            response = client.send(text=text, blocks=blocks)
            if response.status_code == 200:
                return True
            log.warning("Slack did not take the message: HTTP %s %s", response.status_code,
                        (response.body or "")[:200])
            return False
        web = WebClient(
            token=notifier.bot_token.get_secret_value() if notifier.bot_token else None,
            base_url=notifier.api_base_url, timeout=notifier.timeout_s,
            retry_handlers=retry_handlers(notifier), logger=_sdk_log,
        )
        web.chat_postMessage(channel=notifier.channel, text=text, blocks=blocks)
        return True
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else None
        status = exc.response.status_code if exc.response is not None else "?"
        log.warning("Slack did not take the message: HTTP %s %s", status, error or "")
    except Exception as exc:  # noqa: BLE001 - a Slack outage must never fail the migration
        # the exception text may hold the webhook URL (a secret): name only its kind and reason
        reason = getattr(exc, "reason", None) or type(exc).__name__
        log.warning("Slack could not be reached: %s", reason)
    return False


def notify(notifier: Optional[SlackNotifier], event: Event, text: str, blocks: list[dict]) -> bool:
    if notifier is None or not notifier.sends(event):
        return False
    return send_slack(notifier, text, blocks)


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
