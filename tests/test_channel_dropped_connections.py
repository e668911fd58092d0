"""A connection that drops after the request left must never lead to a second send (issue 15).

Each channel's real client library (twilio and Mastodon.py over requests, python-telegram-bot and
atproto over httpx) against a sandbox fake that reads the request, acts on it, then closes the
connection without answering (`drop_after`): the message exists, the client only lost the answer.
The product's retries are `send` again with the next attempt; across them the fake must have the
message exactly once. A refused connection (nothing listening: the request never left) is the
"not sent" case and is retried.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broadcaster.core.brands import Brand
from broadcaster.ledger.subscribers import Subscribers
from channels.base import ChannelError, TransientError, Uncertain
from channels.bluesky import BlueskyChannel
from channels.mastodon import MastodonChannel
from channels.sms import SmsChannel
from channels.telegram import TelegramChannel
from tests.channel_brands import SENDER, SOCIAL_BOT, SOCIAL_CHANNEL, TWILIO_AUTH, TWILIO_SID, unique
from tests.channel_direct import brand, context, dead_url, new_post, outbound

MASTODON_TOKEN = "drop-mastodon-token-0123456789"
HANDLE, PASSWORD = "dropper.test", "dropper-app-password"
NUMBER = "+12015550177"
ATTEMPTS = 3  # the first send, then the product's retries


@pytest.fixture
def fakes(sandbox, monkeypatch) -> Iterator[object]:
    sandbox.twilio.add_account(TWILIO_SID, TWILIO_AUTH)
    sandbox.mastodon.add_token(MASTODON_TOKEN, "dropper")
    sandbox.telegram.add_bot(SOCIAL_BOT, "social_bot")
    sandbox.telegram.add_chat(SOCIAL_CHANNEL, title="Social news")
    sandbox.bluesky.add_account(HANDLE, PASSWORD)
    monkeypatch.setenv("TEST_DROPPER_BSKY", PASSWORD)
    monkeypatch.setenv("TEST_DROPPER_TWILIO", TWILIO_AUTH)
    monkeypatch.setenv("TEST_DROPPER_MASTODON", MASTODON_TOKEN)
    monkeypatch.setenv("TEST_DROPPER_TELEGRAM", SOCIAL_BOT)
    yield sandbox
    for fake in (sandbox.twilio, sandbox.mastodon, sandbox.telegram, sandbox.bluesky):
        fake.heal()


def dropper(
    sandbox,
    *,
    pds: str | None = None,
    twilio: str | None = None,
    mastodon: str | None = None,
    telegram: str | None = None,
) -> Brand:
    return brand(
        "dropper",
        pds or sandbox.bluesky.url,
        "TEST_DROPPER_BSKY",
        sms={
            "account_sid": TWILIO_SID,
            "auth_token_env": "TEST_DROPPER_TWILIO",
            "from_number": SENDER,
            "api_base_url": twilio or sandbox.twilio.url,
            "rate_per_s": 50,
        },
        mastodon={
            "instance_url": mastodon or sandbox.mastodon.url,
            "access_token_env": "TEST_DROPPER_MASTODON",
        },
        telegram={
            "bot_token_env": "TEST_DROPPER_TELEGRAM",
            "chat_ids": [SOCIAL_CHANNEL],
            "api_base_url": telegram or sandbox.telegram.url,
            "chat_per_minute": 600,
            "chat_burst": 20,
        },
    )


def attempts(send, b: Brand, text: str, post: tuple[str, int], first: int = 1) -> list[object]:
    """Send as the product does: again with the next attempt while the error is retryable."""
    outcomes: list[object] = []
    for attempt in range(first, first + ATTEMPTS):
        try:
            outcomes.append(send(outbound(b, text, attempt, *post)))
        except ChannelError as e:
            outcomes.append(e)
    return outcomes


def creates(fake, endpoint: str, key: str, text: str) -> list:
    return [r for r in fake.requests.where(endpoint) if text in str((r.body or {}).get(key, ""))]


# ---- twilio / requests ---------------------------------------------------------------------------
def test_sms_dropped_after_the_request_left_is_uncertain_and_never_texted_again(fakes, direct_redis):
    ctx = context(direct_redis)
    b = dropper(fakes)
    Subscribers(direct_redis, ctx.settings, b.id).add([NUMBER])
    fakes.twilio.fail("messages", "drop_after", count=1)
    text = unique("SMS dropped")

    outcomes = attempts(SmsChannel(b, ctx).send, b, text, new_post())

    assert isinstance(outcomes[0], Uncertain), outcomes
    assert "not resent" in outcomes[0].recipients["+1201***0177"]["error"]
    assert [r.injected for r in creates(fakes.twilio, "messages.create", "Body", text)] == ["drop_after"]
    assert len([m for m in fakes.twilio.messages if m["body"] == text]) == 1  # Twilio had queued it


def test_sms_refused_connection_was_not_sent_and_is_retried(fakes, direct_redis):
    ctx = context(direct_redis)
    Subscribers(direct_redis, ctx.settings, "dropper").add([NUMBER])
    text, post = unique("SMS refused"), new_post()

    down = dropper(fakes, twilio=dead_url())
    with pytest.raises(TransientError, match="Twilio unreachable"):
        SmsChannel(down, ctx).send(outbound(down, text, 1, *post))
    up = dropper(fakes)
    receipt = SmsChannel(up, ctx).send(outbound(up, text, 2, *post))

    assert receipt.remote_id == "1 of 1 subscribers"
    assert len(creates(fakes.twilio, "messages.create", "Body", text)) == 1


# ---- Mastodon.py / requests ----------------------------------------------------------------------
def test_mastodon_dropped_after_the_request_left_keeps_one_status(fakes, direct_redis):
    # The retry is safe: it carries the same Idempotency-Key and the instance answers with the
    # status it already made (Mastodon keeps the key an hour).
    b = dropper(fakes)
    fakes.mastodon.fail("statuses", "drop_after", count=1)
    text = unique("Mastodon dropped")

    outcomes = attempts(MastodonChannel(b, context(direct_redis)).send, b, text, new_post())

    assert isinstance(outcomes[0], TransientError), outcomes
    statuses = [s for s in fakes.mastodon.statuses if s["text"].startswith(text)]
    assert len(statuses) == 1
    assert {o.remote_id for o in outcomes[1:]} == {statuses[0]["id"]}  # type: ignore[attr-defined]
    sent = creates(fakes.mastodon, "statuses.create", "status", text)
    assert len({r.headers["idempotency-key"] for r in sent}) == 1


def test_mastodon_refused_connection_is_retried(fakes, direct_redis):
    text, post = unique("Mastodon refused"), new_post()
    down = dropper(fakes, mastodon=dead_url())
    with pytest.raises(TransientError, match="Mastodon unreachable"):
        MastodonChannel(down, context(direct_redis)).send(outbound(down, text, 1, *post))
    up = dropper(fakes)
    MastodonChannel(up, context(direct_redis)).send(outbound(up, text, 2, *post))
    assert len([s for s in fakes.mastodon.statuses if s["text"].startswith(text)]) == 1


# ---- python-telegram-bot / httpx -----------------------------------------------------------------
def test_telegram_dropped_after_the_request_left_is_uncertain_and_never_resent(fakes, direct_redis):
    b = dropper(fakes)
    fakes.telegram.fail("send", "drop_after", count=1)
    text = unique("Telegram dropped")

    outcomes = attempts(TelegramChannel(b, context(direct_redis)).send, b, text, new_post())

    assert isinstance(outcomes[0], Uncertain), outcomes
    assert [r.injected for r in creates(fakes.telegram, "sendMessage", "text", text)] == ["drop_after"]
    assert len([m for m in fakes.telegram.messages if text in m["text"]]) == 1


def test_telegram_refused_connection_is_retried(fakes, direct_redis):
    text, post = unique("Telegram refused"), new_post()
    down = dropper(fakes, telegram=dead_url())
    with pytest.raises(TransientError, match="Telegram unreachable"):
        TelegramChannel(down, context(direct_redis)).send(outbound(down, text, 1, *post))
    up = dropper(fakes)
    TelegramChannel(up, context(direct_redis)).send(outbound(up, text, 2, *post))
    assert len(creates(fakes.telegram, "sendMessage", "text", text)) == 1


# ---- atproto / httpx -----------------------------------------------------------------------------
def test_bluesky_dropped_after_the_request_left_finds_its_record_instead_of_posting_again(
    fakes, direct_redis
):
    b = dropper(fakes)
    fakes.bluesky.fail("write", "drop_after", count=1)
    text = unique("Bluesky dropped")

    outcomes = attempts(BlueskyChannel(b, context(direct_redis)).send, b, text, new_post())

    assert isinstance(outcomes[0], TransientError), outcomes
    posts = [p for p in fakes.bluesky.posts if p["text"] == text]
    assert len(posts) == 1
    assert {o.remote_id for o in outcomes[1:]} == {posts[0]["uri"]}  # type: ignore[attr-defined]
    assert len(creates(fakes.bluesky, "com.atproto.repo.createRecord", "record", text)) == 1


def test_bluesky_refused_connection_is_retried(fakes, direct_redis):
    text, post = unique("Bluesky refused"), new_post()
    down = dropper(fakes, pds=dead_url())
    with pytest.raises(TransientError, match="Bluesky unreachable"):
        BlueskyChannel(down, context(direct_redis)).send(outbound(down, text, 1, *post))
    up = dropper(fakes)
    BlueskyChannel(up, context(direct_redis)).send(outbound(up, text, 2, *post))
    assert len([p for p in fakes.bluesky.posts if p["text"] == text]) == 1
