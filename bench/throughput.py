"""Delivery throughput: posts fanned out to all five channels, API -> delivered, per second.

For each response latency of the fakes (`latencies`, ms per API call: 0 = loopback, as
fast as the fakes answer; 100 = a realistic remote API), each pool (`pools`), each worker
process count (`workers`) and each repeat, three measurements run back to back against the
same sandbox servers:

* **ours**: POST /v1/posts (channels: all five, priority high) from an async load
  generator; the clock stops at the last delivery's final event in the ledger. The workers
  are `workers` OS processes: `broadcaster worker --pool threads -c <threads>` each
  (the pool for I/O-bound delivery: many deliveries in flight per process), or with
  `pools=prefork` one `broadcaster worker -c <workers>` (that many prefork children);
* **raw limit**: the same HTTP requests (createRecord, statuses, sendMessage,
  Messages.json) plus the RSS write to Redis, from a plain async httpx loop, no queue,
  32 posts in flight; one such loop per core (`raw_processes`, default the CPU count): a
  single loop is bound by its own process's CPU, and on a shared machine our several
  worker processes then beat it, which says nothing about the ceiling;
* **Apprise**: the same messages to the same Mastodon and Telegram fakes through
  `apprise` (`Apprise.notify`, defaults), one loop per process, as many processes as
  our worker processes.

The fakes' latency is an asyncio sleep before each answer (broadcaster/sandbox/server.py),
so it costs no CPU and requests in flight overlap: what a remote API looks like from here.
Why 100 ms: a write to any of these APIs is a request over the internet to a server that
stores something before it answers (a status, a record, a queued SMS). One round trip
between regions alone is 50 to 150 ms, and the services' own time comes on top, so 100 ms
per call is at the low end of what a worker sees; it is an assumption, not a measurement
from this machine (it has no route to the real services). A longer latency favours the
queue further: Apprise's time per message grows with it, our in-flight count does not.
It is charged per request only: a real Apprise would also pay a TCP+TLS handshake per
request (it calls `requests.post` without a session), which the fakes do not simulate.

How Apprise 2.2.0 sends (apprise/apprise.py, read in the installed source): one
`notify()` builds a call per URL; without priority tags they form one batch, split by each
plugin's `asset.async_mode` (True by default, so both of ours) into a parallel part, run on
a process-wide `concurrent.futures.ThreadPoolExecutor` (`_notify_parallel_threadpool`), and
a sequential part. `notify()` returns when every call is done, so one message to Mastodon
and Telegram takes about the slower of the two requests, and the next message starts only
then: one message in flight per process (plugins' throttles: Telegram 0.001 s, Mastodon 0).

Figures are deliveries per second (a post to five channels is five deliveries; Apprise
reaches two channels, so two per message); each is the median of the repeats, and the
ratios are taken between runs of the same repeat. The load average is read before each
measurement. Ours is clocked from the instant the posts fall due (they are queued through the
API a few seconds ahead, so the API's CPU is not on the clock); the raw loop after each of its
processes has warmed up (imports, login, connections), from a barrier they pass together. The
workers' CPU seconds are read per process around our run: `worker_cpu_ms_per_delivery`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench import report
from bench.harness import TWILIO_AUTH, TWILIO_SID, BenchBrand, BenchStack, EventFollower, states
from broadcaster.core.ids import new_post_id, tid_for

CHANNELS = ["bluesky", "mastodon", "telegram", "sms", "rss"]
SUBSCRIBER = "+12025550123"
LOAD_CONCURRENCY = 16
QUEUE_LEAD_S = 3.0
COLUMNS = ["workers", "ours", "raw httpx", "Apprise", "ours/raw", "ours/Apprise", "CPU ms/dlv", "load 1m"]


# ---- ours ----------------------------------------------------------------------------------------
async def _queue_posts(api_url: str, brand: BenchBrand, texts: list[str], due: datetime) -> list[str]:
    sem = asyncio.Semaphore(LOAD_CONCURRENCY)
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=brand.auth()) as client:

        async def one(text: str) -> str:
            async with sem:
                r = await client.post(
                    "/v1/posts",
                    json={
                        "text": text,
                        "channels": CHANNELS,
                        "priority": "high",
                        "scheduled_at": due.isoformat(),
                    },
                )
                r.raise_for_status()
                return r.json()["id"]

        return list(await asyncio.gather(*(one(t) for t in texts)))


def ours(stack: BenchStack, brand: BenchBrand, n: int, timeout: float) -> dict[str, Any]:
    """Queue `n` posts through the API, all due at one instant T0 a little ahead, then time
    T0 -> the last final delivery: the API's own CPU is spent before the clock starts, so the
    figure is the workers' (the API is measured by `api_latency`)."""
    follower = EventFollower.from_now(stack.redis)
    tag = uuid.uuid4().hex[:6]
    lead = max(QUEUE_LEAD_S, n / 20)  # the API takes under 10 ms a post here, 25 ms on a busy host
    due = datetime.now(UTC) + timedelta(seconds=lead)
    queue_started = time.time()
    ids = asyncio.run(_queue_posts(stack.api.url, brand, [f"Bench {tag} post {i}" for i in range(n)], due))
    queued_s = time.time() - queue_started
    t0 = due.timestamp()
    if time.time() > t0:
        raise RuntimeError(f"queueing {n} posts took {queued_s:.1f} s, longer than the {lead:.0f} s lead")
    while time.time() < t0:
        time.sleep(min(0.05, t0 - time.time()))
    cpu_before = stack.cpu_by_process()
    commands_before = stack.redis_commands()
    done = follower.wait(n * len(CHANNELS), set(ids), timeout)
    cpu_after = stack.cpu_by_process()
    commands = {k: v - commands_before.get(k, 0) for k, v in stack.redis_commands().items()}
    finals = follower.finals
    end = max((t for t, *_ in finals), default=time.time())
    delivered = sum(1 for f in finals if f[3] == "delivered")
    elapsed = end - t0
    cpu = {k: round(v - cpu_before.get(k, 0.0), 3) for k, v in cpu_after.items()}
    worker_cpu = sum(v for k, v in cpu.items() if k.startswith("worker"))
    return {
        "posts": n,
        "deliveries": delivered,
        "complete": done,
        "states": states(finals),
        "seconds": elapsed,
        "clock": "from the instant the posts fall due (queued through the API beforehand)",
        "queued_in_s": queued_s,
        "per_s": delivered / elapsed if elapsed > 0 else None,
        "cpu_seconds_by_process": cpu,
        "worker_cpu_ms_per_delivery": 1000 * worker_cpu / delivered if delivered else None,
        # every command Redis ran meanwhile (ledger, broker, beat, the follower's reads), by name
        "redis_commands_per_delivery": {
            k: round(v / delivered, 2) for k, v in sorted(commands.items(), key=lambda kv: -kv[1]) if v
        }
        if delivered
        else {},
    }


