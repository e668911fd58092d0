"""The core path end to end: HTTP request -> Redis -> Celery worker -> atproto -> sandbox PDS,
and the RSS feed, on real parts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import feedparser
import httpx
import pytest
from atproto import Client, Request

from broadcaster.core.ids import tid_for
from broadcaster.core.models import DeliveryState
from tests.conftest import ACME, BADPASS, GLOBEX, READER, auth
from tests.harness import (
    claimed_and_lost,
    dispatch_lost,
    events_after,
    latest_event,
    settle_as,
    wait_for,
    wait_quiet,
)

pytestmark = pytest.mark.integration


def unique(text: str = "Hello") -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def queue(api, spec=ACME, **body):
    r = api.post("/v1/posts", json=body, headers=auth(spec))
    assert r.status_code == 202, r.text
    return r.json()


def final(api, post_id, spec=ACME, states=("delivered",), timeout=25):
    def check():
        r = api.get(f"/v1/posts/{post_id}", headers=auth(spec))
        assert r.status_code == 200, r.text
        body = r.json()
        return body if body["state"] in states else None

    return wait_for(check, timeout=timeout, what=f"post {post_id} to reach {states}")


def reader_timeline(sandbox) -> list[str]:
    reader = Client(base_url=sandbox.bluesky.url, request=Request(timeout=httpx.Timeout(3.0)))
    reader.login(*READER, fetch_bsky_profile=False)
    return [item.post.record.text for item in reader.get_timeline(limit=100).feed]


def test_a_queued_post_reaches_bluesky_and_the_rss_feed(api, stack):
    text = unique("Fresh roast today #coffee")
    created = queue(api, text=text, link="https://acme.example/roast")
    assert created["state"] in ("scheduled", "dispatching")
    assert {d["channel"] for d in created["deliveries"]} == {"bluesky", "rss"}

    post = final(api, created["id"])
    by_channel = {d["channel"]: d for d in post["deliveries"]}
    bsky = by_channel["bluesky"]
    assert bsky["state"] == "delivered"
    assert bsky["attempts"] == 1
    rkey = bsky["remote_id"].rsplit("/", 1)[-1]
    created_at_us = int(datetime.fromisoformat(post["created_at"]).timestamp() * 1_000_000)
    assert rkey == tid_for(post["id"], created_at_us)
    assert bsky["url"] == f"https://bsky.app/profile/{ACME.handle}/post/{rkey}"

    # What the PDS received: the text with its link, and rich-text facets for link and tag.
    record = next(p for p in stack.sandbox.bluesky.posts if p["rkey"] == rkey)
    assert record["text"] == f"{text}\nhttps://acme.example/roast"
    features = [f["features"][0]["$type"] for f in record["facets"]]
    assert "app.bsky.richtext.facet#link" in features
    assert "app.bsky.richtext.facet#tag" in features
    # ...and a reader sees it in their Home timeline.
    assert record["text"] in reader_timeline(stack.sandbox)

    feed = feedparser.parse(api.get("/feeds/acme.rss").content)
    assert feed.feed.title == "acme news"
    entry = next(e for e in feed.entries if text in e.description)
    assert entry.id == f"urn:broadcaster:acme:{post['id']}"
    assert entry.link == "https://acme.example/roast"


def test_one_bluesky_session_serves_many_posts(api, stack):
    before = stack.sandbox.bluesky.session_creations.get(ACME.handle, 0)
    ids = [queue(api, text=unique("batch"))["id"] for _ in range(5)]
    for pid in ids:
        final(api, pid)
    assert stack.sandbox.bluesky.session_creations.get(ACME.handle, 0) - before <= 1


def test_the_feed_answers_304_when_nothing_changed(api, stack):
    final(api, queue(api, text=unique("etag"))["id"])
    first = api.get("/feeds/acme.atom")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("application/atom+xml")
    again = api.get("/feeds/acme.atom", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    since = api.get("/feeds/acme.atom", headers={"If-Modified-Since": first.headers["last-modified"]})
    assert since.status_code == 304
    final(api, queue(api, text=unique("changed"))["id"])
    changed = api.get("/feeds/acme.atom", headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200


def test_the_same_idempotency_key_returns_the_same_post_and_a_different_body_is_409(api, stack):
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"text": unique("once")}
    a = api.post("/v1/posts", json=body, headers=auth(ACME) | key)
    b = api.post("/v1/posts", json=body, headers=auth(ACME) | key)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"]
    assert b.headers.get("idempotent-replayed") == "true"
    c = api.post("/v1/posts", json={"text": "something else"}, headers=auth(ACME) | key)
    assert c.status_code == 409
    # The same key is the other brand's own business.
    d = api.post("/v1/posts", json=body, headers=auth(GLOBEX) | key)
    assert d.status_code == 202
    assert d.json()["id"] != a.json()["id"]
    final(api, a.json()["id"])
    final(api, d.json()["id"], spec=GLOBEX)
    texts = [p["text"] for p in stack.sandbox.bluesky.posts]
    assert texts.count(body["text"]) == 2  # once for acme, once for globex


def test_a_scheduled_post_waits_can_be_edited_and_is_published_when_due(api, stack):
    later = datetime.now(UTC) + timedelta(hours=1)
    created = queue(api, text=unique("later"), scheduled_at=later.isoformat())
    assert created["state"] == "scheduled"
    soon = datetime.now(UTC) + timedelta(seconds=2)
    new_text = unique("edited")
    r = api.patch(
        f"/v1/posts/{created['id']}",
        json={"text": new_text, "scheduled_at": soon.isoformat()},
        headers=auth(ACME),
    )
    assert r.status_code == 200, r.text
    assert r.json()["text"] == new_text
    post = final(api, created["id"])
    delivered_at = datetime.fromisoformat(post["deliveries"][0]["delivered_at"])
    assert delivered_at >= soon - timedelta(milliseconds=50)
    assert any(p["text"] == new_text for p in stack.sandbox.bluesky.posts)
    # Once dispatched, it can no longer be edited or canceled.
    assert api.patch(f"/v1/posts/{created['id']}", json={"text": "x"}, headers=auth(ACME)).status_code == 409
    assert api.delete(f"/v1/posts/{created['id']}", headers=auth(ACME)).status_code == 409


def test_a_canceled_post_is_never_sent(api, stack):
    soon = datetime.now(UTC) + timedelta(seconds=2)
    text = unique("never")
    created = queue(api, text=text, scheduled_at=soon.isoformat())
    r = api.delete(f"/v1/posts/{created['id']}", headers=auth(ACME))
    assert r.status_code == 200
    assert r.json()["state"] == "canceled"
    bluesky = stack.sandbox.bluesky
    # Past its due time, with the schedule and the queues empty and a sweeper pass done.
    sent, _ = wait_quiet(
        stack.store(),
        lambda: sum(p["text"] == text for p in bluesky.posts),
        lambda: len(bluesky.requests.where("com.atproto.repo.createRecord")),
        posts=[created["id"]],
        not_before=soon.timestamp(),
    )
    assert sent == 0
    post = api.get(f"/v1/posts/{created['id']}", headers=auth(ACME)).json()
    assert post["state"] == "canceled"
    assert {d["state"] for d in post["deliveries"]} == {"canceled"}
    assert not any(p["text"] == text for p in stack.sandbox.bluesky.posts)


def test_a_permanent_bluesky_error_leaves_the_post_partially_delivered_with_the_reason(api, stack):
    created = queue(api, spec=BADPASS, text=unique("bad password"))
    post = final(api, created["id"], spec=BADPASS, states=("partially_delivered", "delivered", "failed"))
    assert post["state"] == "partially_delivered"
    by_channel = {d["channel"]: d for d in post["deliveries"]}
    assert by_channel["rss"]["state"] == "delivered"
    assert by_channel["bluesky"]["state"] == "failed"
    assert "rejected the app password for brand badpass" in by_channel["bluesky"]["error"]
    assert "not-the-password" not in str(post)


def test_a_redelivered_task_finds_the_record_instead_of_posting_twice(api, stack):
    """A worker posted, then died before recording it: the retry looks the record up first."""
    store = stack.store()
    created = queue(
        api, text=unique("crash"), scheduled_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()
    )
    post, _ = store.load(created["id"])
    rkey = tid_for(post.id, post.created_at_us)
    # The "lost" first attempt: the record exists on the PDS...
    poster = Client(base_url=stack.sandbox.bluesky.url, request=Request(timeout=httpx.Timeout(3.0)))
    poster.login(ACME.handle, ACME.password, fetch_bsky_profile=False)
    from atproto import models

    poster.app.bsky.feed.post.create(
        poster._session.did,
        models.AppBskyFeedPost.Record(text=post.text, created_at=poster.get_current_time_iso()),
        rkey=rkey,
    )
    # ...and the ledger says a worker was sending it when it vanished (lease expired).
    claimed_and_lost(store, post.id, "bluesky")
    settle_as(store, post.id, "rss", DeliveryState.delivered)
    dispatch_lost(store, post.id)

    done = final(api, post.id, timeout=20)  # the sweeper re-drives it
    bsky = next(d for d in done["deliveries"] if d["channel"] == "bluesky")
    assert bsky["attempts"] == 2
    assert bsky["remote_id"].endswith(rkey)
    assert sum(1 for p in stack.sandbox.bluesky.posts if p["rkey"] == rkey) == 1


def test_a_duplicate_key_500_from_the_pds_counts_as_delivered(api, stack):
    """First attempt, but the record is already there (e.g. a redelivered message): PDS says 500."""
    store = stack.store()
    created = queue(
        api, text=unique("dup"), scheduled_at=(datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    )
    post, _ = store.load(created["id"])
    rkey = tid_for(post.id, post.created_at_us)
    poster = Client(base_url=stack.sandbox.bluesky.url, request=Request(timeout=httpx.Timeout(3.0)))
    poster.login(ACME.handle, ACME.password, fetch_bsky_profile=False)
    from atproto import models

    poster.app.bsky.feed.post.create(
        poster._session.did,
        models.AppBskyFeedPost.Record(text=post.text, created_at=poster.get_current_time_iso()),
        rkey=rkey,
    )
    done = final(api, post.id)
    bsky = next(d for d in done["deliveries"] if d["channel"] == "bluesky")
    assert bsky["attempts"] == 1
    assert sum(1 for p in stack.sandbox.bluesky.posts if p["rkey"] == rkey) == 1


def test_a_rate_limited_send_waits_for_the_servers_hint(api, stack):
    stack.sandbox.bluesky.fail("write", "rate_limit", retry_after=2, count=1)
    try:
        text = unique("patience")
        created = queue(api, text=text)
        post = final(api, created["id"])
    finally:
        stack.sandbox.bluesky.heal()
    bsky = next(d for d in post["deliveries"] if d["channel"] == "bluesky")
    assert bsky["attempts"] == 1  # waiting out a 429 does not use an attempt
    writes = [r for r in stack.sandbox.bluesky.requests if r.path.endswith("createRecord")]
    limited = next(r for r in writes if r.status == 429)
    after = [r for r in writes if r.t > limited.t]
    assert after, "the send was retried"
    assert after[0].t - limited.t >= 2.0


def test_a_message_lost_between_dispatch_and_worker_is_redriven_by_the_sweeper(api, stack):
    """Simulate a lost Celery message: the ledger says pending, no task exists."""
    store = stack.store()
    created = queue(
        api, text=unique("lost"), scheduled_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()
    )
    dispatch_lost(store, created["id"])
    final(api, created["id"], timeout=20)


def test_every_state_change_is_in_the_event_stream(api, stack):
    store = stack.store()
    acme_cursor, globex_cursor = latest_event(store, ACME.id), latest_event(store, GLOBEX.id)
    created = queue(api, text=unique("events"))
    final(api, created["id"])
    mine = [e["type"] for e in events_after(api, auth(ACME), acme_cursor) if e.get("post") == created["id"]]
    assert mine[0] == "post.queued"
    assert "post.dispatched" in mine
    assert mine.count("delivery.delivered") == 2
    assert "delivery.sending" in mine
    other = events_after(api, auth(GLOBEX), globex_cursor)
    assert all(e.get("post") != created["id"] for e in other)


def test_mentions_resolve_to_dids_and_unknown_handles_stay_plain_text(api, stack):
    text = unique(f"Thanks @{GLOBEX.handle} and @nobody.test")
    post = final(api, queue(api, text=text)["id"])
    rkey = next(d for d in post["deliveries"] if d["channel"] == "bluesky")["remote_id"].rsplit("/", 1)[-1]
    record = next(p for p in stack.sandbox.bluesky.posts if p["rkey"] == rkey)
    mentions = [
        f["features"][0]
        for f in record["facets"]
        if f["features"][0]["$type"] == "app.bsky.richtext.facet#mention"
    ]
    resolver = Client(base_url=stack.sandbox.bluesky.url, request=Request(timeout=httpx.Timeout(3.0)))
    globex_did = resolver.resolve_handle(GLOBEX.handle).did
    assert mentions == [{"$type": "app.bsky.richtext.facet#mention", "did": globex_did}]
