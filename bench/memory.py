"""Memory: Redis bytes per tracked post, and worker resident memory over many deliveries.

1. **Redis bytes per post.** Posts are queued through the API and delivered; the growth
   of Redis's `used_memory` over that, divided by the number of posts, is the cost of one
   post kept with its deliveries, events, index entries and counters. Two shapes: the
   default route (Bluesky + RSS) and a post fanned out to all five channels. `MEMORY USAGE`
   of one post hash and the stream's bytes per event break it down.
2. **Worker RSS.** Posts for the RSS channel only (the cheapest delivery, so the most of
   them per second) are fed to one worker (`-c 2`) until `deliveries` are done; the
   resident memory of the worker's processes (main + pool) is read at checkpoints.
   Prefork children are replaced every 10,000 tasks (`worker_max_tasks_per_child`), so
   the figure is what a long-running worker settles at.

Target: under 2 KB per post kept; no growth of the workers beyond a small bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil

from bench import report
from bench.harness import PREFIX, BenchBrand, BenchStack, EventFollower
from broadcaster.core.ids import new_post_id
from broadcaster.core.models import Delivery, Post

ALL_FIVE = ["bluesky", "mastodon", "telegram", "sms", "rss"]


async def _queue_api(url: str, brand: BenchBrand, n: int, channels: list[str] | None) -> list[str]:
    sem = asyncio.Semaphore(16)
    tag = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(base_url=url, timeout=30, headers=brand.auth()) as client:

        async def one(i: int) -> str:
            body: dict[str, Any] = {"text": f"Memory {tag} post {i}: a typical short announcement."}
            if channels:
                body |= {"channels": channels, "priority": "high"}
            async with sem:
                r = await client.post("/v1/posts", json=body)
                r.raise_for_status()
                return r.json()["id"]

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def _used(stack: BenchStack) -> int:
    return int(stack.redis.info("memory")["used_memory"])


def bytes_per_post(stack: BenchStack, brand: BenchBrand, n: int, channels: list[str] | None) -> dict:
    follower = EventFollower.from_now(stack.redis)
    before = _used(stack)
    events_before = stack.redis.xlen(PREFIX + "events")
    ids = asyncio.run(_queue_api(stack.api.url, brand, n, channels))
    per_post = len(channels) if channels else 2
    done = follower.wait(per_post * n, set(ids), timeout=300)
    time.sleep(1.0)  # the last counters and index updates
    after = _used(stack)
    events = stack.redis.xlen(PREFIX + "events") - events_before
    sample = [stack.redis.memory_usage(PREFIX + f"post:{i}", samples=0) or 0 for i in ids[:50]]
    stream_bytes = stack.redis.memory_usage(PREFIX + "events", samples=0) or 0
    stream_len = stack.redis.xlen(PREFIX + "events") or 1
    return {
        "posts": n,
        "channels": channels or ["bluesky", "rss"],
        "complete": done,
        "bytes_per_post": (after - before) / n,
        "post_hash_bytes": report.median(sample),
        "events_per_post": events / n,
        "bytes_per_event": stream_bytes / stream_len,
    }


def _rss_posts(stack: BenchStack, brand_id: str, n: int) -> list[str]:
    store = stack.store()
    now = datetime.now(UTC)
    ids = []
    for i in range(n):
        post = Post(id=new_post_id(), brand=brand_id, text=f"rss {i}", scheduled_at=now, created_at=now)
        store.create_post(post, [Delivery(channel="rss")])
        ids.append(post.id)
    return ids


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total / 2**20


def worker_rss(stack: BenchStack, brand: BenchBrand, deliveries: int, checkpoints: int) -> dict:
    follower = EventFollower.from_now(stack.redis)
    step = max(1, deliveries // checkpoints)
    points = []
    done = 0
    started = time.time()
    while done < deliveries:
        chunk = min(step, deliveries - done)
        batch = _rss_posts(stack, brand.id, chunk)
        follower.wait(done + chunk, None, timeout=max(120, chunk / 20))
        done = len(follower.finals)
        pids = stack.worker_pids()
        points.append(
            {
                "deliveries": done,
                "seconds": time.time() - started,
                "worker_rss_mb": _rss_mb(pids),
                "processes": len(pids),
                "redis_used_mb": _used(stack) / 2**20,
            }
        )
        del batch
    rss = [p["worker_rss_mb"] for p in points]
    settled = rss[1:] or rss
    return {
        "deliveries": done,
        "checkpoints": points,
        "first_mb": rss[0],
        "last_mb": rss[-1],
        "max_mb": max(rss),
        "growth_after_first_checkpoint_mb": max(settled) - min(settled),
        "deliveries_per_s": done / (time.time() - started),
    }


def run(posts: int = 2000, deliveries: int = 100_000, checkpoints: int = 10) -> dict[str, Any]:
    brand = BenchBrand("mem", channels=("mastodon", "telegram", "sms"))
    stack = BenchStack([brand])
    try:
        load_before = report.load_avg()
        redis_server = stack.redis_info()
        stack.start(concurrency=2)
        stack.add_subscribers(["+12025550123"])
        asyncio.run(_queue_api(stack.api.url, brand, 20, None))  # warm-up: sessions, first keys
        time.sleep(2)
        default_route = bytes_per_post(stack, brand, posts, None)
        five = bytes_per_post(stack, brand, max(1, posts // 2), ALL_FIVE)
        workers = worker_rss(stack, brand, deliveries, checkpoints)
    finally:
        stack.close()
    report.table(
        "Redis bytes per post kept (with its deliveries, events and index entries)",
        ["shape", "posts", "bytes/post", "post hash", "events/post", "bytes/event"],
        [
            (
                "+".join(r["channels"]),
                r["posts"],
                r["bytes_per_post"],
                r["post_hash_bytes"],
                r["events_per_post"],
                r["bytes_per_event"],
            )
            for r in (default_route, five)
        ],
    )
    report.table(
        f"Worker resident memory (-c 2: main + 2 pool processes) over {workers['deliveries']:,} deliveries",
        ["deliveries", "seconds", "worker RSS MB", "Redis used MB"],
        [
            (p["deliveries"], p["seconds"], p["worker_rss_mb"], p["redis_used_mb"])
            for p in workers["checkpoints"]
        ],
    )
    return {
        "redis": {"default_route": default_route, "all_five": five},
        "workers": workers,
        "load_avg_before": load_before,
        "redis_server": redis_server,
        "target": "under 2 KB per post kept; worker RSS flat after warm-up",
    }