# ---- raw limit -----------------------------------------------------------------------------------
async def _raw(
    urls: dict[str, Any], brand: BenchBrand, redis_url: str, n: int, concurrency: int, barrier: Any
) -> tuple[int, float, float, int]:
    # A connection idle past the fakes' keep-alive (uvicorn's 5 s: a long wait at the barrier
    # on a busy host) is closed by the server; reusing it failed the run with a ReadError.
    limits = httpx.Limits(
        max_connections=concurrency * 4, max_keepalive_connections=concurrency * 4, keepalive_expiry=2.0
    )
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
        retried = 0

        async def post(url: str, **kw: Any) -> httpx.Response:
            """A minimal client still retries a connection the server dropped (a busy host's fakes
            close some): once or twice, counted in the result."""
            nonlocal retried
            for attempt in range(3):
                try:
                    return await c.post(url, **kw)
                except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError):
                    if attempt == 2:
                        raise
                    retried += 1
            raise AssertionError("unreachable")

        async def one(i: int) -> int:
            text = f"Raw {tag} post {i}"
            pid = new_post_id()
            now = datetime.now(UTC)
            record = {"$type": "app.bsky.feed.post", "text": text, "createdAt": now.isoformat()}
            calls = [
                post(
                    f"{urls['bluesky']}/xrpc/com.atproto.repo.createRecord",
                    headers={"Authorization": f"Bearer {jwt}"},
                    json={
                        "repo": did,
                        "collection": "app.bsky.feed.post",
                        "rkey": tid_for(pid, int(now.timestamp() * 1e6)),
                        "record": record,
                    },
                ),
                post(
                    f"{urls['mastodon']}/api/v1/statuses",
                    headers={"Authorization": f"Bearer {brand.mastodon_token}", "Idempotency-Key": pid},
                    data={"status": text, "visibility": "public"},
                ),
                post(
                    f"{urls['telegram']}/bot{brand.bot}/sendMessage",
                    json={"chat_id": brand.chat, "text": text, "parse_mode": "HTML"},
                ),
                post(
                    f"{urls['twilio']}/2010-04-01/Accounts/{TWILIO_SID}/Messages.json",
                    auth=(TWILIO_SID, TWILIO_AUTH),
                    data={"To": SUBSCRIBER, "From": "+12015550100", "Body": text},
                ),
            ]
            async with sem:
                answers = await asyncio.gather(*calls)
                await r.hsetnx("fbbench:raw:rss:e", pid, text)
            return sum(1 for a in answers if a.status_code < 300) + 1

        # warm-up: the connection pools filled and every code path run once, untimed
        await asyncio.gather(*(one(-1 - i) for i in range(min(concurrency, 8))))
        await asyncio.to_thread(barrier.wait)
        started = time.time()
        sent = sum(await asyncio.gather(*(one(i) for i in range(n))))
        ended = time.time()
    await r.aclose()
    return sent, started, ended, retried


