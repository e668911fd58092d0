"""A backlog is shared out: the dispatcher hands big claims to several tasks, and a share
dispatches each post once, with one health read per target. A share lost with a killed
worker is dispatched by the sweeper once its lease has run out and no share waits.

Worker logic on the suite's Redis database (a key prefix of its own); the task sender is
a plain callable there. The lost-share tests send real Celery messages to a private
redis-server (the suite's worker must not consume them); the whole path with killed
workers runs in tests/chaos/test_worker_kills.py and the backlog benchmark.
"""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from celery import Celery

from broadcaster.common.celeryconf import CONTROL_QUEUE, SHARE_TASK, celery_config
from broadcaster.core.brands import hash_api_key
from broadcaster.core.models import Delivery, DeliveryState, Post, now_utc
from broadcaster.core.settings import Settings
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.store import Store
from tests.chaos.harness import RedisServer
from tests.harness import own_prefix, redis_client, write_brands
from workers import dispatch
from workers.runtime import Runtime

pytestmark = pytest.mark.integration


def _brands_file(tmp_path):
    brands = tmp_path / "brands.yaml"
    entry = {
        "id": "acme",
        "name": "Acme",
        "api_keys": [hash_api_key("fb_dispatch_test_key_0123456789ab")],
        "bluesky": {"handle": "acme.test", "app_password_env": "UNUSED", "pds_url": "http://127.0.0.1:9"},
        "rss": {"title": "Acme", "link": "https://acme.example/", "description": "news"},
    }
    write_brands(brands, [entry])
    return brands


@pytest.fixture
def rt(tmp_path):
    prefix = own_prefix(f"disp{uuid.uuid4().hex[:6]}")
    settings = Settings(_env_file=None, key_prefix=prefix, brands_file=_brands_file(tmp_path))
    r = redis_client()
    yield Runtime(settings=settings, redis=r, store=Store(r, settings))
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)


def _due_posts(rt: Runtime, n: int) -> list[str]:
    now = now_utc()
    ids = []
    for i in range(n):
        post = Post(
            id=f"p_{i:04d}_{uuid.uuid4().hex[:6]}", brand="acme", text="hi", scheduled_at=now, created_at=now
        )
        rt.store.create_post(post, [Delivery(channel="bluesky"), Delivery(channel="rss")])
        ids.append(post.id)
    return ids


@pytest.fixture
def private(tmp_path):
    """A Runtime and a Celery sender on a redis-server of their own (broker and ledger)."""
    server = RedisServer(tmp_path)
    server.start()
    settings = Settings(
        _env_file=None, redis_url=server.url, key_prefix="fbdisp:", brands_file=_brands_file(tmp_path)
    )
    app = Celery("lost-shares")
    app.conf.update(celery_config(settings))
    r = server.client()
    try:
        yield Runtime(settings=settings, redis=r, store=Store(r, settings)), app
    finally:
        app.close()
        server.stop()


def _sender(app: Celery):
    """Hand shares out as real Celery messages, as the dispatcher task does."""
    return lambda share: app.send_task(SHARE_TASK, args=(share,), queue=CONTROL_QUEUE)


def _expire_leases(rt: Runtime) -> None:
    """Time passes: every dispatching lease runs out."""
    key = Keys(rt.settings.key_prefix).dispatching
    rt.redis.zadd(key, dict.fromkeys(rt.redis.zrange(key, 0, -1), time.time() - 1))


