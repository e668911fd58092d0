"""API latency: `POST /v1/posts` p50/p99 and throughput at increasing request rates.

The API runs as `broadcaster api` does (uvicorn with its production default of worker
processes, BROADCASTER_API_WORKERS; `--set api_workers=1` for one), with a bare route
(`GET /bench/bare`, no work) in the same server as the framework's ceiling. The load
generator is a separate process: an open loop that starts each request at its scheduled
time whether or not earlier ones have answered, and measures latency from that scheduled
time, so a stall counts against every request it delays (no coordinated omission). Its
HTTP client is a few lines over asyncio streams with keep-alive connections: httpx spends
more CPU per request than the bare route does, and would have measured itself.

No Celery worker runs during the measurement: the API is measured as on a host of its own.
Target: p99 under 25 ms at 300 requests/s.

Then a brand polls `GET /v1/events` (a page after its last cursor) while the stream holds
`other_events` events of another brand (a million by default): closed-loop polls, side by side
with the bare route, with the Redis XRANGE calls per poll read from INFO commandstats (one for
the brand's ids, one per event on the page: none for the other brand's).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
import uuid
from typing import Any

from bench import report
from bench.harness import BenchBrand, BenchStack


class _Conn:
    """One keep-alive HTTP/1.1 connection, written by hand: an httpx client spends more CPU per
    request than the server's bare route, and on 2 cores the load generator must stay cheap."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


