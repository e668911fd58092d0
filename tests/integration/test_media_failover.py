"""A post's images travel with it through an outage (issue 14): rerouted to Mastodon while
Bluesky is down, then backfilled to Bluesky once it is back, each exactly once, with alt text.

The whole stack: the media API, Redis, the Celery worker and beat, the real client libraries
against the fakes; the outage PDS (`stack.outage_bluesky`) is the one the UMBRELLA brand uses.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import UMBRELLA, UMBRELLA_MASTODON_TOKEN, auth
from tests.images import png
from tests.integration.outage import (  # the outage tests' helpers (`healthy`: conftest.py)
    on_bluesky,
    quiet,
    unique,
    wait_deliveries,
    wait_effective,
)

pytestmark = pytest.mark.integration


def upload(api, data: bytes) -> dict:
    r = api.post("/v1/media", files={"file": ("photo.png", data, "image/png")}, headers=auth(UMBRELLA))
    assert r.status_code in (200, 201), r.text
    return r.json()


def test_images_go_with_the_rerouted_post_and_with_its_backfill_once_each(api, stack, healthy):
    fake, masto = healthy, stack.sandbox.mastodon
    first, second = upload(api, png(40, 30)), upload(api, png(30, 40))
    alts = ["A red square", "A tall red square"]
    seen = max((int(s["id"]) for s in masto.statuses), default=0)
    since = datetime.now(UTC)

    fake.fail("feeds", "error")
    wait_effective(api, stack, "down")
    text = unique("Umbrella images during the outage")
    r = api.post(
        "/v1/posts",
        json={
            "text": text,
            "media": [{"id": m["id"], "alt": a} for m, a in zip((first, second), alts, strict=True)],
        },
        headers=auth(UMBRELLA),
    )
    assert r.status_code == 202, r.text
    pid = r.json()["id"]
    wait_deliveries(api, UMBRELLA, pid, {"bluesky": "held", "mastodon": "delivered"})

    fake.heal()
    wait_effective(api, stack, "up")
    wait_deliveries(api, UMBRELLA, pid, {"bluesky": "delivered"})
    quiet(api, stack, masto, posts=[pid], since=since)

    statuses = [
        s
        for s in masto.statuses
        if s["token"] == UMBRELLA_MASTODON_TOKEN and int(s["id"]) > seen and s["text"].startswith(text)
    ]
    assert len(statuses) == 1  # one status on the failover channel ...
    attached = [m for m in masto.media if m["id"] in statuses[0]["media_ids"]]
    assert [m["description"] for m in attached] == alts  # ... carrying both images, with alt text

    assert on_bluesky(stack, text) == 1  # one record backfilled ...
    [record] = [p["record"] for p in stack.outage_bluesky.posts if p["text"] == text]
    images = record["embed"]["images"]
    assert [i["alt"] for i in images] == alts  # ... with the same images
    assert [(i["aspectRatio"]["width"], i["aspectRatio"]["height"]) for i in images] == [(40, 30), (30, 40)]


def test_an_image_post_queued_for_mastodon_only_carries_it(api, stack):
    masto = stack.sandbox.mastodon
    image = upload(api, png(12, 12))
    text = unique("Umbrella picture")
    pid = queue_with(api, text, image["id"])
    wait_deliveries(api, UMBRELLA, pid, {"mastodon": "delivered"})
    [status] = [s for s in masto.statuses if s["text"].startswith(text)]
    assert [m["description"] for m in masto.media if m["id"] in status["media_ids"]] == ["Twelve"]


def queue_with(api, text: str, media_id: str) -> str:
    r = api.post(
        "/v1/posts",
        json={"text": text, "channels": ["mastodon"], "media": [{"id": media_id, "alt": "Twelve"}]},
        headers=auth(UMBRELLA),
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]