def test_the_sweeper_leaves_a_waiting_share_alone_and_dispatches_a_lost_one(private):
    rt, app = private
    ids = _due_posts(rt, dispatch.DISPATCH_CHUNK + 10)
    dispatch.dispatch_due(rt, lambda p, c: None, hand_off=_sender(app))
    assert (
        rt.redis.llen(rt.store.keys.broker_queue(CONTROL_QUEUE)) == 2
    )  # two real share messages wait in the broker
    assert dispatch.shares_waiting(rt)

    _expire_leases(rt)
    sent: list[tuple[str, str]] = []
    result = dispatch.sweep(rt, lambda p, c: sent.append((p, c)))
    assert result["redispatched"] == 0  # they may be in the waiting shares
    assert sent == []
    lease = rt.redis.zscore(Keys(rt.settings.key_prefix).dispatching, ids[0])
    assert lease > time.time()  # re-armed for another look

    # A worker takes both shares and is killed with them: nothing waits any more.
    rt.redis.delete(rt.store.keys.broker_queue(CONTROL_QUEUE))
    assert not dispatch.shares_waiting(rt)
    _expire_leases(rt)
    result = dispatch.sweep(rt, lambda p, c: sent.append((p, c)))
    assert result["redispatched"] == len(ids)
    assert sorted(sent) == sorted((p, c) for p in ids for c in ("bluesky", "rss"))
    assert rt.redis.zcard(Keys(rt.settings.key_prefix).dispatching) == 0
    assert all(rt.store.load(p)[0].dispatched_at is not None for p in ids)


def test_a_post_waiting_past_the_bound_is_dispatched_even_while_shares_wait(private):
    rt, app = private
    ids = _due_posts(rt, dispatch.DISPATCH_CHUNK + 1)
    dispatch.dispatch_due(rt, lambda p, c: None, hand_off=_sender(app))
    _expire_leases(rt)
    later = rt.settings.model_copy(update={"sweep_max_queue_wait_s": 0.0})
    result = dispatch.sweep(Runtime(settings=later, redis=rt.redis, store=rt.store), lambda p, c: None)
    assert dispatch.shares_waiting(rt)
    assert result["redispatched"] == len(ids)


def test_a_big_claim_is_handed_out_in_shares(rt):
    ids = _due_posts(rt, dispatch.DISPATCH_CHUNK * 2 + 7)
    shares: list[list[str]] = []
    sent: list[tuple[str, str]] = []
    n = dispatch.dispatch_due(rt, lambda p, c: sent.append((p, c)), hand_off=shares.append)
    assert n == len(ids)
    assert [len(s) for s in shares] == [dispatch.DISPATCH_CHUNK, dispatch.DISPATCH_CHUNK, 7]
    assert sorted(p for s in shares for p in s) == sorted(ids)
    assert sent == []  # nothing dispatched inline: the shares do it
    lease = rt.redis.zscore(Keys(rt.settings.key_prefix).dispatching, ids[0])
    assert lease > time.time()  # claimed: the sweeper leaves it to its share until the lease ends


def test_a_share_dispatches_each_post_once_and_frees_its_lease(rt):
    ids = _due_posts(rt, 5)
    shares: list[list[str]] = []
    dispatch.dispatch_due(rt, lambda p, c: None, hand_off=shares.append)
    assert shares == []  # a small claim is dispatched inline
    more = _due_posts(rt, dispatch.DISPATCH_CHUNK + 1)
    dispatch.dispatch_due(rt, lambda p, c: None, hand_off=shares.append)
    sent: list[tuple[str, str]] = []
    reads = SimpleNamespace(n=0)
    real = dispatch.target_health

    def counted(rt_, brand):
        reads.n += 1
        return real(rt_, brand)

    dispatch.target_health = counted
    try:
        for share in shares:
            dispatch.dispatch_posts(rt, share, lambda p, c: sent.append((p, c)))
    finally:
        dispatch.target_health = real
    assert sorted(sent) == sorted((p, c) for p in more for c in ("bluesky", "rss"))
    assert reads.n == len(shares)  # one health read per share, not per post
    assert rt.redis.zcard(Keys(rt.settings.key_prefix).dispatching) == 0
    for post_id in ids + more:
        post, deliveries = rt.store.load(post_id)
        assert post.dispatched_at is not None
        assert all(d.state == DeliveryState.pending for d in deliveries.values())
    dispatched = [e for e in rt.store.events(limit=1000) if e["type"] == "post.dispatched"]
    assert len(dispatched) == len(ids) + len(more)
