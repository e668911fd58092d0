"""The ledger's compare-and-set with its effects (one script) and its remembered guesses.

Store-level, on the suite's Redis database under a key prefix of each test's own.
"""

from __future__ import annotations

import time
import uuid

import pytest

from broadcaster.core.models import Delivery, DeliveryState, Post, now_utc
from broadcaster.core.settings import Settings
from broadcaster.ledger.store import Store, event_time, parse_delivery
from tests.harness import redis_client

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix():
    p = f"fbledger{uuid.uuid4().hex[:6]}:"
    yield p
    r = redis_client()
    keys = list(r.scan_iter(match=f"{p}*", count=1000))
    if keys:
        r.delete(*keys)


def _store(prefix: str) -> Store:
    return Store(redis_client(), Settings(_env_file=None, key_prefix=prefix, retention_s=60))


def _post(store: Store) -> Post:
    now = now_utc()
    post = Post(id=f"p_{uuid.uuid4().hex}", brand="acme", text="hi", scheduled_at=now, created_at=now)
    store.create_post(post, [Delivery(channel="bluesky"), Delivery(channel="rss")])
    return post


def _to(state: DeliveryState):
    return lambda d: d.model_copy(update={"state": state}) if d else None


def test_a_change_writes_its_event_in_flight_entry_and_counter_with_it(prefix):
    store = _store(prefix)
    post = _post(store)
    deadline = time.time() + 100
    before, after = store.update_delivery(post.id, "rss", _to(DeliveryState.sending), inflight_until=deadline)
    assert before.state == DeliveryState.pending
    assert after.state == DeliveryState.sending
    assert store.r.zscore(store.k("inflight"), f"{post.id}|rss") == pytest.approx(deadline)
    events = [e for e in store.events() if e.get("post") == post.id and e["type"].startswith("delivery.")]
    assert [e["type"] for e in events] == ["delivery.sending"]
    assert events[0]["channel"] == "rss"
    assert events[0]["at"] == event_time(events[0]["id"])
    counters = store.r.hgetall(store.k("metrics", "c"))
    assert counters["broadcaster_deliveries|brand=acme,channel=rss,state=sending"] == "1"

    store.update_delivery(post.id, "rss", _to(DeliveryState.delivered))
    assert store.r.zscore(store.k("inflight"), f"{post.id}|rss") is None  # final: off the index
    hist = store.r.hgetall(store.k("metrics", "h"))
    assert hist["broadcaster_delivery_latency_seconds|channel=rss|count"] == "1"


def test_a_lost_compare_and_set_writes_nothing_else(prefix):
    store = _store(prefix)
    post = _post(store)
    events_before = store.r.xlen(store.k("events"))
    _, after = store.update_delivery(post.id, "rss", lambda d: None)
    assert after is None
    assert store.r.xlen(store.k("events")) == events_before
    assert store.r.zcard(store.k("inflight")) == 0


def test_a_stale_guess_loses_its_compare_and_set_and_the_change_sees_the_truth(prefix):
    mine, theirs = _store(prefix), _store(prefix)
    post = _post(mine)
    assert mine.load(post.id) is not None  # `mine` now remembers rss as pending
    theirs.update_delivery(post.id, "rss", _to(DeliveryState.sending))
    seen = []

    def change(d: Delivery | None) -> Delivery | None:
        seen.append(d.state)
        return d.model_copy(update={"state": DeliveryState.delivered, "attempts": d.attempts + 1})

    before, after = mine.update_delivery(post.id, "rss", change)
    assert seen == [DeliveryState.pending, DeliveryState.sending]  # the guess, then the truth
    assert before.state == DeliveryState.sending
    assert after.state == DeliveryState.delivered
    assert mine.load(post.id)[1]["rss"].state == DeliveryState.delivered


def test_a_no_change_decided_on_a_stale_guess_is_checked_against_redis(prefix):
    mine, theirs = _store(prefix), _store(prefix)
    post = _post(mine)
    mine.load(post.id)
    theirs.update_delivery(post.id, "rss", _to(DeliveryState.sending))
    before, after = mine.update_delivery(
        post.id, "rss", lambda d: None if d.state == DeliveryState.pending else d
    )
    assert before.state == DeliveryState.sending  # not the remembered `pending`
    assert after is not None


def test_the_first_dispatch_writes_one_event_and_the_first_reroute_one_count(prefix):
    store = _store(prefix)
    post = _post(store)
    mark = lambda p: p.model_copy(update={"dispatched_at": now_utc(), "rerouted_at": now_utc()})  # noqa: E731
    assert store.update_post(post.id, mark) is not None
    store.update_post(post.id, lambda p: p.model_copy(update={"dispatched_at": now_utc()}))
    types = [e["type"] for e in store.events() if e.get("post") == post.id]
    assert types.count("post.dispatched") == 1
    assert store.r.hget(store.k("metrics", "c"), "broadcaster_failovers|brand=acme") == "1"


def test_a_stored_delivery_leaves_out_its_channel_and_reads_back_whole(prefix):
    store = _store(prefix)
    post = _post(store)
    store.update_delivery(post.id, "rss", _to(DeliveryState.delivered))
    raw = store.r.hget(store.post_key(post.id), "d:rss")
    assert '"channel"' not in raw
    assert parse_delivery("rss", raw).channel == "rss"
    assert store.load(post.id)[1]["rss"].state == DeliveryState.delivered
