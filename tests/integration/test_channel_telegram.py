"""Telegram end to end: API -> Redis -> Celery worker -> python-telegram-bot -> the sandbox Bot API."""

from __future__ import annotations

import time

import pytest

from tests.channel_brands import (
    PACED,
    PACED_CHANNEL,
    SOCIAL,
    SOCIAL_CHANNEL,
    SOCIAL_GROUP,
    WRONGKEYS,
    delivery,
    final,
    queue,
    unique,
)
from tests.harness import wait_for, wait_quiet

pytestmark = pytest.mark.integration


@pytest.fixture
def telegram(stack):
    fake = stack.sandbox.telegram
    yield fake
    fake.heal()


def messages_with(fake, text: str) -> list[dict]:
    return [m for m in fake.messages if m["text"].startswith(text)]


def sends_with(fake, text: str):
    return [
        r for r in fake.requests.where("sendMessage") if str((r.body or {}).get("text", "")).startswith(text)
    ]


def test_it_sends_escaped_html_to_every_chat_and_tracks_each(api, telegram):
    text = unique("Prices < $5 & *today* only <b>really</b>")
    link = "https://social.example/deal?a=1&b=2"
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, link=link, channels=["telegram"])["id"])

    d = delivery(post, "telegram")
    assert d["state"] == "delivered", d
    assert d["attempts"] == 1
    got = messages_with(telegram, text)
    assert len(got) == 2
    for m in got:  # what a reader sees: the text exactly as written, the link as a link
        assert m["text"] == f"{text}\n{link}"
        assert m["parse_mode"] == "HTML"
        assert {"type": "text_link", "url": link}.items() <= m["entities"][-1].items()
    assert {m["chat_ref"] for m in got} == {SOCIAL_CHANNEL, str(SOCIAL_GROUP)}
    recipients = d["recipients"]
    assert recipients["_summary"] == {"total": 2, "sent": 2}
    channel_msg = next(m for m in got if m["chat_ref"] == SOCIAL_CHANNEL)
    assert recipients[SOCIAL_CHANNEL]["message_id"] == channel_msg["message_id"]
    assert d["url"] == f"https://t.me/social_news/{channel_msg['message_id']}"
    assert recipients[str(SOCIAL_GROUP)]["state"] == "sent"


def test_one_blocked_chat_does_not_fail_the_others(api, telegram):
    telegram.block_chat(SOCIAL_GROUP)
    try:
        text = unique("Blocked in one chat")
        post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["telegram"])["id"])
    finally:
        telegram.unblock_chat(SOCIAL_GROUP)

    d = delivery(post, "telegram")
    assert d["state"] == "delivered"
    assert d["attempts"] == 1
    assert d["recipients"]["_summary"] == {"total": 2, "sent": 1, "failed": 1}
    group = d["recipients"][str(SOCIAL_GROUP)]
    assert group["state"] == "failed"
    assert "may not post in -1001000000001" in group["error"]
    assert [m["chat_ref"] for m in messages_with(telegram, text)] == [SOCIAL_CHANNEL]
    assert len(sends_with(telegram, text)) == 2  # the blocked chat was tried once, not retried


def test_flood_control_is_waited_out_and_nobody_gets_a_copy_twice(api, telegram):
    telegram.fail("send", "rate_limit", retry_after=1, count=1)
    text = unique("Flood control")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["telegram"])["id"])

    d = delivery(post, "telegram")
    assert d["state"] == "delivered"
    assert d["attempts"] == 1  # flood control does not use an attempt
    sends = sends_with(telegram, text)
    assert [r.status for r in sends].count(429) == 1
    limited = next(r for r in sends if r.status == 429)
    retried = [r for r in sends if r.body["chat_id"] == limited.body["chat_id"] and r.status == 200]
    assert retried[0].at - limited.at >= 1.0  # no sooner than Telegram's retry_after
    assert sorted(m["chat_ref"] for m in messages_with(telegram, text)) == sorted(
        [SOCIAL_CHANNEL, str(SOCIAL_GROUP)]
    )


