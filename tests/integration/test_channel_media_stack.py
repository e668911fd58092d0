"""One post with an image, queued through the API, on Mastodon, Telegram and SMS: each remote
service gets it exactly once, the image with its alt text where the service carries it, and a
link to the image where it does not (SMS without MMS). The worker, Redis, the blob store and
the real client libraries against the fakes."""

from __future__ import annotations

import pytest

from tests.channel_brands import (
    SOCIAL,
    SOCIAL_BOT,
    SOCIAL_CHANNEL,
    SOCIAL_GROUP,
    auth,
    delivery,
    final,
    queue,
    set_subscribers,
    unique,
)
from tests.images import png

pytestmark = pytest.mark.integration

NUMBERS = ["+12015550121", "+12015550122"]


def test_an_image_post_reaches_mastodon_telegram_and_sms_once_each(api, stack):
    sb = stack.sandbox
    r = api.post("/v1/media", files={"file": ("p.png", png(16, 9), "image/png")}, headers=auth(SOCIAL))
    assert r.status_code in (200, 201), r.text
    media_id = r.json()["id"]
    set_subscribers(api, SOCIAL, NUMBERS)
    text = unique("Picture day")

    created = queue(
        api,
        SOCIAL,
        text=text,
        priority="high",
        channels=["mastodon", "telegram", "sms"],
        media=[{"id": media_id, "alt": "A wide red banner"}],
    )
    post = final(api, SOCIAL, created["id"])

    assert {d["channel"]: d["state"] for d in post["deliveries"]} == {
        "mastodon": "delivered",
        "telegram": "delivered",
        "sms": "delivered",
    }
    [status] = [s for s in sb.mastodon.statuses if s["text"].startswith(text)]
    assert [m["description"] for m in sb.mastodon.media if m["id"] in status["media_ids"]] == [
        "A wide red banner"
    ]
    assert delivery(post, "mastodon")["remote_id"] == status["id"]

    photos = [
        m for m in sb.telegram.messages if m["token"] == SOCIAL_BOT and (m["text"] or "").startswith(text)
    ]
    assert sorted(str(m["chat_ref"]) for m in photos) == sorted([SOCIAL_CHANNEL, str(SOCIAL_GROUP)])
    assert {m["kind"] for m in photos} == {"photo"}
    assert {(m["photo"]["width"], m["photo"]["height"]) for m in photos} == {(16, 9)}

    texts = [m for m in sb.twilio.messages if m["body"].startswith(text)]
    assert sorted(m["to"] for m in texts) == NUMBERS
    assert {m["body"] for m in texts} == {f"{text}\nhttp://testserver/media/{media_id}"}
    assert all(m["media_url"] == [] for m in texts)  # the brand sends SMS, not MMS
