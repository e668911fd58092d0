"""Delivery throughput: posts fanned out to all five channels, API -> delivered, per second.

For each worker count (`broadcaster worker -c N`: N prefork processes) and each repeat,
three measurements run back to back against the same sandbox servers:

* **ours**: POST /v1/posts (channels: all five, priority high) from an async load
  generator; the clock stops at the last delivery's final event in the ledger;
* **raw limit**: the same HTTP requests (createRecord, statuses, sendMessage,
  Messages.json) plus the RSS write to Redis, from a plain async httpx loop, no queue;
* **Apprise**: the same messages to the same Mastodon and Telegram fakes through
  `apprise` (`Apprise.notify`), one loop per process, as many processes as workers.

Figures are deliveries per second (a post to five channels is five deliveries; Apprise
reaches two channels, so two per message); each is the median of the repeats, and the
ratios are taken between runs of the same repeat.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench import report
from bench.harness import TWILIO_AUTH, TWILIO_SID, BenchBrand, BenchStack, EventFollower, states
from broadcaster.ids import new_post_id, tid_for

CHANNELS = ["bluesky", "mastodon", "telegram", "sms", "rss"]
SUBSCRIBER = "+12025550123"
LOAD_CONCURRENCY = 16


# ---- ours ----------------------------------------------------------------------------------------
async def _queue_posts(api_url: str, brand: BenchBrand, texts: list[str]) -> list[str]:
    sem = asyncio.Semaphore(LOAD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=brand.auth()) as client:

        async def one(text: str) -> str:
            async with sem:
                r = await client.post(
                    "/v1/posts", json={"text": text, "channels": CHANNELS, "priority": "high"}
                )
                r.raise_for_status()
                return r.json()["id"]

        return list(await asyncio.gather(*(one(t) for t in texts)))


def ours(stack: BenchStack, brand: BenchBrand, n: int, timeout: float) -> dict[str, Any]:
    follower = EventFollower.from_now(stack.redis)
    tag = uuid.uuid4().hex[:6]
    cpu_before = stack.cpu_seconds()
    started = time.time()
    ids = asyncio.run(_queue_posts(stack.api.url, brand, [f"Bench {tag} post {i}" for i in range(n)]))
    queued_s = time.time() - started
    done = follower.wait(n * len(CHANNELS), set(ids), timeout)
    finals = follower.finals
    end = max((t for t, *_ in finals), default=time.time())
    delivered = sum(1 for f in finals if f[3] == "delivered")
    elapsed = end - started
    return {
        "posts": n,
        "deliveries": delivered,
        "complete": done,
        "states": states(finals),
        "seconds": elapsed,
        "queued_in_s": queued_s,
        "per_s": delivered / elapsed if elapsed > 0 else None,
        "cpu_seconds": {k: round(v - cpu_before[k], 2) for k, v in stack.cpu_seconds().items()},
    }


# ---- raw limit -----------------------------------------------------------------------------------
async def _raw(urls: dict[str, Any], brand: BenchBrand, redis_url: str, n: int, concurrency: int) -> int:
    limits = httpx.Limits(max_connections=concurrency * 4, max_keepalive_connections=concurrency * 4)
    r = aioredis.from_url(redis_url)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        login = await c.post(
            f"{urls['bluesky']}/xrpc/com.atproto.server.createSession",
            json={"identifier": brand.handle, "password": brand.password},
        )
        login.raise_for_status()
        jwt, did = login.json()["accessJwt"], login.json()["did"]
        sem = asyncio.Semaphore(concurrency)
        tag = uuid.uuid4().hex[:6]

        async def one(i: int) -> int:
            text = f"Raw {tag} post {i}"
            pid = new_post_id()
            now = datetime.now(UTC)
            record = {"$type": "app.bsky.feed.post", "text": text, "createdAt": now.isoformat()}
            calls = [
                c.post(
                    f"{urls['bluesky']}/xrpc/com.atproto.repo.createRecord",
                    headers={"Authorization": f"Bearer {jwt}"},
                    json={
                        "repo": did,
                        "collection": "app.bsky.feed.post",
                        "rkey": tid_for(pid, int(now.timestamp() * 1e6)),
                        "record": record,
                    },
                ),
                c.post(
                    f"{urls['mastodon']}/api/v1/statuses",
                    headers={"Authorization": f"Bearer {brand.mastodon_token}", "Idempotency-Key": pid},
                    data={"status": text, "visibility": "public"},
                ),
                c.post(
                    f"{urls['telegram']}/bot{brand.bot}/sendMessage",
                    json={"chat_id": brand.chat, "text": text, "parse_mode": "HTML"},
                ),
                c.post(
                    f"{urls['twilio']}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                    auth=(TWILIO_SID, TWILIO_AUTH),
                    data={"To": SUBSCRIBER, "From": "+12015550100", "Body": text},
                ),
            ]
            async with sem:
                answers = await asyncio.gather(*calls)
                await r.hsetnx("fbbench:raw:rss:e", pid, text)
            return sum(1 for a in answers if a.status_code < 300) + 1

        sent = sum(await asyncio.gather(*(one(i) for i in range(n))))
    await r.aclose()
    return sent


def raw(stack: BenchStack, brand: BenchBrand, n: int, concurrency: int) -> dict[str, Any]:
    started = time.perf_counter()
    sent = asyncio.run(_raw(stack.sandbox.urls, brand, stack.redis_server.url, n, concurrency))
    elapsed = time.perf_counter() - started
    return {"posts": n, "deliveries": sent, "seconds": elapsed, "per_s": sent / elapsed}


# ---- Apprise -------------------------------------------------------------------------------------
def _apprise_loop(args: tuple[dict[str, Any], str, str, str, int]) -> int:
    import apprise
    from apprise.plugins.telegram import NotifyTelegram

    urls, token, bot, chat, n = args
    # The comparison's harness, not our product: Telegram's API host is a class attribute.
    NotifyTelegram.notify_url = f"{urls['telegram']}/bot"
    mastodon = httpx.URL(urls["mastodon"])
    a = apprise.Apprise()
    a.add(f"mastodon://{token}@{mastodon.host}:{mastodon.port}")
    a.add(f"tgram://{bot}/{chat}")
    tag = uuid.uuid4().hex[:6]
    ok = 0
    for i in range(n):
        if a.notify(body=f"Apprise {tag} post {i}"):
            ok += 2
    return ok


def apprise_run(stack: BenchStack, brand: BenchBrand, n: int, processes: int) -> dict[str, Any]:
    share = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    jobs = [(stack.sandbox.urls, brand.mastodon_token, brand.bot, brand.chat, k) for k in share]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        pool.map(_apprise_loop, [(*jobs[0][:4], 1)] * processes)  # warm-up: imports, first connection
        started = time.perf_counter()
        sent = sum(pool.map(_apprise_loop, jobs))
        elapsed = time.perf_counter() - started
    return {"messages": n, "deliveries": sent, "seconds": elapsed, "per_s": sent / elapsed}


# ---- the benchmark -------------------------------------------------------------------------------
def run(
    workers: tuple[int, ...] = (1, 2, 4),
    posts: int = 200,
    repeats: int = 3,
    raw_concurrency: int = 32,
    apprise_messages: int = 100,
    timeout: float = 300,
) -> dict[str, Any]:
    brand = BenchBrand("tput", channels=("mastodon", "telegram", "sms"))
    stack = BenchStack([brand])
    results: dict[str, Any] = {"posts": posts, "repeats": repeats, "channels": CHANNELS, "by_workers": {}}
    try:
        stack.start(concurrency=None)
        stack.add_subscribers([SUBSCRIBER])
        for w in workers:
            stack.start_workers(w)
            ours(stack, brand, max(5, posts // 20), timeout)  # warm-up: sessions, connections
            runs = []
            for _ in range(repeats):
                stack.sandbox.reset()
                o = ours(stack, brand, posts, timeout)
                stack.sandbox.reset()
                rw = raw(stack, brand, posts, raw_concurrency)
                stack.sandbox.reset()
                ap = apprise_run(stack, brand, apprise_messages, w)
                runs.append(
                    {
                        "ours": o,
                        "raw": rw,
                        "apprise": ap,
                        "ours_vs_raw": o["per_s"] / rw["per_s"] if o["per_s"] else None,
                        "ours_vs_apprise": o["per_s"] / ap["per_s"] if o["per_s"] else None,
                    }
                )
            stack.stop_workers()
            results["by_workers"][str(w)] = {
                "runs": runs,
                "ours_per_s": report.median([r["ours"]["per_s"] or 0 for r in runs]),
                "raw_per_s": report.median([r["raw"]["per_s"] for r in runs]),
                "apprise_per_s": report.median([r["apprise"]["per_s"] for r in runs]),
                "ours_vs_raw": report.median([r["ours_vs_raw"] or 0 for r in runs]),
                "ours_vs_apprise": report.median([r["ours_vs_apprise"] or 0 for r in runs]),
                "all_complete": all(r["ours"]["complete"] for r in runs),
            }
    finally:
        stack.close()
    rows = [
        (
            f"{w} worker process{'es' if int(w) > 1 else ''}",
            v["ours_per_s"],
            v["raw_per_s"],
            v["apprise_per_s"],
            f"{v['ours_vs_raw']:.0%}",
            f"{v['ours_vs_apprise']:.1f}x",
        )
        for w, v in results["by_workers"].items()
    ]
    report.table(
        f"Delivery throughput, deliveries/s (median of {repeats}; {posts} posts x 5 channels)",
        ["workers", "ours", "raw httpx", "Apprise", "ours/raw", "ours/Apprise"],
        rows,
    )
    return results
