"""Where the migration's Slack messages go: the `SlackNotifier` block, as Prefect's own notification
blocks are written (prefect-slack): it owns its slack_sdk client (`get_client`) and sends (`send` for
Block Kit, `notify` for Prefect's NotificationBlock interface).

An incoming-webhook URL, or a bot token and a channel; both are kept as secrets. Which events are sent
is switchable, except "precheck failed", which is always sent. The messages are built in
tasks/notify.py. A send never raises: slack_sdk's retry handlers retry rate limits (429, honouring a
short Retry-After), server errors (5xx) and connection errors with backoff, and a Slack that stays away
costs at most `worst_case_seconds()` and one warning.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Literal

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.blocks.abstract import NotificationBlock
from pydantic import Field, SecretStr, model_validator
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (ConnectionErrorRetryHandler, RateLimitErrorRetryHandler,
                                                   ServerErrorRetryHandler)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

log = logging.getLogger("mongo_migrate.notify")
# slack_sdk logs each failed attempt as an ERROR; the one warning of `send` says it once, without the URL
_sdk_log = logging.getLogger("mongo_migrate.notify.slack_sdk")
_sdk_log.setLevel(logging.CRITICAL)

Event = Literal["precheck_failed", "migration_failed", "ready_for_cutover", "finished", "sync_alarm"]


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


def retry_handlers(notifier: "SlackNotifier") -> list[RetryHandler]:
    backoff = BackoffRetryIntervalCalculator(backoff_factor=0.5)
    n = notifier.max_retries
    return [
        ConnectionErrorRetryHandler(max_retry_count=n, interval_calculator=backoff),
        ShortRateLimitRetryHandler(n, notifier.max_retry_after_s),
        AnyServerErrorRetryHandler(max_retry_count=n, interval_calculator=backoff),
    ]


def _plain_message(body: str, subject: str | None) -> tuple[str, list[dict]]:
    text = f"{subject}: {body}" if subject else body
    blocks = ([{"type": "header", "text": {"type": "plain_text", "text": subject[:150]}}] if subject else [])
    return text, blocks + [{"type": "section", "text": {"type": "mrkdwn", "text": body[:2900]}}]


class SlackNotifier(NotificationBlock):
    """Slack messages about a migration: precheck failed, migration failed, ready for cutover, finished,
    and the sync's alarms (behind, caught up again, oplog window low)."""

    _block_type_name = "SlackNotifier"
    _block_type_slug = "slacknotifier"
    _description = (
        "Sends mongo-migrate's messages to Slack, through an incoming webhook or a bot token and "
        "a channel."
    )
    _documentation_url = "https://api.slack.com/messaging/webhooks"  # type: ignore[assignment]
    _code_example = """
```python
from mongo_migrate.blocks.slack import SlackNotifier

slack = SlackNotifier.load("BLOCK_NAME")
slack.notify("the migration of shop is finished", subject="mongo-migrate")
```
"""

    webhook_url: SecretStr | None = Field(
        None, title="Incoming-webhook URL",
        description="https://hooks.slack.com/services/... (kept secret). Leave empty to use a bot token.",
    )
    bot_token: SecretStr | None = Field(
        None, title="Bot token",
        description="xoxb-... token of a Slack app allowed to chat:write (kept secret).",
    )
    channel: str | None = Field(
        None, title="Channel", description="Channel ID or #name to post to with the bot token.",
        examples=["#db-migrations"],
    )
    api_base_url: str = Field(
        "https://slack.com/api/", title="Slack API base URL",
        description="Only change it to go through a proxy or for tests.",
    )
    notify_migration_failed: bool = Field(
        True, title="Send 'migration failed'", description="A run that failed, with its one-line reason.")
    notify_ready_for_cutover: bool = Field(
        True, title="Send 'ready for cutover'", description="The sync has caught up and waits for approval.")
    notify_finished: bool = Field(
        True, title="Send 'migration finished'", description="A run that ended, with its documents and time.")
    notify_sync_alarm: bool = Field(
        True, title="Send sync alarms",
        description="'sync behind' and 'caught up again' (incremental_options.delay_alarm_s), and "
        "'oplog window low' (incremental_options.oplog_window_alarm_s).",
    )
    timeout_s: float = Field(
        5.0, gt=0, le=60, title="Request timeout (s)",
        description="How long one request to Slack may take.",
    )
    max_retries: int = Field(
        2, ge=0, le=5, title="Retries",
        description="Retries on rate limiting (429), server errors (5xx) and connection errors.",
    )
    max_retry_after_s: float = Field(
        5.0, ge=0, le=60, title="Longest Retry-After honoured (s)",
        description="A rate limit asking to wait longer than this is not retried, so a Slack outage "
        "never holds the migration for long.",
    )

    @model_validator(mode="after")
    def _webhook_or_bot(self) -> "SlackNotifier":
        if self.webhook_url is None and self.bot_token is None:
            raise ValueError("give webhook_url, or bot_token and channel")
        if self.webhook_url is not None and self.bot_token is not None:
            raise ValueError("give webhook_url or bot_token, not both")
        if self.bot_token is not None and not self.channel:
            raise ValueError("bot_token needs a channel")
        return self

    def sends(self, event: Event) -> bool:
        """Whether this event is switched on (a failed precheck is always sent)."""
        if event == "precheck_failed":
            return True
        return bool(getattr(self, f"notify_{event}"))

    def worst_case_seconds(self) -> float:
        """An upper bound of the time one message can take, retries and waits included."""
        attempts = 1 + self.max_retries
        # backoff 0.5 * 2**n plus up to 1 s of jitter per retry, or a capped Retry-After (+1 s jitter)
        waits = sum(max(0.5 * 2 ** n, self.max_retry_after_s) + 1 for n in range(self.max_retries))
        return attempts * self.timeout_s + waits

    def get_client(self) -> WebhookClient | WebClient:
        """slack_sdk's client for this notifier (incoming webhook, or Web API with the bot token),
        with the retries and the request timeout set here."""
        if self.webhook_url is not None:
            return WebhookClient(self.webhook_url.get_secret_value(), timeout=self.timeout_s,
                                 retry_handlers=retry_handlers(self), logger=_sdk_log)
        return WebClient(token=self.bot_token.get_secret_value() if self.bot_token else None,
                         base_url=self.api_base_url, timeout=self.timeout_s,
                         retry_handlers=retry_handlers(self), logger=_sdk_log)

    def send(self, text: str, blocks: list[dict]) -> bool:
        """Post one message (Block Kit `blocks`, `text` as its fallback); True if Slack accepted it.
        Never raises: failures are logged as one warning, without the webhook URL."""
        try:
            client = self.get_client()
            if isinstance(client, WebhookClient):
                response = client.send(text=text, blocks=blocks)
                if response.status_code == 200:
                    return True
                log.warning("Slack did not take the message: HTTP %s %s", response.status_code,
                            (response.body or "")[:200])
                return False
            client.chat_postMessage(channel=self.channel, text=text, blocks=blocks)
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

    async def anotify(self, body: str, subject: str | None = None) -> bool:
        """`notify` from async code: the same send, in a worker thread."""
        return await asyncio.to_thread(self.send, *_plain_message(body, subject))

    @async_dispatch(anotify)
    def notify(self, body: str, subject: str | None = None) -> bool:  # type: ignore[override]
        """Send a plain notification (Prefect's NotificationBlock interface); True if Slack took it."""
        return self.send(*_plain_message(body, subject))
