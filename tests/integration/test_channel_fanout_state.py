"""The Redis side of fan-out channels, on real Redis: pacing buckets shared by every worker,
per-recipient claim markers that turn a send cut short into `uncertain` instead of a second copy,
and a run's two round trips: its claims in one step, its outcomes with the delivery's record."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from broadcaster.core.models import Delivery, Post, now_utc
from broadcaster.core.settings import Settings
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.pacing import Bucket, Pacer
from broadcaster.ledger.recipients import Recipients, Reservation, Roster
from broadcaster.ledger.store import Store
from broadcaster.ledger.subscribers import SegmentBudget, Subscribers
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
def _snapshot(r, settings, post_id: str, channel: str, people: list[str]) -> Recipients:
    """A delivery's recipients as its first run snapshots them (claiming nobody yet)."""
    Roster(Recipients(r, settings, post_id, channel), 10).take(1, want=0, people=people)
    return Recipients(r, settings, post_id, channel)


def test_the_recipient_snapshot_is_taken_once(redis_available, settings):
    rc = _snapshot(redis_available, settings, "p_1", "sms", ["+12015550111", "+12015550112", "+12015550111"])
    assert rc.total() == 2
    _snapshot(redis_available, settings, "p_1", "sms", ["+12015550113"])  # a retry keeps the first
    assert rc.total() == 2
    assert set(rc.raw_entries()) == set()
    assert rc.open_count() == 2
    assert rc.counts() == {"pending": 2}


def test_a_recipient_claimed_by_a_run_that_was_lost_becomes_uncertain_and_is_not_sent_again(
    redis_available, settings
):
    rc = _snapshot(redis_available, settings, "p_2", "telegram", ["@news", "-100"])
    assert rc.claim("@news", attempt=1) == "go"
    # ... the worker dies here, before recording anything. The next run:
    assert rc.claim("@news", attempt=2) == "uncertain"
    assert rc.claim("@news", attempt=3) == "done"
    assert rc.claim("-100", attempt=2) == "go"
    rc.record("-100", "sent", message_id=7)
    assert rc.open_count() == 0
    assert rc.counts() == {"uncertain": 1, "sent": 1}
    assert rc.entry("@news")["state"] == "uncertain"


def test_a_recipient_that_certainly_was_not_sent_is_tried_again(redis_available, settings):
    number = "+12015550111"
    first = Roster(Recipients(redis_available, settings, "p_3", "sms"), 10)
    assert first.take(1, want=5, people=[number]).claimed == [number]
    first.record(number, "pending", error="Twilio answered 503")
    first.flush()
    second = Roster(Recipients(redis_available, settings, "p_3", "sms"), 10)
    assert second.take(2, want=5, people=[number]).claimed == [number]  # its entry: our rules decide
    entry = Recipients(redis_available, settings, "p_3", "sms").entry(number)
    assert (entry["state"], entry["attempt"]) == ("sending", 2)
    assert "error" not in entry
    assert second.counts() == {"sending": 1}


def test_the_public_view_masks_numbers_and_counts_twilio_statuses(redis_available, settings):
    rc = _snapshot(redis_available, settings, "p_4", "sms", ["+12015550111", "+12015550112"])
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


# ---- a run: its claims in one step, its outcomes with the delivery's record ---------------------
def _roster(r, settings, post_id: str, channel: str = "telegram", shown: int = 10) -> Roster:
    return Roster(Recipients(r, settings, post_id, channel), shown)


def _delivery(r, settings, channel: str = "telegram") -> tuple[Store, str]:
    """A post whose `channel` delivery a worker has claimed (attempt 1)."""
    store = Store(r, settings)
    now = now_utc()
    post = Post(id=f"p_{uuid.uuid4().hex}", brand="acme", text="hi", scheduled_at=now, created_at=now)
    store.create_post(post, [Delivery(channel=channel)])
    store.claim(post.id, channel, time.time(), 30, True, time.time() + 100)
    return store, post.id


