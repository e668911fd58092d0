"""A backlog is shared out: the dispatcher hands big claims to several tasks, and a share
dispatches each post once, with one health read per target.

Worker logic on the suite's Redis database (a key prefix of its own); the task sender is
a plain callable here, the real Celery path runs in the backlog benchmark and the chaos tests.
"""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest

from broadcaster.brands import hash_api_key
from broadcaster.models import Delivery, DeliveryState, Post, now_utc
from broadcaster.settings import Settings
from broadcaster.store import Store
from tests.harness import redis_client, write_brands
from workers import dispatch
from workers.runtime import Runtime

pytestmark = pytest.mark.integration


@pytest.fixture
def rt(tmp_path):
    prefix = f"fbdisp{uuid.uuid4().hex[:6]}:"
    brands = tmp_path / "brands.yaml"
    entry = {
        "id": "acme",
        "name": "Acme",
        "api_keys": [hash_api_key("fb_dispatch_test_key_0123456789ab")],
        "bluesky": {"handle": "acme.test", "app_password_env": "UNUSED", "pds_url": "http://127.0.0.1:9"},
        "rss": {"title": "Acme", "link": "https://acme.example/", "description": "news"},
    }
    write_brands(brands, [entry])
    settings = Settings(_env_file=None, key_prefix=prefix, brands_file=brands)
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


def test_a_big_claim_is_handed_out_in_shares_with_a_longer_lease(rt):
    ids = _due_posts(rt, dispatch.DISPATCH_CHUNK * 2 + 7)
    shares: list[list[str]] = []
    sent: list[tuple[str, str]] = []
    n = dispatch.dispatch_due(rt, lambda p, c: sent.append((p, c)), hand_off=shares.append)
    assert n == len(ids)
    assert [len(s) for s in shares] == [dispatch.DISPATCH_CHUNK, dispatch.DISPATCH_CHUNK, 7]
    assert sorted(p for s in shares for p in s) == sorted(ids)
    assert sent == []  # nothing dispatched inline: the shares do it
    lease = rt.redis.zscore(rt.settings.key("dispatching"), ids[0])
    assert lease > time.time() + rt.settings.sweep_deadline_s  # waits in the queue without a re-drive


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
    assert rt.redis.zcard(rt.settings.key("dispatching")) == 0
    for post_id in ids + more:
        post, deliveries = rt.store.load(post_id)
        assert post.dispatched_at is not None
        assert all(d.state == DeliveryState.pending for d in deliveries.values())
    dispatched = [e for e in rt.store.events(limit=1000) if e["type"] == "post.dispatched"]
    assert len(dispatched) == len(ids) + len(more)
