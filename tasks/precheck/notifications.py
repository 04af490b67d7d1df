"""The Slack notifier the spec names can be loaded (no message is sent)."""
from __future__ import annotations

from mongo_migrate.blocks.spec import MigrationSpec
from mongo_migrate.tasks.precheck.report import CheckResult, check_item, passed

NOTIFICATIONS = "slack notifications"


# -- notifications -----------------------------------------------------------------------------

@check_item(NOTIFICATIONS)
def check_notifications(spec: MigrationSpec) -> CheckResult:
    """The spec's Slack notifier can be loaded (no message is sent)."""
    slack = spec.notifications.slack
    notifier = slack.resolve()
    how = "incoming webhook" if notifier.webhook_url is not None else f"bot token, channel {notifier.channel}"
    where = f"block {slack.block}" if slack.block else "webhook_url in the spec"
    return passed(NOTIFICATIONS, f"{where} ({how})")
