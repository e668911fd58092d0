"""The ledger's verbs: each writes its record, event, metrics, retention and indexes in one step.

Store-level, on the suite's Redis database under a key prefix of each test's own.
"""

from __future__ import annotations

import time
import uuid

import pytest

from broadcaster.core.delivery_rules import Claim
from broadcaster.core.models import Delivery, DeliveryState, Post, now_utc
from broadcaster.core.routing import Route
from broadcaster.core.settings import Settings
from broadcaster.ledger.store import POINTER, Conflict, Store, event_time, parse_delivery
from tests.harness import own_prefix, redis_client

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix():
    p = own_prefix(f"ledger{uuid.uuid4().hex[:6]}")
    yield p
    r = redis_client()
    keys = list(r.scan_iter(match=f"{p}*", count=1000))
    if keys:
        r.delete(*keys)


def _store(prefix: str) -> Store:
    return Store(redis_client(), Settings(_env_file=None, key_prefix=prefix, retention_s=60))


def _post(store: Store, channels: tuple[str, ...] = ("bluesky", "rss")) -> Post:
    now = now_utc()
    post = Post(id=f"p_{uuid.uuid4().hex}", brand="acme", text="hi", scheduled_at=now, created_at=now)
    store.create_post(post, [Delivery(channel=c) for c in channels])
    return post


def _inflight(store: Store) -> dict[str, float]:
    return dict(store.r.zrange(store.keys.inflight, 0, -1, withscores=True))


def _events(store: Store, post: Post) -> list[dict[str, str]]:
    return [e for e in store.events(limit=1000) if e.get("post") == post.id]


def test_a_claim_writes_its_event_in_flight_entry_and_counter_with_it(prefix):
    store = _store(prefix)
    post = _post(store)
    deadline = time.time() + 100
    verdict, mine = store.claim(post.id, "rss", time.time(), 30, True, deadline)
    assert verdict == Claim.go
    assert mine.state == DeliveryState.sending
    assert mine.attempts == 1
    assert _inflight(store)[f"{post.id}|rss"] == pytest.approx(deadline)
    events = [e for e in _events(store, post) if e["type"].startswith("delivery.")]
    assert [e["type"] for e in events] == ["delivery.sending"]
    assert events[0]["channel"] == "rss"
    assert events[0]["brand"] == "acme"  # a brand's events filter without loading posts
    assert events[0]["at"] == event_time(events[0]["id"])
    counters = store.r.hgetall(store.keys.counters)
    assert counters["broadcaster_deliveries|brand=acme,channel=rss,state=sending"] == "1"

    store.delivered(post.id, "rss", "remote-1", "https://example.test/1")
    assert f"{post.id}|rss" not in _inflight(store)  # final: off the index
    hist = store.r.hgetall(store.keys.histograms)
    assert hist["broadcaster_delivery_latency_seconds|channel=rss|count"] == "1"


def test_a_result_after_the_claim_was_lost_writes_nothing(prefix):
    store = _store(prefix)
    post = _post(store)
    events_before = store.r.xlen(store.keys.events)
    assert store.delivered(post.id, "rss", "remote-1", None) is None  # never claimed: not `sending`
    assert store.fail(post.id, "rss", "nope") is None
    assert store.r.xlen(store.keys.events) == events_before
    assert store.r.zcard(store.keys.inflight) == 0


def test_a_delivered_bluesky_post_enters_its_targets_recent_posts_in_the_same_step(prefix):
    store = _store(prefix)
    post = _post(store)
    store.claim(post.id, "bluesky", time.time(), 30, True, time.time() + 100)
    before = store.now()
    store.delivered(post.id, "bluesky", "at://did:plc:x/app.bsky.feed.post/1", None, on_bluesky="pds.test")
    [(post_id, at)] = store.recent_on_bluesky("pds.test", before - 1, store.now() + 1)
    assert post_id == post.id
    assert before <= at <= store.now()  # the deployment's clock: the mirror compares it with onsets
    # A result that no longer counts (not `sending`) indexes nothing either.
    assert store.delivered(post.id, "bluesky", "again", None, on_bluesky="other.test") is None
    assert store.recent_on_bluesky("other.test", 0, store.now() + 1) == []


