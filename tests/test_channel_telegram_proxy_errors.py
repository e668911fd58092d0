"""A proxy's HTML 5xx page in front of Telegram is a definite answer: not delivered, retried (issue 15).

python-telegram-bot raises it as a NetworkError chained to the JSON parse failure of the page;
that must not read as "the request left and no answer came" (`uncertain` for good).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from channels.base import TransientError
from channels.telegram import TelegramChannel
from tests.channel_brands import SOCIAL_BOT, SOCIAL_CHANNEL, unique
from tests.channel_direct import brand, context, new_post, outbound


@pytest.fixture
def telegram(sandbox, monkeypatch) -> Iterator[object]:
    sandbox.telegram.add_bot(SOCIAL_BOT, "social_bot")
    sandbox.telegram.add_chat(SOCIAL_CHANNEL, title="Social news")
    monkeypatch.setenv("TEST_PROXIED_TELEGRAM", SOCIAL_BOT)
    yield sandbox.telegram
    sandbox.telegram.heal()


@pytest.mark.parametrize("status", [502, 503])
def test_an_html_5xx_from_a_proxy_is_retried_and_then_delivered_once(telegram, direct_redis, status):
    b = brand(
        "proxied",
        "http://127.0.0.1:9",
        "TEST_UNUSED",
        telegram={
            "bot_token_env": "TEST_PROXIED_TELEGRAM",
            "chat_ids": [SOCIAL_CHANNEL],
            "api_base_url": telegram.url,
            "chat_per_minute": 600,
            "chat_burst": 20,
        },
    )
    channel = TelegramChannel(b, context(direct_redis))
    telegram.fail("send", "html_error", status=status, count=1)
    text, post = unique(f"Proxy {status}"), new_post()

    with pytest.raises(TransientError, match=f"Telegram unreachable for {SOCIAL_CHANNEL}") as first:
        channel.send(outbound(b, text, 1, *post))
    assert first.value.recipients is not None
    assert first.value.recipients[SOCIAL_CHANNEL]["state"] == "pending"
    receipt = channel.send(outbound(b, text, 2, *post))

    assert receipt.remote_id == "1 of 1 chats"
    sends = [r for r in telegram.requests.where("sendMessage") if text in str((r.body or {}).get("text"))]
    assert [(r.injected, r.status) for r in sends] == [("html_error", status), (None, 200)]
    assert len([m for m in telegram.messages if text in m["text"]]) == 1
