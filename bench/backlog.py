"""Backlog reroute: many posts across many brands come due while Bluesky is `down`.

100 brands share one Bluesky target, which an operator has forced `down` (the admin
override, as in the runbook). 10,000 posts (100 per brand) are queued through the
ledger's own `create_post`, the API's code path minus HTTP, all due at one instant T0.
From T0 the dispatcher reroutes each (Bluesky `held`, Mastodon added), each brand's
outage notice goes out first, and the workers deliver to Mastodon and RSS. The figure
is T0 -> the last failover delivery final in the ledger. Target: under 30 s. The run repeats
(`repeats`, 3) on a fresh stack each time and reports the median and the maximum.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import report
from bench.harness import ADMIN_KEY, PREFIX, BenchBrand, BenchStack, EventFollower, states
from broadcaster.core import routing
from broadcaster.core.brands import load_brands
from broadcaster.core.ids import new_post_id
from broadcaster.core.models import Delivery, Post


def _queue(stack: BenchStack, brands: list[BenchBrand], per_brand: int, due: datetime) -> set[str]:
    store = stack.store()
    configured = load_brands(stack.brands_file)
    ids: set[str] = set()
    now = datetime.now(UTC)
    for i in range(per_brand):
        for b in brands:
            brand = configured.require(b.id)
            post = Post(
                id=new_post_id(),
                brand=b.id,
                text=f"Backlog {b.id} post {i}",
                scheduled_at=due,
                created_at=now,
            )
            store.create_post(post, [Delivery(channel=c) for c in routing.channels_at_queue(brand, None)])
            ids.add(post.id)
    return ids


def _dispatch_span(stack: BenchStack, t0: float) -> float | None:
    """T0 -> the last `post.dispatched` event: how long the dispatcher took to hand out the backlog."""
    last = None
    for eid, body in stack.redis.xrange(PREFIX + "events", f"{int(t0 * 1000)}-0", "+"):
        if body.get("type") == "post.dispatched":
            last = int(eid.split("-")[0]) / 1000
    return last - t0 if last else None


def run(
    posts: int = 10_000,
    brands: int = 100,
    concurrency: int = 4,
    timeout: float = 600,
    lead_s: float | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """`repeats` runs, each on a fresh stack (a fresh Redis: no run inherits another's held posts)."""
    runs = [_one_run(posts, brands, concurrency, timeout, lead_s) for _ in range(repeats)]
    result = {
        "posts": runs[0]["posts"],
        "brands": brands,
        "concurrency": concurrency,
        "repeats": repeats,
        "runs": runs,
        "complete": all(r["complete"] for r in runs),
        "seconds": report.median([r["seconds"] for r in runs]),
        "seconds_max": max(r["seconds"] for r in runs),
        "deliveries_per_s": report.median([r["deliveries_per_s"] or 0 for r in runs]),
        "dispatched_in_s": report.median([r["dispatched_in_s"] or 0 for r in runs]),
        "redis_server": runs[0]["redis_server"],
        "target": "all delivered to the failover channels in under 30 s",
    }
    by_channel = runs[-1]["delivered_by_channel"]
    report.table(
        f"Backlog reroute: {result['posts']:,} posts, {brands} brands, Bluesky down "
        f"(median of {repeats}; each run on a fresh stack)",
        ["figure", "value"],
        [
            ("T0 -> last failover delivery (s), median", result["seconds"]),
            ("T0 -> last failover delivery (s), max", result["seconds_max"]),
            ("T0 -> last post dispatched (s), median", result["dispatched_in_s"]),
            ("deliveries/s, median", result["deliveries_per_s"]),
            ("Mastodon delivered (last run)", by_channel.get("mastodon", 0)),
            ("RSS delivered (last run)", by_channel.get("rss", 0)),
            ("all final, every run", str(result["complete"])),
            ("a post's Bluesky delivery (last run)", runs[-1]["sample_bluesky_state"]),
            ("CPU s: workers (last run)", runs[-1]["cpu_seconds"]["workers"]),
            ("CPU s: Redis (last run)", runs[-1]["cpu_seconds"]["redis"]),
            ("CPU s: sandbox (last run)", runs[-1]["cpu_seconds"]["sandbox"]),
        ],
    )
    return result


def _one_run(
    posts: int, brands: int, concurrency: int, timeout: float, lead_s: float | None
) -> dict[str, Any]:
    per_brand = max(1, posts // brands)
    bench_brands = [
        BenchBrand(
            f"b{i:03d}",
            channels=("mastodon",),
            routing={"failover": ["mastodon"], "always_on": ["rss"], "lookback_minutes": 0},
        )
        for i in range(brands)
    ]
    stack = BenchStack(bench_brands)
    try:
        stack.start(concurrency=concurrency)
        target = load_brands(stack.brands_file).require("b000").bluesky.target
        with stack.http() as http:
            r = http.post(
                f"/v1/health/{target}/override",
                json={"mode": "down", "reason": "backlog benchmark"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            r.raise_for_status()
        follower = EventFollower.from_now(stack.redis)
        load_before = report.load_avg()
        cpu_before = stack.cpu_seconds()
        lead = lead_s or max(5.0, per_brand * brands / 1000)  # queueing: well under 1 s per 1,000 posts
        due = datetime.now(UTC) + timedelta(seconds=lead)
        queued_at = time.time()
        ids = _queue(stack, bench_brands, per_brand, due)
        queue_s = time.time() - queued_at
        t0 = due.timestamp()
        if time.time() > t0:
            raise RuntimeError(f"queueing took {queue_s:.1f} s, longer than the {lead:.0f} s lead")
        # Per post: Mastodon and RSS are final; Bluesky is held (not final), so 2 finals a post.
        expected = 2 * len(ids)
        done = follower.wait(expected, ids, timeout, interval=0.5)
        finals = follower.finals
        end = max((t for t, *_ in finals), default=time.time())
        by_channel: dict[str, int] = {}
        for _, _, ch, st in finals:
            if st == "delivered":
                by_channel[ch] = by_channel.get(ch, 0) + 1
        cpu_after = stack.cpu_seconds()
        store = stack.store()
        sample = store.load(next(iter(ids)))
        seconds = end - t0
        result = {
            "posts": len(ids),
            "brands": brands,
            "concurrency": concurrency,
            "complete": done,
            "seconds": seconds,
            "deliveries_per_s": sum(by_channel.values()) / seconds if seconds > 0 else None,
            "queue_s": queue_s,
            "states": states(finals),
            "delivered_by_channel": by_channel,
            "sample_bluesky_state": sample[1]["bluesky"].state.value if sample else None,
            "cpu_seconds": {k: round(cpu_after[k] - cpu_before[k], 1) for k in cpu_after},
            "dispatched_in_s": _dispatch_span(stack, t0),
            "load_avg_before": load_before,
            "redis_server": stack.redis_info(),
        }
    finally:
        stack.close()
    return result
