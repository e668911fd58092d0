"""Retention: a finished post, its deliveries and its events leave Redis after the retention,
and what is not finished stays.

The end-to-end test runs a stack of its own (private redis-server, sandbox, API, worker,
beat) with `BROADCASTER_RETENTION_S=3`, so expiry happens within the test and the memory it
frees can be read off that Redis alone. The store-level tests use the suite's database.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broadcaster.core.models import Delivery, DeliveryState, Post, now_utc
from broadcaster.core.routing import Route
from broadcaster.core.settings import Settings
from broadcaster.ledger.store import Store
from broadcaster.sandbox import Sandbox
from tests.chaos.harness import ChaosStack, RedisServer, stack_env, wait_until
from tests.conftest import ACME, READER, auth
from tests.harness import brand_entry, own_prefix, redis_client, settle_as, wait_for, write_brands

RETENTION_S = 3


@pytest.fixture(scope="module")
def short_retention(tmp_path_factory):
    """One stack for both end-to-end tests (each waits only for its own posts and images)."""
    tmp_path = tmp_path_factory.mktemp("retention")
    sb = Sandbox.start()
    sb.bluesky.add_account(ACME.handle, ACME.password)
    sb.bluesky.add_account(*READER)
    server = RedisServer(tmp_path)
    server.start()
    secrets: dict[str, str] = {}
    brands = tmp_path / "brands.yaml"
    write_brands(brands, [brand_entry(ACME, sb, secrets)])
    env = stack_env(
        server.url,
        brands,
        secrets,
        BROADCASTER_RETENTION_S=str(RETENTION_S),
        BROADCASTER_MEDIA_UNATTACHED_TTL_S=str(RETENTION_S),
        BROADCASTER_MEDIA_DIR=str(tmp_path / "media"),
    )
    stack = ChaosStack(server, env, tmp_path)
    try:
        yield stack.start(workers=1)
    finally:
        stack.close(discard=True)  # with its private Redis
        server.stop()
        sb.stop()


def _post_keys(r, ids: list[str]) -> list[str]:
    return [f"fbchaos:post:{i}" for i in ids]


@pytest.mark.integration
def test_it_expires_delivered_and_canceled_posts_with_their_events_and_keeps_the_scheduled_one(
    short_retention,
):
    stack = short_retention
    http = stack.http()
    r = stack.redis_server.client()
    tag = uuid.uuid4().hex[:6]
    ids = []
    for i in range(20):
        resp = http.post("/v1/posts", json={"text": f"kept briefly {tag} {i}"}, headers=auth(ACME))
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    resp = http.post("/v1/posts", json={"text": f"later {tag}", "scheduled_at": later}, headers=auth(ACME))
    scheduled = resp.json()["id"]

    seen_delivered: set[str] = set()

    def all_delivered():
        """Each post seen `delivered` once: with a 3 s retention, the first can expire before
        the last is delivered (a dispatch hands them out up to 25 a message, one after another)."""
        for i in set(ids) - seen_delivered:
            if http.get(f"/v1/posts/{i}", headers=auth(ACME)).json().get("state") == "delivered":
                seen_delivered.add(i)
        return seen_delivered == set(ids)

    assert wait_until(30, all_delivered), f"posts were not delivered\n{stack.logs()}"
    resp = http.post("/v1/posts", json={"text": f"canceled {tag}", "scheduled_at": later}, headers=auth(ACME))
    canceled = resp.json()["id"]
    assert http.delete(f"/v1/posts/{canceled}", headers=auth(ACME)).status_code == 200
    finished_at = time.time()
    keys = _post_keys(r, [*ids, canceled])
    ttls = [r.ttl(k) for k in keys]
    # -2: already expired (a slow machine took longer than the retention to deliver them all);
    # 0: less than a second left (TTL rounds down)
    assert all(t == -2 or 0 <= t <= RETENTION_S for t in ttls), f"finished posts must expire: {ttls}"
    assert 0 < ttls[-1] <= RETENTION_S, "a canceled post expires too"
    assert r.ttl(f"fbchaos:post:{scheduled}") == -1, "a scheduled post never expires"
    held_bytes = sum(r.memory_usage(k) or 0 for k in keys if r.exists(k))
    assert held_bytes > 300, "what expiry will free"
    assert r.xlen("fbchaos:events") >= 20 * 3

    def freed():
        return r.exists(*keys) == 0 and r.zcard("fbchaos:brand:acme:posts") == 1

    assert wait_until(RETENTION_S + 10, freed), (
        f"still there: {r.exists(*keys)} posts, {r.zcard('fbchaos:brand:acme:posts')} listed"
    )
    assert http.get(f"/v1/posts/{ids[0]}", headers=auth(ACME)).status_code == 404
    listed = http.get("/v1/posts", headers=auth(ACME)).json()["items"]
    assert [p["id"] for p in listed] == [scheduled]
    oldest = r.xrange("fbchaos:events", "-", "+", count=1)
    cutoff_ms = int((finished_at - RETENTION_S - 2) * 1000)
    assert not oldest or int(oldest[0][0].split("-")[0]) >= cutoff_ms, "old events were trimmed"
    assert http.get(f"/v1/posts/{scheduled}", headers=auth(ACME)).status_code == 200


@pytest.mark.integration
def test_images_leave_the_blob_store_with_their_posts_and_unused_uploads_after_their_grace(
    short_retention,
):
    """The sweeper deletes an upload no post uses after `media_unattached_ttl_s`, and an image
    once its post has expired (here both 3 s), bytes and records. (Bluesky only: a feed entry
    would keep the image as long as the feed lists it, tests/integration/test_media_retention.py.)"""
    import io

    from PIL import Image

    stack = short_retention
    http = stack.http()
    r = stack.redis_server.client()

    def upload() -> str:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 0, 0)).save(buf, "PNG")
        resp = http.post(
            "/v1/media", files={"file": ("a.png", buf.getvalue(), "image/png")}, headers=auth(ACME)
        )
        assert resp.status_code == 201, resp.text
        return resp.json()["id"]

    unused, attached = upload(), upload()
    media_dir = Path(stack.env["BROADCASTER_MEDIA_DIR"])
    blob = {m: media_dir / "fbchaos" / "media" / m for m in (unused, attached)}
    assert all(path.exists() for path in blob.values())
    resp = http.post(
        "/v1/posts",
        json={"text": "with an image", "channels": ["bluesky"], "media": [{"id": attached, "alt": "red"}]},
        headers=auth(ACME),
    )
    assert resp.status_code == 202, resp.text
    post_key = f"fbchaos:post:{resp.json()['id']}"

    assert wait_until(RETENTION_S + 15, lambda: not blob[unused].exists()), (
        f"unused upload kept\n{stack.logs()}"
    )
    assert http.get(f"/media/{unused}").status_code == 404
    assert r.exists(f"fbchaos:media:meta:{unused}") == 0
    # The attached image stays while its post exists (delivered, then kept for the retention)...
    assert blob[attached].exists() or r.exists(post_key) == 0
    # ... and goes once the post has expired.
    assert wait_until(60, lambda: r.exists(post_key) == 0), "the post did not expire"
    assert wait_until(RETENTION_S + 15, lambda: not blob[attached].exists()), f"image kept\n{stack.logs()}"
    assert r.exists(f"fbchaos:media:meta:{attached}", f"fbchaos:media:posts:{attached}") == 0


def _store(retention_s: float = 60) -> Store:
    prefix = own_prefix(f"ret{uuid.uuid4().hex[:6]}")
    settings = Settings(_env_file=None, key_prefix=prefix, retention_s=retention_s)
    return Store(redis_client(), settings)


def _post(store: Store, channels: tuple[str, ...] = ("bluesky", "rss")) -> Post:
    now = now_utc()
    post = Post(id=f"p_{uuid.uuid4().hex}", brand="acme", text="hi", scheduled_at=now, created_at=now)
    store.create_post(post, [Delivery(channel=c) for c in channels])
    return post


def _finish(store: Store, post_id: str, channel: str, state: DeliveryState) -> None:
    settle_as(store, post_id, channel, state)


def _cleanup(store: Store) -> None:
    keys = list(store.r.scan_iter(match=f"{store.settings.key_prefix}*", count=1000))
    if keys:
        store.r.delete(*keys)


@pytest.mark.integration
def test_it_keeps_a_post_until_its_last_delivery_is_final():
    store = _store()
    try:
        post = _post(store)
        _finish(store, post.id, "bluesky", DeliveryState.delivered)
        assert store.r.ttl(store.post_key(post.id)) == -1, "rss is still pending"
        _finish(store, post.id, "rss", DeliveryState.held)
        assert store.r.ttl(store.post_key(post.id)) == -1, "held is not final"
        _finish(store, post.id, "rss", DeliveryState.delivered)
        assert 0 < store.r.ttl(store.post_key(post.id)) <= 60
    finally:
        _cleanup(store)


@pytest.mark.integration
def test_it_stops_the_expiry_when_a_finished_post_gets_a_new_delivery():
    store = _store()
    try:
        post = _post(store, ("bluesky",))
        _finish(store, post.id, "bluesky", DeliveryState.delivered)
        assert store.r.ttl(store.post_key(post.id)) > 0
        # The look-back mirror adds a delivery to a post Bluesky already took.
        store.route(post.id, {"mastodon": Route(DeliveryState.pending)}, time.time() + 60, rerouted=True)
        assert store.r.ttl(store.post_key(post.id)) == -1
        _finish(store, post.id, "mastodon", DeliveryState.failed)
        assert store.r.ttl(store.post_key(post.id)) > 0
    finally:
        _cleanup(store)


@pytest.mark.integration
def test_it_retires_an_expired_post_from_its_brand_list_and_trims_old_events():
    store = _store(retention_s=1)
    try:
        post = _post(store, ("rss",))
        _finish(store, post.id, "rss", DeliveryState.delivered)
        assert store.r.zcard(store.keys.brand_posts("acme")) == 1
        assert store.retire_expired(["acme"]) == 0, "not expired yet"
        [(newest, _)] = store.r.xrevrange(store.keys.events, "+", "-", count=1)
        last_event_at = int(newest.split("-")[0]) / 1000
        wait_for(  # the hash's TTL ran out and the newest event is older than the retention
            lambda: store.r.exists(store.post_key(post.id)) == 0 and store.now() > last_event_at + 1,
            timeout=15,
            what="the retention to run out",
        )
        assert store.r.exists(store.post_key(post.id)) == 0
        assert store.retire_expired(["acme"]) == 1
        assert store.r.zcard(store.keys.brand_posts("acme")) == 0
        assert store.r.xlen(store.keys.events) == 0
    finally:
        _cleanup(store)