def test_the_recent_posts_of_a_target_keep_only_the_newest(prefix, monkeypatch):
    from broadcaster.ledger import store as store_module

    monkeypatch.setattr(store_module, "RECENT_KEPT", 2)
    store = _store(prefix)
    posts = [_post(store) for _ in range(3)]
    for post in posts:
        store.claim(post.id, "bluesky", time.time(), 30, True, time.time() + 100)
        store.delivered(post.id, "bluesky", f"remote-{post.id}", None, on_bluesky="pds.test")
    kept = [p for p, _ in store.recent_on_bluesky("pds.test", 0, store.now() + 1)]
    assert kept == [p.id for p in posts[1:]]


def test_a_stale_guess_loses_its_compare_and_set_and_the_verb_sees_the_truth(prefix):
    mine, theirs = _store(prefix), _store(prefix)
    post = _post(mine)
    assert mine.load(post.id) is not None  # `mine` now remembers rss as pending
    verdict, _ = theirs.claim(post.id, "rss", time.time(), 30, True, time.time() + 60)
    assert verdict == Claim.go
    # On its guess `mine` would claim too; the compare-and-set fails and the truth says busy.
    verdict, mine_d = mine.claim(post.id, "rss", time.time(), 30, True, time.time() + 60)
    assert verdict == Claim.busy
    assert mine_d is None
    assert mine.load(post.id)[1]["rss"].attempts == 1


def test_a_no_change_decided_on_a_stale_guess_is_checked_against_redis(prefix):
    mine, theirs = _store(prefix), _store(prefix)
    post = _post(mine)
    mine.load(post.id)  # remembers rss as pending: `delivered` would do nothing on that guess
    theirs.claim(post.id, "rss", time.time(), 30, True, time.time() + 60)
    after = mine.delivered(post.id, "rss", "remote-1", None)
    assert after is not None
    assert after.state == DeliveryState.delivered


def test_dispatch_marks_routes_indexes_and_releases_the_claim_in_one_step(prefix):
    store = _store(prefix)
    post = _post(store)
    assert store.claim_now(post.id, time.time() + 60)
    held = store.keys.held("bsky")
    deadline = time.time() + 50
    routes = {"bluesky": Route(DeliveryState.held, "down"), "mastodon": Route(DeliveryState.pending, "x")}
    now = store.dispatch(post.id, routes, True, held, deadline)
    assert now["bluesky"].state == DeliveryState.held
    assert now["mastodon"].state == DeliveryState.pending
    assert store.r.zscore(held, post.id) == pytest.approx(post.scheduled_at.timestamp())
    assert set(_inflight(store)) == {f"{post.id}|rss", f"{post.id}|mastodon"}
    assert store.r.zscore(store.keys.dispatching, post.id) is None
    loaded, _ = store.load(post.id)
    assert loaded.dispatched_at is not None
    assert loaded.rerouted_at is not None
    store.dispatch(post.id, {}, True, held, deadline)  # a second dispatch (sweeper) adds no event
    types = [e["type"] for e in _events(store, post)]
    assert types.count("post.dispatched") == 1
    assert store.r.hget(store.keys.counters, "broadcaster_failovers|brand=acme") == "1"


def test_reroute_parks_bluesky_and_routes_the_failover_channels_together(prefix):
    store = _store(prefix)
    post = _post(store)
    held = store.keys.held("bsky")
    routes = {"mastodon": Route(DeliveryState.pending, "Bluesky is down")}
    now = store.reroute(post.id, Route(DeliveryState.held, "down"), routes, held, time.time() + 50, "502")
    assert now["bluesky"].state == DeliveryState.held
    assert now["bluesky"].error == "502"
    assert store.r.zscore(held, post.id) is not None
    assert f"{post.id}|mastodon" in _inflight(store)
    assert f"{post.id}|bluesky" not in _inflight(store)
    # Bluesky is no longer active: a second reroute (a redelivered message) changes nothing.
    assert store.reroute(post.id, Route(DeliveryState.held), routes, held, time.time() + 50) is None


def test_release_held_moves_it_from_the_held_index_to_the_in_flight_one(prefix):
    store = _store(prefix)
    post = _post(store, ("bluesky",))
    held = store.keys.held("bsky")
    store.reroute(post.id, Route(DeliveryState.held), {}, held, time.time() + 50)
    released = store.release_held(post.id, held, time.time() + 40)
    assert released.state == DeliveryState.pending
    assert store.r.zscore(held, post.id) is None
    assert f"{post.id}|bluesky" in _inflight(store)
    types = [e["type"] for e in _events(store, post)]
    assert types[-1] == "delivery.pending"
    assert store.r.hget(store.keys.counters, "broadcaster_backfills|brand=acme") == "1"
    assert store.release_held(post.id, held, time.time() + 40) is None  # once


