"""How each channel classifies what its real client library raises: retry, retry later, give up,
or per recipient (uncertain, opted out, failed).

Each case is the real library (Mastodon.py and twilio over requests, python-telegram-bot over
httpx) built the way the channel builds it, against a sandbox fake that answers the case: a
status and body as the service's API documents them, a hang, a connection dropped after the
request was read, nothing listening. No library exception is made by hand. (A whole send that
drops after the request left, across the product's retries: tests/test_channel_dropped_connections.py;
Bluesky's statuses: tests/test_channel_bluesky_statuses.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from telegram import Bot
from telegram.error import RetryAfter, TelegramError

from broadcaster.ledger import recipients
from broadcaster.sandbox import MastodonFake, TelegramFake, TwilioFake
from channels.base import ChannelError, PermanentError, RateLimited, TransientError
from channels.mastodon import MastodonChannel
from channels.sms import Attempt, SmsChannel
from channels.telegram import (
    Sent,
    certainly_not_sent,
    chat_error,
    close_bot,
    new_bot,
    retry_after_s,
    send_text,
)
from tests.channel_brands import unique
from tests.channel_direct import brand, context, dead_url, new_post, outbound

SID, AUTH = "AC" + "6" * 32, "mapping-twilio-auth-0123456789"
MASTODON_TOKEN = "mapping-mastodon-token-0123456789"
BOT = "7000009:AAmappingBotToken_0123456789abcd"
CHANNEL, GROUP = "@mapping_news", -1009000000001
SENDER, NUMBER = "+12015550100", "+12015550188"
MASKED = "+1201***0188"
# PTB warns about its own RetryAfter (the int will become a timedelta); the channel reads both.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Any]]:
    masto, tg, twilio = MastodonFake().start(), TelegramFake().start(), TwilioFake().start()
    masto.add_token(MASTODON_TOKEN, "mapping")
    tg.add_bot(BOT, "mapping_bot")
    tg.add_chat(CHANNEL, title="Mapping news")
    tg.add_chat(GROUP, title="Mapping group")
    twilio.add_account(SID, AUTH)
    yield {"mastodon": masto, "telegram": tg, "twilio": twilio}
    for fake in (masto, tg, twilio):
        fake.stop()


@pytest.fixture(autouse=True)
def _healed(fakes, monkeypatch) -> Iterator[None]:
    monkeypatch.setenv("TEST_MAPPING_MASTODON", MASTODON_TOKEN)
    monkeypatch.setenv("TEST_MAPPING_TWILIO", AUTH)
    yield
    for fake in fakes.values():
        fake.heal()


# ---- Mastodon.py ---------------------------------------------------------------------------------
def mastodon_error(fakes, direct_redis, *, url: str | None = None, **timeouts: float) -> ChannelError:
    """What MastodonChannel.send raises, the client built as the channel builds it."""
    b = brand(
        "mapping",
        "http://127.0.0.1:9",
        "UNUSED",
        mastodon={
            "instance_url": url or fakes["mastodon"].url,
            "access_token_env": "TEST_MAPPING_MASTODON",
        },
    )
    channel = MastodonChannel(b, context(direct_redis, **timeouts))
    with pytest.raises(ChannelError) as caught:
        channel.send(outbound(b, unique("Mapping"), 1, *new_post()))
    return caught.value


def test_mastodon_429_waits_until_the_reset_the_instance_announced(fakes, direct_redis):
    fakes["mastodon"].fail("statuses", "rate_limit", retry_after=30)
    e = mastodon_error(fakes, direct_redis)
    assert isinstance(e, RateLimited)
    assert 20 <= e.retry_after <= 35  # about 30 s (Mastodon.py rounds by the Date header; a busy machine)


def test_mastodon_5xx_and_timeouts_are_retried(fakes, direct_redis):
    fakes["mastodon"].fail("statuses", "error", status=500)
    server = mastodon_error(fakes, direct_redis)
    assert isinstance(server, TransientError)
    assert "500" in server.message
    fakes["mastodon"].fail("statuses", "hang")
    slow = mastodon_error(fakes, direct_redis, http_read_timeout_s=0.5)
    assert isinstance(slow, TransientError)
    assert "unreachable" in slow.message
    refused = mastodon_error(fakes, direct_redis, url=dead_url())
    assert isinstance(refused, TransientError)


def test_mastodon_bad_token_is_permanent_and_names_the_brand(fakes, direct_redis, monkeypatch):
    monkeypatch.setenv("TEST_MAPPING_MASTODON", "not-the-token")
    e = mastodon_error(fakes, direct_redis)
    assert isinstance(e, PermanentError)
    assert e.message == "Mastodon rejected the access token for brand mapping"


def test_mastodon_rejected_content_is_permanent_with_the_instances_reason(fakes, direct_redis):
    fakes["mastodon"].max_characters = 10  # the instance's limit, below ours: it answers 422
    try:
        e = mastodon_error(fakes, direct_redis)
    finally:
        fakes["mastodon"].max_characters = 500
    assert isinstance(e, PermanentError)
    assert "422 Validation failed: Text character limit of 10 exceeded" in e.message


def test_mastodon_forbidden_and_not_found_point_at_the_configuration(fakes, direct_redis):
    fakes["mastodon"].fail("statuses", "error", status=403, message="This action is not allowed")
    forbidden = mastodon_error(fakes, direct_redis)
    fakes["mastodon"].fail("statuses", "error", status=404, message="Record not found")
    missing = mastodon_error(fakes, direct_redis)
    assert isinstance(forbidden, PermanentError)
    assert "write:statuses" in forbidden.message
    assert isinstance(missing, PermanentError)
    assert "instance_url" in missing.message


# ---- python-telegram-bot -------------------------------------------------------------------------
def telegram_raises(fakes, direct_redis, use: Callable[[Bot], Awaitable[object]], **overrides: Any):
    """What PTB raises, the Bot built as the channel builds it (`channels.new_bot`)."""
    url = overrides.pop("url", None) or fakes["telegram"].url
    settings = context(direct_redis, **overrides).settings

    async def go() -> object:
        bot = new_bot(BOT, url, settings)
        try:
            return await use(bot)
        finally:
            await close_bot(bot)

    with pytest.raises(TelegramError) as caught:
        asyncio.run(go())
    return caught.value


def post_to(chat: str | int) -> Callable[[Bot], Awaitable[object]]:
    """The text send as the channel makes it (`send_text`: the Bot's request object)."""
    return lambda bot: send_text(bot, str(chat), unique("Mapping"))


def test_telegram_send_text_reads_the_answer_as_bot_send_message_does(fakes, direct_redis):
    settings = context(direct_redis).settings

    async def both() -> tuple[Sent, Sent]:
        bot = new_bot(BOT, fakes["telegram"].url, settings)
        try:
            lean = await send_text(bot, CHANNEL, unique("Lean <b>bold</b>"))
            full = await bot.send_message(chat_id=CHANNEL, text=unique("Full <b>bold</b>"), parse_mode="HTML")
            return lean, Sent.of(full)
        finally:
            await close_bot(bot)

    lean, full = asyncio.run(both())
    assert lean.username == full.username == CHANNEL.lstrip("@")
    assert lean.message_id + 1 == full.message_id
    received = [r.body for r in fakes["telegram"].requests.where("sendMessage")][-2:]
    assert {k: v for k, v in received[0].items() if k != "text"} == {
        k: v for k, v in received[1].items() if k != "text"
    }, "the same parameters as Bot.send_message sends"


def test_telegram_an_error_status_was_certainly_not_sent(fakes, direct_redis):
    fakes["telegram"].fail("send", "error", status=500)
    assert certainly_not_sent(telegram_raises(fakes, direct_redis, post_to(CHANNEL)))
    fakes["telegram"].fail("send", "html_error", status=502)  # a proxy's page, not JSON
    assert certainly_not_sent(telegram_raises(fakes, direct_redis, post_to(CHANNEL)))


def test_telegram_a_refused_connection_was_certainly_not_sent(fakes, direct_redis):
    e = telegram_raises(fakes, direct_redis, post_to(CHANNEL), url=dead_url())
    assert certainly_not_sent(e)


def test_telegram_a_read_timeout_or_a_dropped_answer_may_have_been_delivered(fakes, direct_redis):
    fakes["telegram"].fail("send", "hang")
    timed_out = telegram_raises(fakes, direct_redis, post_to(CHANNEL), http_read_timeout_s=0.5)
    fakes["telegram"].fail("send", "drop_after")
    dropped = telegram_raises(fakes, direct_redis, post_to(CHANNEL))
    assert not certainly_not_sent(timed_out)
    assert not certainly_not_sent(dropped)


def test_telegram_flood_control_gives_its_wait_in_seconds(fakes, direct_redis):
    fakes["telegram"].fail("send", "rate_limit", retry_after=7)
    e = telegram_raises(fakes, direct_redis, post_to(CHANNEL))
    assert isinstance(e, RetryAfter)
    assert retry_after_s(e) == 7.0


def test_telegram_per_chat_errors_read_as_instructions(fakes, direct_redis):
    fakes["telegram"].block_chat(CHANNEL)
    try:
        kicked = telegram_raises(fakes, direct_redis, post_to(CHANNEL))
    finally:
        fakes["telegram"].unblock_chat(CHANNEL)
    assert "blocked, removed, or not an admin" in chat_error(kicked, CHANNEL)
    missing = telegram_raises(fakes, direct_redis, post_to("@nobody_here"))
    assert "chat not found" in chat_error(missing, "@nobody_here").lower()
    # The Bot API's answer for a group that became a supergroup (parameters.migrate_to_chat_id).
    fakes["telegram"].fail(
        "send",
        "error",
        status=400,
        body={
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a supergroup chat",
            "parameters": {"migrate_to_chat_id": -1009000000002},
        },
    )
    migrated = chat_error(telegram_raises(fakes, direct_redis, post_to(GROUP)), str(GROUP))
    assert "-1009000000002" in migrated
    assert "brands file" in migrated


# ---- twilio --------------------------------------------------------------------------------------
def text_one(fakes, direct_redis, to: str = NUMBER, *, url: str | None = None, **timeouts: float) -> Attempt:
    """One number's send as SmsChannel makes it (its client, its classification)."""
    b = brand(
        "mapping",
        "http://127.0.0.1:9",
        "UNUSED",
        sms={
            "account_sid": SID,
            "auth_token_env": "TEST_MAPPING_TWILIO",
            "from_number": SENDER,
            "api_base_url": url or fakes["twilio"].url,
        },
    )
    return SmsChannel(b, context(direct_redis, **timeouts))._send_one(to, unique("Mapping"), "http://x/cb")


def test_twilio_21610_means_the_recipient_opted_out_and_is_not_retried(fakes, direct_redis):
    fakes["twilio"].opt_out(NUMBER)
    try:
        a = text_one(fakes, direct_redis)
    finally:
        fakes["twilio"].opt_in(NUMBER)
    assert a.state == recipients.OPTED_OUT
    assert a.retry is None
    assert a.fatal is None


def test_twilio_an_invalid_number_fails_that_recipient_only(fakes, direct_redis):
    a = text_one(fakes, direct_redis, to="555-1234")
    assert a.state == recipients.FAILED
    assert (a.fatal, a.retry) == (None, None)
    assert "21211" in a.error


@pytest.mark.parametrize("code", [21614, 21608])
def test_twilio_other_bad_recipient_codes_fail_that_recipient_only(fakes, direct_redis, code):
    body = {
        "code": code,
        "message": f"The 'To' number {NUMBER} is not valid.",
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": 400,
    }
    fakes["twilio"].fail("messages", "error", status=400, body=body)
    a = text_one(fakes, direct_redis)
    assert a.state == recipients.FAILED
    assert (a.fatal, a.retry) == (None, None)
    assert str(code) in a.error
    assert NUMBER not in a.error  # the number is masked in what the ledger keeps
    assert MASKED in a.error


def test_twilio_bad_credentials_fail_the_whole_delivery_naming_the_brand(fakes, direct_redis, monkeypatch):
    monkeypatch.setenv("TEST_MAPPING_TWILIO", "not-the-token")
    a = text_one(fakes, direct_redis)
    assert isinstance(a.fatal, PermanentError)
    assert a.fatal.message == "Twilio rejected the account SID or auth token for brand mapping"
    assert a.state == recipients.PENDING  # that number was not sent to


def test_twilio_429_retries_after_the_servers_wait(fakes, direct_redis):
    fakes["twilio"].fail("messages", "rate_limit", retry_after=3)
    a = text_one(fakes, direct_redis)
    assert isinstance(a.retry, RateLimited)
    assert a.retry.retry_after == 3
    assert a.state == recipients.PENDING


def test_twilio_5xx_and_refused_connections_are_retried(fakes, direct_redis):
    fakes["twilio"].fail("messages", "error", status=503)
    server = text_one(fakes, direct_redis)
    refused = text_one(fakes, direct_redis, url=dead_url())
    for a in (server, refused):
        assert a.state == recipients.PENDING
        assert isinstance(a.retry, TransientError)


def test_twilio_read_timeout_or_dropped_connection_leaves_the_recipient_uncertain(fakes, direct_redis):
    fakes["twilio"].fail("messages", "hang")
    timed_out = text_one(fakes, direct_redis, http_read_timeout_s=0.5)
    fakes["twilio"].fail("messages", "drop_after")  # the message was queued; only the answer is lost
    dropped = text_one(fakes, direct_redis)
    for a in (timed_out, dropped):
        assert a.state == recipients.UNCERTAIN
        assert a.retry is None
        assert "not resent" in a.error