def _request_bytes(host: str, path: str, headers: dict[str, str], text: str) -> bytes:
    lines = [f"{'POST' if path == '/v1/posts' else 'GET'} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    body = json.dumps({"text": text}).encode() if path == "/v1/posts" else b""
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _open_loop(url: str, path: str, headers: dict[str, str], rate: float, duration: float) -> dict:
    n = int(rate * duration)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    host, port = url.split("://", 1)[1].split(":")
    idle: list[_Conn] = []
    tag = uuid.uuid4().hex[:6]

    async def send(text: str) -> int:
        conn = idle.pop() if idle else _Conn(*await asyncio.open_connection(host, int(port)))
        status = await asyncio.wait_for(conn.request(_request_bytes(host, path, headers, text)), 5)
        idle.append(conn)
        return status

    for i in range(20):  # warm the server and a few connections
        await send(f"warm {tag} {i}")
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05

    async def fire(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        try:
            status = await send(f"load {tag} {i}")
            key = str(status) if status >= 300 else None
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as e:
            key = type(e).__name__
        if key:
            errors[key] = errors.get(key, 0) + 1
        else:
            latencies.append(loop.time() - due)

    await asyncio.gather(*(fire(i) for i in range(n)))
    elapsed = loop.time() - start
    for conn in idle:
        conn.writer.close()
    return {"sent": n, "ok": len(latencies), "errors": errors, "elapsed": elapsed, "latencies": latencies}


def _load(args: tuple[str, str, dict[str, str], float, float]) -> dict:
    return asyncio.run(_open_loop(*args))


def measure(api_url: str, path: str, headers: dict[str, str], rate: float, duration: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        raw = pool.apply(_load, ((api_url, path, headers, rate, duration),))
    lat = [x * 1000 for x in raw.pop("latencies")]
    return raw | {
        "rate": rate,
        "achieved_per_s": raw["ok"] / raw["elapsed"] if raw["elapsed"] else None,
        "p50_ms": report.percentile(lat, 50),
        "p90_ms": report.percentile(lat, 90),
        "p99_ms": report.percentile(lat, 99),
        "max_ms": max(lat) if lat else None,
    }


def _xrange_calls(stack: BenchStack) -> int:
    stats = stack.redis.info("commandstats")
    return int(stats.get("cmdstat_xrange", {}).get("calls", 0))


def _keys() -> Any:
    from broadcaster.core.settings import Settings
    from broadcaster.ledger.keys import Keys

    return Keys(Settings(_env_file=None).key_prefix)


def _fill_other_brand(stack: BenchStack, other: str, n: int) -> None:
    """`n` events of another brand, as the ledger writes them (the body in the deployment's stream,
    its id in the brand's)."""
    from broadcaster.ledger.store import POINTER

    keys = _keys()
    body = {"type": "delivery.delivered", "brand": other, "post": "p_other", "channel": "rss"}
    done = 0
    while done < n:
        pipe = stack.redis.pipeline(transaction=False)
        for _ in range(min(10_000, n - done)):
            pipe.xadd(keys.events, body)  # type: ignore[arg-type]  # redis-py's invariant FieldT
            pipe.xadd(keys.brand_events(other), dict([POINTER]))  # type: ignore[arg-type]
        pipe.execute()
        done = min(n, done + 10_000)
        if done % 200_000 == 0 or done == n:
            report.console.print(f"  {done:,} events of another brand in the stream")


def events_poll(stack: BenchStack, brand: BenchBrand, other_events: int, polls: int) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=stack.api.url, timeout=30) as http:

        def queue(text: str) -> None:
            r = http.post("/v1/posts", json={"text": text, "channels": ["rss"]}, headers=brand.auth())
            r.raise_for_status()

        queue("the brand's event before the flood")
        # The brand's cursor after every event it has had (its client's last poll).
        cursor = _keys().brand_events(brand.id)
        cursor = stack.redis.xrevrange(cursor, count=1)[0][0]
        _fill_other_brand(stack, "other-brand", other_events)
        queue("the brand's event after the flood")
        lat: dict[str, list[float]] = {"poll": [], "bare": []}
        xrange_before = _xrange_calls(stack)
        for _ in range(polls):
            t = time.perf_counter()
            page = http.get(f"/v1/events?after={cursor}&limit=100", headers=brand.auth()).json()
            lat["poll"].append((time.perf_counter() - t) * 1000)
            assert [e["type"] for e in page["items"]] == ["post.queued"], page
            t = time.perf_counter()
            http.get("/bench/bare")
            lat["bare"].append((time.perf_counter() - t) * 1000)
        xrange_per_poll = (_xrange_calls(stack) - xrange_before) / polls
    out = {
        "other_events": other_events,
        "polls": polls,
        "xrange_per_poll": xrange_per_poll,
        **{
            f"{k}_{q}_ms": report.percentile(v, n)
            for k, v in lat.items()
            for q, n in (("p50", 50), ("p99", 99))
        },
    }
    report.table(
        f"GET /v1/events with {other_events:,} events of another brand in the stream ({polls} polls)",
        ["route", "p50 ms", "p99 ms", "XRANGE per poll (1 + events on the page)"],
        [
            ("/v1/events (a page after the cursor)", out["poll_p50_ms"], out["poll_p99_ms"], xrange_per_poll),
            ("/bench/bare", out["bare_p50_ms"], out["bare_p99_ms"], None),
        ],
    )
    return out


def run(
    rates: tuple[float, ...] = (50, 100, 150, 200, 300),
    duration_s: float = 5.0,
    repeats: int = 3,
    api_workers: int | None = None,
    other_events: int = 1_000_000,
    polls: int = 300,
) -> dict[str, Any]:
    from broadcaster.core.settings import Settings

    brand = BenchBrand("api", channels=())
    # None: the production default (the setting's default, as `broadcaster api` uses it)
    workers = api_workers or Settings.model_fields["api_workers"].default
    stack = BenchStack([brand], settings={"api_workers": workers})
    levels: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
        redis_server = stack.redis_info()
        stack.start(concurrency=None, beat=False)
        for rate in rates:
            level: dict[str, Any] = {"rate": rate, "post": [], "bare": []}
            for _ in range(repeats):  # side by side: our route, then the bare one, each repeat
                level["post"].append(measure(stack.api.url, "/v1/posts", brand.auth(), rate, duration_s))
                level["bare"].append(measure(stack.api.url, "/bench/bare", {}, rate, duration_s))
                time.sleep(0.5)
            for kind in ("post", "bare"):
                runs = level[kind]
                level[f"{kind}_median"] = {
                    k: report.median([r[k] for r in runs if r[k] is not None])
                    for k in ("achieved_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms")
                }
                level[f"{kind}_errors"] = sum(sum(r["errors"].values()) for r in runs)
            levels.append(level)
        poll = events_poll(stack, brand, other_events, polls)
    finally:
        load_after = os.getloadavg()
        stack.close()
    rows = [
        (
            f"{lv['rate']:g}/s",
            lv["post_median"]["achieved_per_s"],
            lv["post_median"]["p50_ms"],
            lv["post_median"]["p90_ms"],
            lv["post_median"]["p99_ms"],
            lv["post_errors"],
            lv["bare_median"]["achieved_per_s"],
            lv["bare_median"]["p50_ms"],
            lv["bare_median"]["p90_ms"],
            lv["bare_median"]["p99_ms"],
        )
        for lv in levels
    ]
    report.table(
        f"API latency, ms (median of {repeats} runs of {duration_s:g} s each; open-loop load; "
        f"{workers} API worker process(es); load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after)",
        [
            "offered",
            "POST /v1/posts req/s",
            "p50",
            "p90",
            "p99",
            "errors",
            "bare req/s",
            "bare p50",
            "bare p90",
            "bare p99",
        ],
        rows,
    )
    at_300 = next((lv for lv in levels if lv["rate"] == 300), None)
    return {
        "api_workers": workers,
        "load_average": {"before": load_before, "after": load_after},
        "redis_server": redis_server,
        "levels": levels,
        "p99_ms_at_300": at_300["post_median"]["p99_ms"] if at_300 else None,
        "target": "p99 < 25 ms at 300 requests/s",
        "events_poll": poll,
    }