def _raw_process(args: tuple[dict[str, Any], BenchBrand, str, int, int], barrier: Any, out: Any) -> None:
    """One raw loop in its own process: imports, login and connections are warmed up first,
    then every process starts its timed part at one barrier, so only sending is timed."""
    urls, brand, redis_url, n, concurrency = args
    out.put(asyncio.run(_raw(urls, brand, redis_url, n, concurrency, barrier)))


def raw(stack: BenchStack, brand: BenchBrand, n: int, concurrency: int, processes: int = 1) -> dict[str, Any]:
    """The loop in `processes` OS processes (one loop per process, `concurrency` posts in flight
    each), so one process's CPU is not mistaken for the ceiling on a busy machine. The clock runs
    from the barrier all warmed-up processes pass together to the last process's last answer."""
    share = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(
            target=_raw_process,
            args=((stack.sandbox.urls, brand, stack.redis_server.url, k, concurrency), barrier, out),
        )
        for k in share
    ]
    for p in procs:
        p.start()
    results = []
    deadline = time.time() + 600
    while len(results) < len(procs):  # a process that died answers nothing: stop waiting for it
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.time() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"the raw loop failed (exit codes {dead}): see above") from None
    for p in procs:
        p.join()
    sent = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    return {
        "posts": n,
        "deliveries": sent,
        "processes": processes,
        "seconds": elapsed,
        "per_s": sent / elapsed,
        "clock": "after each process's warm-up (imports, login, connections), from a common barrier",
        "retried_requests": sum(r[3] for r in results),
    }


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
def _start_ours(stack: BenchStack, pool: str, workers: int, threads: int) -> None:
    if pool == "threads":
        stack.start_workers(threads, processes=workers, pool="threads")
    else:
        stack.start_workers(workers, pool=pool)


