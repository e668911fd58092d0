"""An SMS refund after midnight UTC goes back to the day the segments were reserved on (issue 15).

The real channel (twilio against the fake) and real Redis; only the UTC day the budget reads is
set by the test (`subscribers.datetime`), as the minutes around midnight would set it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo

import pytest

from broadcaster.ledger import subscribers
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.subscribers import SegmentBudget, Subscribers
from channels.base import TransientError
from channels.sms import SmsChannel
from tests.channel_brands import SENDER, TWILIO_AUTH, TWILIO_SID, unique
from tests.channel_direct import PREFIX, brand, context, new_post, outbound, settings

KEPT, STOPPED = "+12015550181", "+12015550182"
BEFORE = datetime(2026, 3, 1, 23, 59, 50, tzinfo=UTC)
AFTER = datetime(2026, 3, 2, 0, 0, 10, tzinfo=UTC)


class Clock(datetime):
    """What `datetime.now` says in the budget's module."""

    at = BEFORE

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> Clock:  # type: ignore[override]
        return cls.at.astimezone(tz)  # type: ignore[return-value]


@pytest.fixture
def clock(monkeypatch) -> type[Clock]:
    Clock.at = BEFORE
    monkeypatch.setattr(subscribers, "datetime", Clock)
    return Clock


@pytest.fixture
def twilio(sandbox, monkeypatch) -> Iterator[object]:
    sandbox.twilio.add_account(TWILIO_SID, TWILIO_AUTH)
    monkeypatch.setenv("TEST_MIDNIGHT_TWILIO", TWILIO_AUTH)
    yield sandbox.twilio
    sandbox.twilio.heal()


def budget_key(day: str) -> str:
    return Keys(PREFIX).sms_budget("midnight", day)


def test_a_refund_after_midnight_goes_back_to_the_day_it_was_reserved_on(twilio, clock, direct_redis):
    b = brand(
        "midnight",
        "http://127.0.0.1:9",
        "TEST_UNUSED",
        sms={
            "account_sid": TWILIO_SID,
            "auth_token_env": "TEST_MIDNIGHT_TWILIO",
            "from_number": SENDER,
            "api_base_url": twilio.url,
            "rate_per_s": 50,
            "daily_segment_budget": 10,
        },
    )
    ctx = context(direct_redis)
    Subscribers(direct_redis, ctx.settings, b.id).add([KEPT, STOPPED])
    channel, text, post = SmsChannel(b, ctx), unique("Midnight"), new_post()

    # 23:59:50: two segments reserved on March 1st; Twilio answers 503, nothing sent.
    twilio.fail("messages", "error", status=503)
    with pytest.raises(TransientError):
        channel.send(outbound(b, text, 1, *post))
    assert direct_redis.get(budget_key("20260301")) == "2"

    # 00:00:10: the retry; one number has texted STOP meanwhile (21610: not sent, refunded).
    twilio.heal()
    twilio.opt_out(STOPPED)
    clock.at = AFTER
    receipt = channel.send(outbound(b, text, 2, *post))

    assert receipt.recipients is not None
    assert receipt.recipients["_summary"] == {"total": 2, "sent": 1, "opted_out": 1}
    assert direct_redis.get(budget_key("20260301")) == "1"  # the refund went back to March 1st
    assert direct_redis.ttl(budget_key("20260301")) > 0
    assert not direct_redis.exists(budget_key("20260302"))  # no negative counter, no key without TTL
    assert SegmentBudget(direct_redis, settings(), b.id, 10).used() == 0  # March 2nd: nothing used


def test_a_refund_never_creates_a_counter_or_goes_below_zero(clock, direct_redis):
    s = settings()
    SegmentBudget(direct_redis, s, "midnight", 10, day="20260305").refund(3)
    assert not direct_redis.exists(budget_key("20260305"))
    reserved = SegmentBudget(direct_redis, s, "midnight", 10, day="20260306")
    assert reserved.reserve(2) == (True, 2)
    reserved.refund(5)
    assert reserved.used() == 0
    assert direct_redis.ttl(budget_key("20260306")) > 0
