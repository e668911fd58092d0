"""Mastodon end to end: API -> Redis -> Celery worker -> Mastodon.py -> the sandbox instance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.channel_brands import MASTODON_TOKEN, SOCIAL, WRONGKEYS, auth, delivery, final, queue, unique
from tests.harness import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def mastodon(stack):
    fake = stack.sandbox.mastodon
    yield fake
    fake.heal()


def statuses_with(fake, text: str) -> list[dict]:
    return [s for s in fake.statuses if s["text"].startswith(text)]


def posts_of(fake, key: str):
    return [r for r in fake.requests.where("statuses.create") if r.headers.get("idempotency-key") == key]


def test_it_posts_the_status_with_an_idempotency_key_derived_from_the_post(api, mastodon):
    text = unique("Fresh beans & <new> blends")
    post = final(
        api,
        SOCIAL,
        queue(api, SOCIAL, text=text, link="https://social.example/beans", channels=["mastodon"])["id"],
    )

    d = delivery(post, "mastodon")
    assert d["state"] == "delivered"
    assert d["attempts"] == 1
    [status] = statuses_with(mastodon, text)
    assert status["text"] == f"{text}\nhttps://social.example/beans"
    assert status["spoiler_text"] == "Brand news"
    assert status["visibility"] == "public"
    assert status["language"] == "en"
    assert d["remote_id"] == status["id"]
    assert d["url"].endswith(f"/@social/{status['id']}")
    [request] = posts_of(mastodon, f"social:{post['id']}:mastodon")
    assert request.headers["authorization"] == f"Bearer {MASTODON_TOKEN}"


def test_it_waits_out_a_429_and_posts_once(api, mastodon):
    mastodon.fail("statuses", "rate_limit", retry_after=1, count=1)
    text = unique("Rate limited")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["mastodon"])["id"])

    d = delivery(post, "mastodon")
    assert d["state"] == "delivered"
    assert d["attempts"] == 1  # a 429 says nothing about the post: it does not use an attempt
    first, second = posts_of(mastodon, f"social:{post['id']}:mastodon")
    assert first.status == 429
    assert second.status == 200
    assert second.at - first.at >= 0.9  # not before the reset the instance announced
    assert len(statuses_with(mastodon, text)) == 1


def test_it_retries_5xx_and_then_delivers(api, mastodon):
    mastodon.fail("statuses", "error", status=503, count=2)
    text = unique("Server trouble")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["mastodon"])["id"])

    d = delivery(post, "mastodon")
    assert d["state"] == "delivered"
    assert d["attempts"] == 3
    assert [r.status for r in posts_of(mastodon, f"social:{post['id']}:mastodon")] == [503, 503, 200]
    assert len(statuses_with(mastodon, text)) == 1


def test_a_send_that_timed_out_is_retried_with_the_same_key_and_makes_one_status(api, mastodon):
    mastodon.fail(
        "statuses", "slow", delay=3, count=1
    )  # the worker gives up after 2 s; the server still posts
    text = unique("Slow instance")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["mastodon"])["id"])

    d = delivery(post, "mastodon")
    assert d["state"] == "delivered"
    assert d["attempts"] >= 2
    requests = posts_of(mastodon, f"social:{post['id']}:mastodon")
    assert len(requests) >= 2
    assert requests[0].injected == "slow"
    # Once the slow request has finished too, there is still exactly one status.
    wait_for(lambda: requests[0].status is not None or None, timeout=5, what="the slow request to finish")
    assert len(statuses_with(mastodon, text)) == 1


def test_a_rejected_access_token_fails_at_once_naming_the_brand(api, mastodon):
    post = final(api, WRONGKEYS, queue(api, WRONGKEYS, text=unique("Nope"), channels=["mastodon"])["id"])

    d = delivery(post, "mastodon")
    assert d["state"] == "failed"
    assert d["attempts"] == 1
    assert d["error"] == "Mastodon rejected the access token for brand wrongkeys"
    assert "not-a-valid-mastodon-token" not in str(post)


def test_text_over_the_mastodon_limit_is_rejected_at_queue_time_naming_the_field(api, stack):
    # 490 + the 10-character content warning "Brand news" = 500 fits; one more does not.
    ok = api.post(
        "/v1/posts",
        json={"text": "a" * 490, "channels": ["mastodon"], "scheduled_at": _tomorrow()},
        headers=auth(SOCIAL),
    )
    assert ok.status_code == 202, ok.text
    api.delete(f"/v1/posts/{ok.json()['id']}", headers=auth(SOCIAL))

    r = api.post("/v1/posts", json={"text": "a" * 491, "channels": ["mastodon"]}, headers=auth(SOCIAL))
    assert r.status_code == 422
    [problem] = r.json()["detail"]
    assert problem["loc"] == ["body", "text"]
    assert "501 characters" in problem["msg"]
    assert "[mastodon]" in problem["msg"]


def test_the_queue_time_check_covers_failover_channels_a_post_may_reach(api, stack):
    # 300 emoji fit Bluesky (300 graphemes) but need 9 UCS-2 SMS segments (the brand allows 3);
    # SMS is a failover channel only for high-priority posts.
    text = "🎉" * 300
    normal = api.post("/v1/posts", json={"text": text, "scheduled_at": _tomorrow()}, headers=auth(SOCIAL))
    assert normal.status_code == 202, normal.text
    api.delete(f"/v1/posts/{normal.json()['id']}", headers=auth(SOCIAL))

    urgent = api.post(
        "/v1/posts",
        json={"text": text, "priority": "urgent", "scheduled_at": _tomorrow()},
        headers=auth(SOCIAL),
    )
    assert urgent.status_code == 422
    [problem] = urgent.json()["detail"]
    assert problem["loc"] == ["body", "text"]
    assert problem["msg"].endswith("[sms]")
    assert "9 SMS segments (UCS-2" in problem["msg"]


def _tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-RateLimit-Remaining": "299", "X-RateLimit-Reset": "not a time"},
        {"X-RateLimit-Remaining": "299", "Date": "yesterday-ish"},
    ],
)
def test_a_200_with_unreadable_rate_limit_headers_is_a_delivery(api, mastodon, headers):
    """Mastodon.py raised its rate-limit error after such a 200: the status existed, the worker
    waited out a 'rate limit' and posted again."""
    mastodon.fail("statuses", "odd_headers", headers=headers, count=1)
    text = unique("Odd headers")
    post = final(api, SOCIAL, queue(api, SOCIAL, text=text, channels=["mastodon"])["id"])

    d = delivery(post, "mastodon")
    assert d["state"] == "delivered"
    assert d["attempts"] == 1
    [request] = posts_of(mastodon, f"social:{post['id']}:mastodon")
    assert request.injected == "odd_headers"
    assert request.status == 200
    assert d["remote_id"] == statuses_with(mastodon, text)[0]["id"]
