"""A 429 storm: Mastodon and Telegram answer 429 with Retry-After for a while. No message is
dropped, no retry comes before the server's hint, and the other channels keep their pace.

The storm lasts until every message of the batch has been refused at least once on both channels
and every other channel of the batch is delivered (a condition, not a wall-clock window: on a
busy machine it lasts longer, and proves the same)."""

from __future__ import annotations

import itertools
import statistics
import time
import uuid
from collections import defaultdict
from datetime import datetime

import pytest

from tests.chaos.harness import chaos_stack, full_brand, wait_until
from tests.conftest import ACME, auth

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

CHANNELS = ["bluesky", "mastodon", "telegram", "sms", "rss"]
RETRY_AFTER = 2
N = 20
OTHERS = ("bluesky", "sms", "rss")


@pytest.fixture
def chaos(tmp_path):
    brands = lambda sb, secrets: [full_brand(ACME, sb, secrets, chats=("@storm",))]  # noqa: E731
    with chaos_stack(tmp_path, brands, workers=2) as (stack, sb, *_):
        yield stack, sb


def _batch(http, label: str) -> list[str]:
    ids = []
    for i in range(N):
        r = http.post(
            "/v1/posts",
            json={"text": f"{label} [{i}]", "channels": CHANNELS, "priority": "urgent"},
            headers=auth(ACME),
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    return ids


def _settled(http, ids) -> list[dict] | None:
    posts = [http.get(f"/v1/posts/{pid}", headers=auth(ACME)).json() for pid in ids]
    done = all(p["state"] in ("delivered", "partially_delivered", "failed") for p in posts)
    return posts if done else None


def _storm_has_hit_everything(http, sb, ids: list[str], texts: list[str]) -> bool:
    """Every message was answered 429 on Mastodon and on Telegram, and every other channel of
    every post is delivered while those two still refuse everything."""
    limited_masto = {str((r.body or {}).get("status", "")) for r in sb.mastodon.requests if r.status == 429}
    limited_tg = {str((r.body or {}).get("text", "")) for r in sb.telegram.requests if r.status == 429}
    for text in texts:
        if not any(m.startswith(text) for m in limited_masto) or not any(text in m for m in limited_tg):
            return False
    for pid in ids:
        post = http.get(f"/v1/posts/{pid}", headers=auth(ACME)).json()
        if any(d["channel"] in OTHERS and d["state"] != "delivered" for d in post["deliveries"]):
            return False
    return True


def _latency(posts: list[dict], channel: str) -> float:
    """Median seconds from queueing to delivery on one channel."""
    lat = []
    for p in posts:
        d = next(d for d in p["deliveries"] if d["channel"] == channel)
        lat.append(
            (
                datetime.fromisoformat(d["delivered_at"]) - datetime.fromisoformat(p["created_at"])
            ).total_seconds()
        )
    return statistics.median(lat)


def _gaps_after_429(requests, key) -> list[float]:
    """For each 429, the time until the next request for the same message."""
    by_msg = defaultdict(list)
    for r in requests:
        by_msg[key(r)].append(r)
    gaps = []
    for rs in by_msg.values():
        rs.sort(key=lambda r: r.t)
        gaps += [b.t - a.t for a, b in itertools.pairwise(rs) if a.status == 429]
    return gaps


def test_a_429_storm_drops_nothing_honours_retry_after_and_slows_no_other_channel(chaos):
    stack, sb = chaos
    http = stack.http()
    assert (
        http.post("/v1/sms/subscribers", json={"numbers": ["+12025550143"]}, headers=auth(ACME)).status_code
        == 200
    )
    tag = uuid.uuid4().hex[:6]

    calm_ids = _batch(http, f"calm {tag}")
    calm = wait_until(60, lambda: _settled(http, calm_ids))
    assert calm, "the calm batch was delivered"

    sb.mastodon.fail("statuses", "rate_limit", retry_after=RETRY_AFTER)
    sb.telegram.fail("send", "rate_limit", retry_after=RETRY_AFTER)
    storm_ids = _batch(http, f"storm {tag}")
    texts = [f"storm {tag} [{i}]" for i in range(N)]
    started = time.monotonic()
    hit = wait_until(120, lambda: _storm_has_hit_everything(http, sb, storm_ids, texts))
    storm_s = time.monotonic() - started
    assert hit, f"every message met the storm and the other channels were delivered during it\n{stack.logs()}"
    sb.mastodon.heal()
    sb.telegram.heal()
    storm = wait_until(90, lambda: _settled(http, storm_ids))
    assert storm, f"the storm batch settled\n{stack.logs()}"

    assert {p["state"] for p in storm} == {"delivered"}, "no message was dropped"
    for text in texts:
        assert sum(s["text"] == text for s in sb.mastodon.statuses) == 1
        assert sum(text in m["text"] for m in sb.telegram.messages) == 1

    masto_reqs = [r for r in sb.mastodon.requests if r.endpoint == "statuses.create"]
    tg_reqs = [r for r in sb.telegram.requests if r.endpoint == "sendMessage"]
    limited = sum(r.status == 429 for r in masto_reqs + tg_reqs)
    gaps = _gaps_after_429(masto_reqs, lambda r: r.headers.get("idempotency-key")) + _gaps_after_429(
        tg_reqs, lambda r: (r.body["chat_id"], r.body["text"])
    )
    assert sum(r.status == 429 for r in masto_reqs) >= N, "each Mastodon status was refused at least once"
    assert limited >= 2 * N
    assert gaps, "rate-limited messages were retried"
    assert min(gaps) >= RETRY_AFTER, "no retry came before the server's Retry-After"

    others = {c: (_latency(calm, c), _latency(storm, c)) for c in OTHERS}
    print(
        f"\n[429 storm] {limited} answers were 429 over {storm_s:.1f}s; all {N} posts delivered once on "
        f"every channel; shortest wait after a 429: {min(gaps):.2f}s (Retry-After {RETRY_AFTER}s); "
        "median latency calm -> storm: "
        + ", ".join(f"{c} {a:.2f}s -> {b:.2f}s" for c, (a, b) in others.items())
    )
