"""Bluesky black-holed: it accepts connections and never answers. The target goes `down`
within the probe timeout plus hysteresis, posts keep flowing to the failover channels at
their normal rate, and the worker's sockets and threads stay bounded."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.chaos.harness import chaos_stack, full_brand, resources, wait_until
from tests.conftest import ACME, auth
from tests.harness import FAST_SETTINGS

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

ADMIN = {"Authorization": f"Bearer {FAST_SETTINGS['BROADCASTER_ADMIN_API_KEY']}"}
# Hysteresis small enough for a test, same rules as production: trip after K of the last N.
HEALTH = {
    "BROADCASTER_HEALTH_WINDOW": "6",
    "BROADCASTER_HEALTH_DEGRADE_AFTER": "3",
    "BROADCASTER_HEALTH_TRIP_AFTER": "4",
    "BROADCASTER_HEALTH_RECOVER_AFTER": "2",
}


@pytest.fixture
def chaos(tmp_path):
    with chaos_stack(tmp_path, lambda sb, secrets: [full_brand(ACME, sb, secrets)], **HEALTH) as (
        stack,
        sb,
        *_,
    ):
        yield stack, sb


def _queue(http, texts, **extra) -> list[str]:
    ids = []
    for text in texts:
        r = http.post("/v1/posts", json={"text": text, **extra}, headers=auth(ACME))
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def _wait_on_mastodon(sb, tag: str, n: int, timeout: float) -> float:
    start = time.monotonic()
    got = wait_until(timeout, lambda: len([s for s in sb.mastodon.statuses if tag in s["text"]]) >= n)
    assert got, f"only {len([s for s in sb.mastodon.statuses if tag in s['text']])} of {n} reached Mastodon"
    return time.monotonic() - start


def _state(http) -> str:
    return http.get("/v1/health", headers=ADMIN).json()["targets"][0]["effective"]


def test_a_black_holed_bluesky_trips_the_breaker_and_failover_keeps_its_pace(chaos):
    stack, sb = chaos
    http = stack.http()
    worker = stack.workers[0]
    n = 30

    # Normal pace to Mastodon while Bluesky is fine (the same channels, asked for explicitly).
    normal_tag = uuid.uuid4().hex[:6]
    _queue(http, [f"normal {normal_tag} {i}" for i in range(n)], channels=["mastodon", "rss"])
    normal_s = _wait_on_mastodon(sb, normal_tag, n, 60)
    assert wait_until(20, lambda: _state(http) == "up")
    baseline = resources(worker.pid)

    sb.bluesky.fail("all", "hang")  # accept, never answer
    broke = time.monotonic()
    assert wait_until(30, lambda: _state(http) == "down"), stack.logs()
    to_down = time.monotonic() - broke

    tag = uuid.uuid4().hex[:6]
    ids = _queue(http, [f"outage {tag} {i}" for i in range(n)])
    outage_s = _wait_on_mastodon(sb, tag, n, 90)
    after_n = resources(worker.pid)
    tag2 = uuid.uuid4().hex[:6]
    _queue(http, [f"outage {tag2} {i}" for i in range(3 * n)])
    _wait_on_mastodon(sb, tag2, 3 * n, 120)
    after_4n = resources(worker.pid)

    held = [
        next(
            d
            for d in http.get(f"/v1/posts/{pid}", headers=auth(ACME)).json()["deliveries"]
            if d["channel"] == "bluesky"
        )
        for pid in ids
    ]
    assert {d["state"] for d in held} == {"held"}
    hanging = len([r for r in sb.bluesky.requests if r.injected and r.injected.startswith("hang")])

    probe_timeout = float(FAST_SETTINGS["BROADCASTER_HEALTH_PROBE_TIMEOUT_S"])
    interval = float(FAST_SETTINGS["BROADCASTER_HEALTH_PROBE_INTERVAL_S"])
    bound = int(HEALTH["BROADCASTER_HEALTH_TRIP_AFTER"]) * (probe_timeout + interval) + 5
    print(
        f"\n[black hole] down {to_down:.1f}s after the hang (bound {bound:.1f}s); "
        f"{n} posts to Mastodon: {normal_s:.1f}s normally, {outage_s:.1f}s during the outage "
        f"(ratio {outage_s / normal_s:.2f}); Bluesky requests left hanging: {hanging}\n"
        f"[black hole] worker tree before: {baseline}, after {n} posts: {after_n}, after {4 * n}: {after_4n}"
    )
    assert to_down <= bound
    assert outage_s <= 3 * normal_s + 5, "failover posts must not crawl behind hung Bluesky calls"
    # Bounded: 3x more posts did not open more sockets or threads (small slack for pools warming up).
    assert after_4n["sockets"] <= after_n["sockets"] + 6
    assert after_4n["threads"] <= after_n["threads"] + 4
    assert after_4n["processes"] == baseline["processes"]

    sb.bluesky.heal()
    assert wait_until(60, lambda: _state(http) == "up"), stack.logs()
    backfilled = wait_until(
        90, lambda: len([p for p in sb.bluesky.posts if tag in p["text"]]) == n and sb.bluesky.posts
    )
    assert backfilled, "the held posts were backfilled after recovery"
    texts = [p["text"] for p in sb.bluesky.posts if tag in p["text"]]
    assert len(texts) == len(set(texts)) == n