def test_a_run_snapshots_takes_its_tokens_and_claims_before_any_send(redis_available, settings):
    roster = _roster(redis_available, settings, "p_5")
    chat = Bucket(Keys(settings.key_prefix).pace("chat", ""), rate_per_s=0.1, burst=1)
    taken = roster.take(1, want=3, own=chat, people=["@a", "@b", "-100"])
    assert sorted(taken.claimed) == ["-100", "@a", "@b"]
    assert taken.wait_s is None
    assert not taken.more
    rc = Recipients(redis_available, settings, "p_5", "telegram")
    assert {e["state"] for e in rc.entries().values()} == {"sending"}  # claimed: in Redis already
    assert rc.counts() == {"sending": 3}
    assert roster.counts() == rc.counts()
    # Each chat spent its own token: a second post to the same chats waits for them.
    later = _roster(redis_available, settings, "p_6").take(1, want=3, own=chat, people=["@a", "@b", "-100"])
    assert later.claimed == []
    assert 9 < later.wait_s <= 10  # one token every 10 s


def test_a_run_claims_no_more_than_the_shared_bucket_grants(redis_available, settings):
    bot = Bucket(Keys(settings.key_prefix).pace("bot"), rate_per_s=1, burst=2)
    roster = _roster(redis_available, settings, "p_7")
    taken = roster.take(1, want=3, shared=[bot], people=["@a", "@b", "@c"])
    assert len(taken.claimed) == 2
    assert 0 < taken.wait_s <= 1
    assert roster.open_count() == 3  # two sending, one pending: none has an outcome yet


def test_a_run_cut_short_leaves_its_claims_and_the_next_run_marks_them_uncertain(redis_available, settings):
    people = ["@a", "-100"]
    first = _roster(redis_available, settings, "p_8")
    assert sorted(first.take(1, want=2, people=people).claimed) == ["-100", "@a"]
    first.record("@a", "sent", message_id=1)  # ... and the worker dies before anything is written
    second = _roster(redis_available, settings, "p_8")
    taken = second.take(2, want=2, people=people)
    assert taken.claimed == []
    entries = Recipients(redis_available, settings, "p_8", "telegram").entries()
    assert {rid: e["state"] for rid, e in entries.items()} == {"@a": "uncertain", "-100": "uncertain"}
    assert second.open_count() == 0
    assert second.counts() == {"uncertain": 2}


def test_a_delivered_run_writes_its_outcomes_with_the_delivery_in_one_step(redis_available, settings):
    store, post_id = _delivery(redis_available, settings)
    roster = _roster(redis_available, settings, post_id)
    for chat in roster.take(1, want=2, people=["@a", "@b"]).claimed:
        roster.record(chat, "sent", message_id=7)
    rc = Recipients(redis_available, settings, post_id, "telegram")
    assert {e["state"] for e in rc.entries().values()} == {"sending"}  # kept by the run so far
    assert store.delivered(
        post_id, "telegram", "2 of 2 chats", None, roster.public(), outcomes=roster.outcomes()
    )
    assert {e["state"] for e in rc.entries().values()} == {"sent"}
    assert rc.counts() == {"sent": 2}
    assert rc.open_count() == 0
    assert store.load(post_id)[1]["telegram"].recipients["_summary"] == {"total": 2, "sent": 2}


def test_outcomes_whose_delivery_is_no_longer_the_runs_are_written_all_the_same(redis_available, settings):
    store, post_id = _delivery(redis_available, settings)
    roster = _roster(redis_available, settings, post_id)
    [chat] = roster.take(1, want=1, people=["@a"]).claimed
    roster.record(chat, "sent", message_id=7)
    store.fail(post_id, "telegram", "taken over meanwhile")  # the delivery left `sending`
    assert store.delivered(post_id, "telegram", "1 of 1 chats", None, outcomes=roster.outcomes()) is None
    assert Recipients(redis_available, settings, post_id, "telegram").entry("@a")["state"] == "sent"


def test_a_status_callback_that_came_before_the_outcome_is_kept(redis_available, settings):
    store, post_id = _delivery(redis_available, settings, "sms")
    roster = _roster(redis_available, settings, post_id, "sms")
    number = "+12015550111"
    [claimed] = roster.take(1, want=1, people=[number]).claimed
    roster.record(claimed, "sent", sid="SM1", status="queued")
    rc = Recipients(redis_available, settings, post_id, "sms")
    assert rc.set_status(number, "delivered")  # Twilio was quicker than the run's write
    store.delivered(post_id, "sms", "1 of 1 subscribers", None, roster.public(), outcomes=roster.outcomes())
    entry = rc.entry(number)
    assert (entry["state"], entry["sid"], entry["status"]) == ("sent", "SM1", "delivered")
    assert rc.counts() == {"sent": 1, "delivered": 1}