def test_a_server_error_is_retried_for_that_chat_only(api, telegram):
    telegram.fail("send", "error", status=502, count=1)
    text = unique("Bad gateway")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["telegram"])["id"])

    d = delivery(post, "telegram")
    assert d["state"] == "delivered"
    assert d["attempts"] == 2
    assert len(sends_with(telegram, text)) == 3  # one 502, then one success per chat
    assert len(messages_with(telegram, text)) == 2


def test_a_timeout_after_the_request_left_marks_that_chat_uncertain_and_never_resends(api, stack, telegram):
    telegram.fail("send", "slow", delay=3, count=1)  # the worker waits 2 s; the server still delivers
    text = unique("Slow Telegram")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["telegram"])["id"])

    d = delivery(post, "telegram")
    assert d["state"] == "delivered"
    assert d["recipients"]["_summary"] == {"total": 2, "sent": 1, "uncertain": 1}
    [uncertain] = [name for name, e in d["recipients"].items() if e.get("state") == "uncertain"]
    assert "not resent" in d["recipients"][uncertain]["error"]
    wait_for(lambda: len(messages_with(telegram, text)) == 2, timeout=5, what="the slow send to land")
    wait_quiet(stack.store(), telegram, posts=[post["id"]])  # a (wrong) resend would have happened by now
    assert len(sends_with(telegram, text)) == 2
    assert len(messages_with(telegram, text)) == 2  # each chat exactly once


def test_when_the_only_chat_is_uncertain_the_delivery_is_uncertain_not_retried(api, telegram):
    telegram.fail("send", "slow", delay=3, count=1)
    text = unique("Only chat slow")
    post = final(api, PACED, queue(api, PACED, text=text, channels=["telegram"])["id"])

    d = delivery(post, "telegram")
    assert d["state"] == "uncertain"
    assert d["attempts"] == 1
    assert d["error"].startswith("no chats known to have the post; some may: @paced_news: Telegram timed out")
    assert post["state"] == "failed"  # nothing is known to have arrived
    wait_for(lambda: messages_with(telegram, text), timeout=5, what="the slow send to land")
    assert len(sends_with(telegram, text)) == 1


def test_a_rejected_bot_token_fails_at_once_naming_the_brand(api, telegram):
    text = unique("Wrong bot")
    post = final(api, WRONGKEYS, queue(api, WRONGKEYS, text=text, channels=["telegram"])["id"])

    d = delivery(post, "telegram")
    assert d["state"] == "failed"
    assert d["attempts"] == 1
    assert d["error"].startswith("Telegram rejected the bot token for brand wrongkeys")
    assert messages_with(telegram, text) == []


def test_sends_to_one_channel_are_paced_below_its_flood_limit_without_using_attempts(api, telegram):
    # The paced brand allows a burst of 2 per chat, then 18 a minute (one every 3.3 s).
    texts = [unique(f"Paced {i}") for i in range(3)]
    before = time.time()  # no token of this test was taken before this
    ids = [queue(api, PACED, text=t, channels=["telegram"])["id"] for t in texts]
    posts = [final(api, PACED, i, timeout=30) for i in ids]

    for post in posts:
        d = delivery(post, "telegram")
        assert d["state"] == "delivered"
        assert d["attempts"] == 1  # waiting for the pace is not a failed attempt
    sent_at = sorted(r.at for t in texts for r in sends_with(telegram, t))
    assert len(sent_at) == 3
    assert all(m["chat_ref"] == PACED_CHANNEL for t in texts for m in messages_with(telegram, t))
    # The bucket holds at most 2, so the third token comes 60/18 s after the first was taken at
    # the earliest, and the first was taken after `before`. (Measured from the first message's
    # arrival instead, a slow first request on a busy host shortened the gap below the pace.)
    assert sent_at[2] - before >= 60 / 18


def test_the_worker_sends_on_one_event_loop_per_pool_process(api, telegram, stack):
    text = unique("Loop check")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["telegram"])["id"])

    assert delivery(post, "telegram")["state"] == "delivered"
    log = stack.worker.log_text()
    assert "asyncio loop ready in pool process" in log  # made in worker_process_init
    assert "no per-process event loop offered" not in log  # never the asyncio.run() fallback
