"""The Redis side of fan-out channels, on real Redis: pacing buckets shared by every worker, and
per-recipient claim markers that turn a send cut short into `uncertain` instead of a second copy."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from broadcaster.core.settings import Settings
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.pacing import Bucket, Pacer
from broadcaster.ledger.recipients import Recipients
from tests.harness import KEY_PREFIX, REDIS_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(redis_available) -> Iterator[Settings]:
    prefix = f"{KEY_PREFIX}fanout:{uuid.uuid4().hex[:8]}:"
    yield Settings(_env_file=None, redis_url=REDIS_URL, key_prefix=prefix)
    for key in redis_available.scan_iter(f"{prefix}*"):
        redis_available.delete(key)


# ---- pacing --------------------------------------------------------------------------------------
def test_a_bucket_grants_its_burst_then_says_how_long_until_the_next_token(redis_available, settings):
    pacer = Pacer(redis_available)
    bucket = Bucket(Keys(settings.key_prefix).pace("b"), rate_per_s=0.5, burst=2)
    first = pacer.take([bucket], want=5)
    assert first.granted == 2
    second = pacer.take([bucket])
    assert second.granted == 0
    assert 1.5 < second.wait_s <= 2.0  # one token every 2 s


def test_a_second_process_sees_the_same_bucket(redis_available, settings):
    bucket = Bucket(Keys(settings.key_prefix).pace("shared"), rate_per_s=0.1, burst=1)
    assert Pacer(redis_available).take([bucket]).granted == 1
    assert Pacer(redis_available).take([bucket]).granted == 0  # another worker, same Redis


def test_buckets_taken_together_are_not_drained_when_one_is_empty(redis_available, settings):
    pacer = Pacer(redis_available)
    bot = Bucket(Keys(settings.key_prefix).pace("bot"), rate_per_s=0.1, burst=5)
    chat = Bucket(Keys(settings.key_prefix).pace("chat"), rate_per_s=0.1, burst=1)
    assert pacer.take([bot, chat]).granted == 1
    assert pacer.take([bot, chat]).granted == 0  # the chat is empty...
    other_chat = Bucket(Keys(settings.key_prefix).pace("chat2"), rate_per_s=0.1, burst=5)
    assert pacer.take([bot, other_chat], want=4).granted == 4  # ...and the bot kept its tokens


# ---- recipients ----------------------------------------------------------------------------------
def test_the_recipient_snapshot_is_taken_once(redis_available, settings):
    rc = Recipients(redis_available, settings, "p_1", "sms")
    assert rc.start(["+12015550111", "+12015550112", "+12015550111"]) == 2
    assert rc.start(["+12015550113"]) == 2  # a retry keeps the first snapshot
    assert sorted(rc.todo(10)) == ["+12015550111", "+12015550112"]
    assert rc.counts() == {"pending": 2}


def test_a_recipient_claimed_by_a_run_that_was_lost_becomes_uncertain_and_is_not_sent_again(
    redis_available, settings
):
    rc = Recipients(redis_available, settings, "p_2", "telegram")
    rc.start(["@news", "-100"])
    assert rc.claim("@news", attempt=1) == "go"
    # ... the worker dies here, before recording anything. The next run:
    assert rc.claim("@news", attempt=2) == "uncertain"
    assert rc.claim("@news", attempt=3) == "done"
    assert rc.claim("-100", attempt=2) == "go"
    rc.record("-100", "sent", message_id=7)
    assert rc.open_count() == 0
    assert rc.counts() == {"pending": 0, "sending": 0, "uncertain": 1, "sent": 1}
    assert rc.entry("@news")["state"] == "uncertain"


def test_a_recipient_that_certainly_was_not_sent_is_tried_again(redis_available, settings):
    rc = Recipients(redis_available, settings, "p_3", "sms")
    rc.start(["+12015550111"])
    assert rc.claim("+12015550111", attempt=1) == "go"
    rc.record("+12015550111", "pending", error="Twilio answered 503")
    assert rc.todo(5) == ["+12015550111"]
    assert rc.claim("+12015550111", attempt=2) == "go"
    assert "error" not in rc.entry("+12015550111")


def test_the_public_view_masks_numbers_and_counts_twilio_statuses(redis_available, settings):
    rc = Recipients(redis_available, settings, "p_4", "sms")
    rc.start(["+12015550111", "+12015550112"])
    for n in ("+12015550111", "+12015550112"):
        rc.claim(n, attempt=1)
        rc.record(n, "sent", sid=f"SM{n[-3:]}", status="queued")
    assert rc.set_status("+12015550111", "delivered")
    assert not rc.set_status("+12015550111", "sent")  # stale: arrived after "delivered"
    assert rc.set_status("+12015550112", "undelivered", "30003")
    assert not rc.set_status("+19999999999", "delivered")  # not one of this post's recipients
    public = rc.public(shown=10)
    assert public["_summary"] == {"total": 2, "sent": 2, "delivered": 1, "undelivered": 1}
    assert public["+1201***0111"] == {"state": "sent", "sid": "SM111", "status": "delivered"}
    assert public["+1201***0112"]["error_code"] == "30003"
    assert "+12015550111" not in str(public)
    assert set(rc.public(shown=1)) == {"_summary"}  # long lists show only the summary