def test_a_first_sms_run_reserves_the_segments_of_every_subscriber_or_none(redis_available, settings):
    subscribers = Subscribers(redis_available, settings, "acme")
    subscribers.add(["+12015550111", "+12015550112"])
    budget = SegmentBudget(redis_available, settings, "acme", 5)
    refused = _roster(redis_available, settings, "p_9", "sms").take(
        1, want=4, subscribers_key=subscribers.key, reserve=Reservation(budget, segments=3)
    )
    assert (refused.status, refused.used, refused.need, refused.people) == ("over budget", 0, 6, 2)
    assert budget.used() == 0
    assert Recipients(redis_available, settings, "p_9", "sms").total() == 0  # no snapshot either
    taken = _roster(redis_available, settings, "p_10", "sms").take(
        1, want=4, subscribers_key=subscribers.key, reserve=Reservation(budget, segments=2)
    )
    assert sorted(taken.claimed) == ["+12015550111", "+12015550112"]
    assert budget.used() == 4
    assert Recipients(redis_available, settings, "p_10", "sms").budget_day() == budget.day
    nobody = Subscribers(redis_available, settings, "nobody")
    assert (
        _roster(redis_available, settings, "p_11", "sms").take(1, 4, subscribers_key=nobody.key).status
        == "empty"
    )


# ---- the keys a delivery keeps --------------------------------------------------------------------
def _keys_of(r, settings, post_id: str) -> set[str]:
    return {k.removeprefix(settings.key_prefix) for k in r.scan_iter(f"{settings.key_prefix}*{post_id}*")}


def test_a_finished_fan_out_delivery_keeps_one_key_per_channel(redis_available, settings):
    r = redis_available
    store, post_id = _delivery(r, settings)
    roster = _roster(r, settings, post_id)
    for chat in roster.take(1, want=2, people=["@a", "-100"]).claimed:
        roster.record(chat, "sent", message_id=7)
    assert store.delivered(post_id, "telegram", "2 of 2", None, roster.public(), outcomes=roster.outcomes())
    numbers = ["+12015550111", "+12015550112"]
    Subscribers(r, settings, "acme").add(numbers)
    budget = SegmentBudget(r, settings, "acme", 10)
    sms = _roster(r, settings, post_id, "sms")
    taken = sms.take(
        1, want=4, subscribers_key=Subscribers(r, settings, "acme").key, reserve=Reservation(budget, 1)
    )
    assert _keys_of(r, settings, post_id) == {
        f"post:{post_id}",
        f"rcpt:{post_id}:telegram",
        f"rcpt:{post_id}:sms",
        f"rcpt:{post_id}:sms:todo",  # open recipients: a set while the delivery runs
    }
    sms.record(taken.claimed[0], "sent", sid="SM1", status="queued")
    sms.record(taken.claimed[1], "failed", error="Twilio: not a mobile number")
    sms.flush()
    assert Recipients(r, settings, post_id, "sms").set_status(taken.claimed[0], "delivered")
    assert _keys_of(r, settings, post_id) == {
        f"post:{post_id}",
        f"rcpt:{post_id}:telegram",
        f"rcpt:{post_id}:sms",
    }
    ttl = settings.retention_days * 86400
    for channel in ("telegram", "sms"):
        assert ttl - 5 < r.ttl(f"{settings.key_prefix}rcpt:{post_id}:{channel}") <= ttl
    rc = Recipients(r, settings, post_id, "sms")
    assert (rc.total(), rc.budget_day(), rc.open_count()) == (2, budget.day, 0)
    assert rc.counts() == {"sent": 1, "failed": 1, "delivered": 1}
    assert set(rc.entries()) == set(numbers)
    fields = set(r.hkeys(f"{settings.key_prefix}rcpt:{post_id}:sms"))
    assert fields == {*numbers, "#total", "#day", "#sent", "#failed", "#delivered"}  # no counter at 0
    assert set(Recipients(r, settings, post_id, "telegram").entries()) == {"@a", "-100"}


