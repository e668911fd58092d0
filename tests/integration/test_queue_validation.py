"""Queue-time validation for every channel a post may reach (issue 14's measured cases): a post
queued for Bluesky alone is checked for the failover channels a reroute would add, Bluesky is
checked in bytes as well as graphemes, and variants are checked for their own channel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.channel_brands import SOCIAL
from tests.conftest import ACME, auth

pytestmark = pytest.mark.integration

# 300 characters with one emoji: UCS-2, so five SMS segments (the brand allows three).
LAUNCH = ("Our spring launch is today \U0001f389 " + "come and see the new roastery " * 10)[:300]
FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"


def _errors(r) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in r.json()["detail"]]


def _count(api, spec) -> int:
    return len(api.get("/v1/posts?limit=200", headers=auth(spec)).json()["items"])


def test_an_urgent_post_for_bluesky_alone_is_checked_for_the_sms_a_reroute_would_send(api):
    before = _count(api, SOCIAL)
    body = {"text": LAUNCH, "channels": ["bluesky"], "priority": "urgent"}
    r = api.post("/v1/posts", json=body, headers=auth(SOCIAL))
    assert r.status_code == 422, r.text
    [(field, msg)] = _errors(r)
    assert field == "body.text"
    assert "[sms]" in msg
    assert "5 SMS segments" in msg
    assert _count(api, SOCIAL) == before  # nothing queued

    # A short SMS variant makes it fit; the variant itself is checked against SMS.
    too_long = body | {"variants": {"sms": "\U0001f389" * 300}}
    r = api.post("/v1/posts", json=too_long, headers=auth(SOCIAL))
    assert r.status_code == 422
    assert _errors(r)[0][0] == "body.variants.sms"
    assert "[sms]" in _errors(r)[0][1]
    fits = body | {"variants": {"sms": "Spring launch today at the roastery!"}}
    r = api.post("/v1/posts", json=fits, headers=auth(SOCIAL))
    assert r.status_code == 202, r.text
    assert r.json()["variants"] == {"sms": "Spring launch today at the roastery!"}


def test_below_the_brands_sms_priority_the_sms_rule_does_not_apply(api):
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()  # not sent during the test
    r = api.post(
        "/v1/posts",
        json={"text": LAUNCH, "channels": ["bluesky"], "priority": "normal", "scheduled_at": later},
        headers=auth(SOCIAL),
    )
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("text", "size"),
    [("e" + "\u0301" * 3200, "6401 bytes"), (FAMILY * 150, "3750 bytes")],
    ids=["combining-marks", "family-emoji"],
)
def test_bluesky_text_over_3000_bytes_is_refused_at_queue_time(api, text, size):
    r = api.post("/v1/posts", json={"text": text}, headers=auth(ACME))
    assert r.status_code == 422, r.text
    [(field, msg)] = _errors(r)
    assert field == "body.text"
    assert "[bluesky]" in msg
    assert size in msg


def test_a_variant_for_a_channel_the_brand_lacks_is_refused(api):
    r = api.post("/v1/posts", json={"text": "hi", "variants": {"sms": "hi"}}, headers=auth(ACME))
    assert r.status_code == 422
    assert _errors(r)[0][0] == "body.variants.sms"