def _one_setting(
    stack: BenchStack,
    brand: BenchBrand,
    pool: str,
    w: int,
    threads: int,
    posts: int,
    repeats: int,
    raw_concurrency: int,
    raw_processes: int,
    apprise_messages: int,
    timeout: float,
) -> dict[str, Any]:
    _start_ours(stack, pool, w, threads)
    try:
        # warm-up: sessions, connections, each process's one-time imports and client set-up
        # (enough posts to reach every worker process, not only the first to ask)
        ours(stack, brand, max(5, posts // 20) * w, timeout)
        runs = []
        for _ in range(repeats):
            load: dict[str, list[float]] = {}
            stack.sandbox.reset()
            load["ours"] = report.load_avg()
            o = ours(stack, brand, posts, timeout)
            stack.sandbox.reset()
            load["raw"] = report.load_avg()
            rw = raw(stack, brand, posts, raw_concurrency, raw_processes)
            stack.sandbox.reset()
            load["apprise"] = report.load_avg()
            ap = apprise_run(stack, brand, apprise_messages, w)
            runs.append(
                {
                    "load_avg_before": load,
                    "ours": o,
                    "raw": rw,
                    "apprise": ap,
                    "ours_vs_raw": o["per_s"] / rw["per_s"] if o["per_s"] else None,
                    "ours_vs_apprise": o["per_s"] / ap["per_s"] if o["per_s"] else None,
                }
            )
    finally:
        stack.stop_workers()
    return {
        "pool": pool,
        "worker_processes": w,
        "concurrency_per_process": threads if pool == "threads" else 1,
        "runs": runs,
        "ours_per_s": report.median([r["ours"]["per_s"] or 0 for r in runs]),
        "raw_per_s": report.median([r["raw"]["per_s"] for r in runs]),
        "apprise_per_s": report.median([r["apprise"]["per_s"] for r in runs]),
        "ours_vs_raw": report.median([r["ours_vs_raw"] or 0 for r in runs]),
        "ours_vs_apprise": report.median([r["ours_vs_apprise"] or 0 for r in runs]),
        "all_complete": all(r["ours"]["complete"] for r in runs),
        "worker_cpu_ms_per_delivery": report.median(
            [r["ours"]["worker_cpu_ms_per_delivery"] or 0 for r in runs]
        ),
        "load_avg_1m": report.median([r["load_avg_before"]["ours"][0] for r in runs]),
    }


def run(
    workers: tuple[int, ...] = (1, 2, 4),
    posts: int = 1000,
    repeats: int = 3,
    raw_concurrency: int = 32,
    raw_processes: int = 0,
    apprise_messages: int = 100,
    timeout: float = 300,
    latencies: tuple[float, ...] | float = (0, 100),
    pools: tuple[str, ...] | str = ("threads",),
    threads: int = 32,
) -> dict[str, Any]:
    latencies = latencies if isinstance(latencies, tuple) else (latencies,)
    pools = pools if isinstance(pools, tuple) else (pools,)
    workers = workers if isinstance(workers, tuple) else (workers,)
    raw_processes = raw_processes or os.cpu_count() or 1  # one loop per core: the machine's limit
    brand = BenchBrand("tput", channels=("mastodon", "telegram", "sms"))
    # A threads worker shares one Bot per token between its threads, and one SMS thread pool:
    # size both to the threads, as the README says a threads deployment should (else Telegram
    # sends queue for 4 connections and give up after PTB's 1 s pool timeout, and SMS go 4 at a time).
    size = min(64, max(4, threads))
    stack = BenchStack([brand], settings={"telegram_pool_size": size, "sms_concurrency": size})
    results: dict[str, Any] = {
        "posts": posts,
        "repeats": repeats,
        "channels": CHANNELS,
        "latencies_ms": list(latencies),
        "pools": list(pools),
        "threads": threads,
        "raw_processes": raw_processes,
        "by_latency": {},
    }
    try:
        results["redis_server"] = stack.redis_info()
        stack.start(concurrency=None)
        stack.add_subscribers([SUBSCRIBER])
        for latency in latencies:
            stack.sandbox.set_latency(latency)
            by_pool: dict[str, Any] = {}
            for pool in pools:
                by_pool[pool] = {
                    str(w): _one_setting(
                        stack,
                        brand,
                        pool,
                        w,
                        threads,
                        posts,
                        repeats,
                        raw_concurrency,
                        raw_processes,
                        apprise_messages,
                        timeout,
                    )
                    for w in workers
                }
            results["by_latency"][_ms(latency)] = by_pool
    finally:
        stack.close()
    first = results["by_latency"][_ms(latencies[0])][pools[0]]
    results["by_workers"] = first  # the first latency and pool, as earlier runs reported it
    for latency in latencies:
        for pool in pools:
            rows = [
                (
                    f"{w} process{'es' if int(w) > 1 else ''}"
                    + (f" x {threads} threads" if pool == "threads" else f" (prefork -c {w})"),
                    v["ours_per_s"],
                    v["raw_per_s"],
                    v["apprise_per_s"],
                    f"{v['ours_vs_raw']:.0%}",
                    f"{v['ours_vs_apprise']:.1f}x",
                    v["worker_cpu_ms_per_delivery"],
                    v["load_avg_1m"],
                )
                for w, v in results["by_latency"][_ms(latency)][pool].items()
            ]
            report.table(
                f"Delivery throughput at {_ms(latency)} ms per API call, {pool} pool, deliveries/s "
                f"(median of {repeats}; {posts} posts x 5 channels)",
                COLUMNS,
                rows,
            )
    return results


def _ms(latency: float) -> str:
    return f"{latency:g}"
