"""Where the migration's Slack messages go: the `SlackNotifier` block.

An incoming-webhook URL, or a bot token and a channel; both are kept as secrets. Which events are sent
is switchable, except "precheck failed", which is always sent. Sending lives in tasks/notify.py.
"""
from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

Event = Literal["precheck_failed", "migration_failed", "ready_for_cutover", "finished", "sync_alarm"]


class SlackNotifier(Block):
    """Slack messages about a migration: precheck failed, migration failed, ready for cutover, finished,
    and the sync's alarms (behind, caught up again, oplog window low)."""

    _block_type_name = "SlackNotifier"
    _block_type_slug = "slacknotifier"
    _description = (
        "Sends mongo-migrate's messages to Slack, through an incoming webhook or a bot token and "
        "a channel."
    )

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
    notify_migration_failed: bool = Field(True, title="Send 'migration failed'")
    notify_ready_for_cutover: bool = Field(True, title="Send 'ready for cutover'")
    notify_finished: bool = Field(True, title="Send 'migration finished'")
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