def test_a_name_of_the_delivery_s_own_fields_is_never_a_recipient(redis_available, settings):
    roster = _roster(redis_available, settings, "p_12")
    assert roster.take(1, want=5, people=["#total", "@a"]).claimed == ["@a"]
    rc = Recipients(redis_available, settings, "p_12", "telegram")
    assert rc.total() == 1
    assert rc.entry("#total") is None
    assert not rc.set_status("#sending", "delivered")
    with pytest.raises(ValueError, match="names a field of the delivery"):
        rc.record("#sent", "sent")
    assert rc.counts() == {"sending": 1}


# ---- a delivery begun before the fold (:n, :init, :day keys of their own) -------------------------
def _old_layout(r, settings, post_id: str, channel: str, ttl: int = 1000) -> str:
    """What a run of the earlier code left: "@a" sent, "@b" claimed by a run that was lost, "@c"
    not tried yet; the snapshot took three, and the SMS budget of 2026-12-01 was reserved."""
    base = Keys(settings.key_prefix).recipients(post_id, channel)
    claim = '{"state": "sending", "attempt": 1, "at": 1.0}'
    r.hset(base, mapping={"@a": '{"state": "sent", "attempt": 1, "at": 1.0, "message_id": 7}', "@b": claim})
    r.sadd(f"{base}:todo", "@b", "@c")
    r.hset(f"{base}:n", mapping={"pending": 1, "sending": 1, "sent": 1})
    r.set(f"{base}:init", 3)
    r.set(f"{base}:day", "20261201")
    for key in (base, f"{base}:todo", f"{base}:n", f"{base}:init", f"{base}:day"):
        r.expire(key, ttl)
    return base


def test_a_run_goes_on_from_a_delivery_begun_in_the_old_layout(redis_available, settings):
    r = redis_available
    base = _old_layout(r, settings, "p_13", "telegram", ttl=1000)
    roster = _roster(r, settings, "p_13")
    people = ["@a", "@b", "@c", "@d"]  # "@d": not in the snapshot
    assert roster.take(2, want=0, people=people).claimed == []  # paced: no token for anyone yet
    assert [r.exists(base + old) for old in (":n", ":init", ":day")] == [0, 0, 0]
    assert 990 < r.ttl(base) <= 1000  # the old keys' time left, until the next write
    taken = roster.take(2, want=5, people=people)
    assert taken.claimed == ["@c"]  # "@a" has its outcome; "@b"'s lost claim: uncertain, not resent
    rc = Recipients(r, settings, "p_13", "telegram")
    assert (rc.total(), rc.budget_day()) == (3, "20261201")
    assert rc.entry("@b")["state"] == "uncertain"
    roster.record("@c", "sent", message_id=8)
    roster.flush()
    assert rc.counts() == {"sent": 2, "uncertain": 1}
    assert roster.counts() == rc.counts()
    assert rc.open_count() == 0
    assert set(rc.entries()) == {"@a", "@b", "@c"}
    assert r.ttl(base) > 1000  # the retention again, from this write
    assert _keys_of(r, settings, "p_13") == {"rcpt:p_13:telegram"}


def test_a_status_callback_folds_an_old_layout_delivery_it_finds(redis_available, settings):
    r = redis_available
    base = _old_layout(r, settings, "p_14", "sms")
    r.hset(
        base, "+12015550111", '{"state": "sent", "attempt": 1, "at": 1.0, "sid": "SM1", "status": "queued"}'
    )
    r.hincrby(f"{base}:n", "sent", 1)
    rc = Recipients(r, settings, "p_14", "sms")
    assert rc.set_status("+12015550111", "delivered")
    assert rc.public(shown=10)["_summary"] == {
        "total": 3,
        "pending": 1,
        "sending": 1,
        "sent": 2,
        "delivered": 1,
    }
    assert rc.budget_day() == "20261201"
    assert _keys_of(r, settings, "p_14") == {"rcpt:p_14:sms", "rcpt:p_14:sms:todo"}