def test_cancel_writes_its_event_and_settles_retention_with_it(prefix):
    store = _store(prefix)
    post = _post(store)
    loaded, deliveries = store.load(post.id)
    store.cancel(loaded, deliveries)
    assert [e["type"] for e in _events(store, post)] == ["post.queued", "post.canceled"]
    assert 0 < store.r.ttl(store.post_key(post.id)) <= 60
    with pytest.raises(Conflict):
        store.cancel(loaded, deliveries)


def test_a_stored_delivery_leaves_out_its_channel_and_reads_back_whole(prefix):
    store = _store(prefix)
    post = _post(store)
    store.claim(post.id, "rss", time.time(), 30, True, time.time() + 60)
    store.delivered(post.id, "rss", "remote-1", None)
    raw = store.r.hget(store.post_key(post.id), "d:rss")
    assert '"channel"' not in raw
    assert parse_delivery("rss", raw).channel == "rss"
    assert store.load(post.id)[1]["rss"].state == DeliveryState.delivered


class _Counting:
    """The connection's commands, counted (the store's real Redis client underneath)."""

    def __init__(self, r):
        self.r, self.n = r, 0
        self._real = r.execute_command

    def __enter__(self):
        def counted(*args, **kwargs):
            self.n += 1
            return self._real(*args, **kwargs)

        self.r.execute_command = counted
        return self

    def __exit__(self, *exc):
        self.r.execute_command = self._real


def test_every_event_of_a_brand_is_also_in_its_own_stream_with_the_same_id(prefix):
    store = _store(prefix)
    post = _post(store)
    store.claim(post.id, "bluesky", time.time(), 30, True, time.time() + 60)
    store.delivered(post.id, "bluesky", "at://x", None)
    store.add_event("sms.subscribed", brand="acme", count="1")
    store.add_event("bluesky.down", target="bsky.social")  # no brand: the deployment's stream only
    everything = store.events(limit=100)
    acme = store.events(limit=100, brand="acme")
    assert [e["type"] for e in acme] == [
        "post.queued",
        "delivery.sending",
        "delivery.delivered",
        "sms.subscribed",
    ]
    assert acme == [e for e in everything if e.get("brand") == "acme"]
    assert store.events(limit=100, brand="globex") == []
    # The brand's stream holds only the ids (memory per post): the bodies are read by id.
    own = store.r.xrange(store.keys.brand_events("acme"))
    assert [eid for eid, _ in own] == [e["id"] for e in acme]
    assert {tuple(body.items()) for _, body in own} == {(POINTER,)}


def test_a_brand_page_skips_an_id_whose_body_the_deployment_stream_trimmed(prefix):
    store = _store(prefix)
    gone = store.add_event("sms.subscribed", brand="acme", count="1")
    kept = store.add_event("sms.subscribed", brand="acme", count="2")
    store.r.xdel(store.keys.events, gone)
    assert [e["id"] for e in store.events(limit=100, brand="acme")] == [kept]
    # A page that reads only trimmed ids still moves on: the cursor is the brand stream's.
    assert [e["id"] for e in store.events(limit=1, brand="acme")] == [kept]


def test_a_brand_page_costs_one_read_whatever_other_brands_did(prefix):
    """10,000 events of another brand between two of ours: the page is one round trip."""
    store = _store(prefix)
    first = store.add_event("sms.subscribed", brand="acme", count="1")
    store.events(limit=1, brand="acme")  # the page's script is loaded (a first call loads it)
    pipe = store.r.pipeline(transaction=False)
    for i in range(10_000):
        pipe.xadd(store.keys.events, {"type": "sms.subscribed", "brand": "globex", "count": str(i)})
        pipe.xadd(store.keys.brand_events("globex"), dict([POINTER]))
    pipe.execute()
    last = store.add_event("sms.unsubscribed", brand="acme", count="1")
    with _Counting(store.r) as calls:
        page = store.events(after=first, limit=100, brand="acme")
    assert [e["id"] for e in page] == [last]
    assert calls.n == 1
    with _Counting(store.r) as calls:
        assert store.events(after=last, limit=100, brand="acme") == []
    assert calls.n == 1


def test_retention_trims_the_brand_streams_too(prefix):
    store = _store(prefix)
    old = store.add_event("sms.subscribed", brand="acme", count="1")
    store.retire_expired(["acme"], now=time.time() + 3600)  # the retention (60 s) is long past
    assert old not in {e["id"] for e in store.events(limit=10, brand="acme")}
    assert store.r.xlen(store.keys.brand_events("acme")) == 0
