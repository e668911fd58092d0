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


def run(
    rates: tuple[float, ...] = (50, 100, 150, 200, 300),
    duration_s: float = 5.0,
    repeats: int = 3,
    api_workers: int | None = None,
) -> dict[str, Any]:
    from broadcaster.core.settings import Settings

    brand = BenchBrand("api", channels=())
    # None: the production default (the setting's default, as `broadcaster api` uses it)
    workers = api_workers or Settings.model_fields["api_workers"].default
    stack = BenchStack([brand], settings={"api_workers": workers})
    levels: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    try:
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
        "levels": levels,
        "p99_ms_at_300": at_300["post_median"]["p99_ms"] if at_300 else None,
        "target": "p99 < 25 ms at 300 requests/s",
    }
