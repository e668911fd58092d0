"""`POST /v1/posts` in one round trip: the create script stores the post, adds its `post.queued`
event and sets the dispatcher's kick marker; the route sends the kick only when its post set
the marker. Needs only Redis (its own key prefix in the test database), no workers."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from broadcaster.core.brands import hash_api_key
from broadcaster.ledger.keys import Keys
from tests.harness import REDIS_URL, own_prefix, write_brands

KEY = "fb_speedy_test_key_0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def prefix(redis_available: redis.Redis):
    p = own_prefix(f"create-{uuid.uuid4().hex[:8]}")
    yield p
    keys = list(redis_available.scan_iter(match=p + "*", count=1000))
    if keys:
        redis_available.delete(*keys)


@pytest.fixture
def settings(prefix):
    from broadcaster.core.settings import Settings

    return Settings(_env_file=None, redis_url=REDIS_URL, key_prefix=prefix)


def _post(store_settings, brand: str = "speedy", text: str = "hello", due_in_s: float = 0):
    from broadcaster.core.ids import new_post_id
    from broadcaster.core.models import Post, now_utc

    now = now_utc()
    return Post(
        id=new_post_id(),
        brand=brand,
        text=text,
        link=None,
        priority=1,
        scheduled_at=now + timedelta(seconds=due_in_s),
        created_at=now,
    )


def _events(r: redis.Redis, settings) -> list[dict[str, str]]:
    return [body for _, body in r.xrange(Keys(settings.key_prefix).events)]


def test_the_script_writes_the_post_its_schedule_and_the_same_event_add_event_writes(
    redis_available, settings
):
    from broadcaster.core.models import Delivery
    from broadcaster.ledger.store import Store

    store = Store(redis_available, settings)
    post = _post(settings)
    assert store.create_post(post, [Delivery(channel="bluesky"), Delivery(channel="rss")]) is None
    r = redis_available
    assert set(r.hkeys(store.post_key(post.id))) == {"post", "d:bluesky", "d:rss"}
    assert r.zscore(Keys(settings.key_prefix).sched, post.id) == pytest.approx(post.scheduled_at.timestamp())
    assert r.zscore(Keys(settings.key_prefix).brand_posts("speedy"), post.id) is not None
    [event] = _events(r, settings)
    assert event["type"] == "post.queued"
    assert event["post"] == post.id
    assert event["brand"] == "speedy"
    # The fields are the ones Store.add_event writes for the same event (whatever they are).
    store.add_event("post.queued", brand="speedy", post=post.id)
    assert set(_events(r, settings)[1]) == set(event)
    assert r.exists(Keys(settings.key_prefix).dispatch_kicked) == 0  # no kick key given: no marker


def test_the_kick_marker_is_set_once_and_only_its_setter_is_told(redis_available, settings):
    from broadcaster.common.queue import KICK_PENDING_MS, kick_key
    from broadcaster.ledger.store import Store

    store = Store(redis_available, settings)
    kicks: list[str] = []

    def create(post) -> str | None:
        return store.create_post(
            post,
            [],
            kick_key=kick_key(settings),
            kick_ms=KICK_PENDING_MS,
            on_kick=lambda: kicks.append(post.id),
        )

    first, second = _post(settings), _post(settings)
    create(first)
    create(second)
    assert kicks == [first.id]
    assert 0 < redis_available.pttl(kick_key(settings)) <= KICK_PENDING_MS
    redis_available.delete(kick_key(settings))  # what the dispatcher does when it starts
    third = _post(settings)
    create(third)
    assert kicks == [first.id, third.id]
    assert len(_events(redis_available, settings)) == 3


def test_a_replay_writes_nothing_and_does_not_kick(redis_available, settings):
    from broadcaster.common.queue import kick_key
    from broadcaster.ledger.store import Store

    store = Store(redis_available, settings)
    kicks: list[int] = []
    post = _post(settings)
    assert store.create_post(post, [], "key-1") is None
    again = _post(settings)
    existing = store.create_post(
        again, [], "key-1", kick_key=kick_key(settings), on_kick=lambda: kicks.append(1)
    )
    assert existing == post.id
    assert kicks == []
    assert redis_available.exists(store.post_key(again.id), kick_key(settings)) == 0
    assert len(_events(redis_available, settings)) == 1


# ---- through the route ---------------------------------------------------------------------------
@pytest.fixture
def api(prefix, tmp_path, monkeypatch, redis_available):
    from fastapi.testclient import TestClient

    from broadcaster.api import create_app
    from broadcaster.api.routes import posts
    from broadcaster.core.settings import reset_settings_cache
    from broadcaster.ledger.connection import reset_redis_cache

    brands = tmp_path / "brands.yaml"
    write_brands(
        brands,
        [
            {
                "id": "speedy",
                "name": "Speedy",
                "api_keys": [hash_api_key(KEY)],
                "bluesky": {"handle": "speedy.test", "app_password_env": "SPEEDY_PW"},
                "rss": {"title": "t", "link": "https://speedy.example/", "description": "d"},
            }
        ],
    )
    for k in [k for k in os.environ if k.startswith("BROADCASTER_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("BROADCASTER_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("BROADCASTER_KEY_PREFIX", prefix)
    monkeypatch.setenv("BROADCASTER_BRANDS_FILE", str(brands))
    reset_settings_cache()
    reset_redis_cache()
    kicks: list[int] = []
    monkeypatch.setattr(posts, "send_kick", lambda settings: kicks.append(1))
    with TestClient(create_app()) as client:
        client.kicks = kicks  # type: ignore[attr-defined]
        yield client
    reset_settings_cache()
    reset_redis_cache()


def test_the_route_queues_with_one_event_and_one_kick_per_marker(api, redis_available, prefix):
    r = redis_available
    a = api.post("/v1/posts", json={"text": "first"}, headers=AUTH)
    assert a.status_code == 202, a.text
    assert [d["channel"] for d in a.json()["deliveries"]] == ["bluesky", "rss"]
    b = api.post("/v1/posts", json={"text": "second"}, headers=AUTH)
    assert b.status_code == 202
    assert api.kicks == [1]  # the second post found the marker set: no second task
    events = [body for _, body in r.xrange(prefix + "events")]
    assert [(e["type"], e["post"]) for e in events] == [
        ("post.queued", a.json()["id"]),
        ("post.queued", b.json()["id"]),
    ]
    r.delete(prefix + "dispatch:kicked")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    c = api.post("/v1/posts", json={"text": "later", "scheduled_at": later}, headers=AUTH)
    assert c.status_code == 202
    assert c.json()["state"] == "scheduled"
    assert api.kicks == [1]
    assert r.exists(prefix + "dispatch:kicked") == 0
    api.post("/v1/posts", json={"text": "now again"}, headers=AUTH)
    assert api.kicks == [1, 1]


def test_the_route_still_replays_and_refuses_like_before(api, redis_available, prefix):
    body = {"text": "launch", "priority": "high"}
    first = api.post("/v1/posts", json=body, headers=AUTH | {"Idempotency-Key": "k-1"})
    again = api.post("/v1/posts", json=body, headers=AUTH | {"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    other = api.post("/v1/posts", json={"text": "other"}, headers=AUTH | {"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    assert redis_available.xlen(prefix + "events") == 1
    long = api.post("/v1/posts", json={"text": "a" * 301}, headers=AUTH)
    assert long.status_code == 422
    [err] = long.json()["detail"]
    assert err["loc"] == ["body", "text"]
    assert err["msg"] == (
        "is 301 graphemes with its link; Bluesky allows 300 "
        "(shorten it, or leave bluesky out of channels) [bluesky]"
    )
