"""Failover reaction: from the moment Bluesky's feeds break to the first rerouted post on Mastodon.

Each trial is a brand on a fake Bluesky of its own (its own health target), so the trials
of one profile run side by side without touching each other's health. Per trial:

1. posts are queued through the API, one due every `post_every_s`, for the whole run
   (they go to Bluesky while it is healthy: login and createRecord keep working);
2. after a warm-up (the breaker's window filled with healthy probes) the trial's fake
   Bluesky is told to answer its feeds with 502 UpstreamFailure (`fail("feeds")`), at a
   random offset within one probe interval, so the trials sample every probe phase;
3. the reaction is the time from that call to the arrival, at the Mastodon fake, of the
   first status of a post of the stream (the outage notice goes first and is not counted).

Profiles: `default` (the shipped settings) and `fastest` (the fastest setting the runbook
recommends). Target: reaction <= probe interval x trip threshold + 2 s.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from math import comb
from typing import Any

import httpx

from bench import report
from bench.harness import PREFIX, BenchBrand, BenchStack
from broadcaster.ledger.keys import QUEUES, Keys

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},  # the shipped defaults: probe every 10 s, trip after 12 of 20
    "fastest": {
        "health_probe_interval_s": 2,
        "health_probe_timeout_s": 2,
        "health_latency_budget_s": 1.5,
        "health_window": 10,
        "health_degrade_after": 5,
        "health_trip_after": 7,
        "health_recover_after": 3,
    },
    # Only for the smoke test (flaps at the slightest error): seconds, not minutes.
    "smoke": {
        "health_probe_interval_s": 0.25,
        "health_probe_timeout_s": 1,
        "health_latency_budget_s": 0.8,
        "health_window": 4,
        "health_degrade_after": 2,
        "health_trip_after": 3,
        "health_recover_after": 2,
        "dispatch_interval_s": 0.25,
    },
}
DEFAULTS = {"health_probe_interval_s": 10.0, "health_window": 20, "health_trip_after": 12}


def false_trips_per_day(interval_s: float, window: int, trip: int, error_rate: float = 0.1) -> float:
    """Expected false trips a day when probes fail at random with `error_rate` (upper bound:
    the chance that a window holds >= trip failures, once per probe)."""
    e = error_rate
    p = sum(comb(window, k) * e**k * (1 - e) ** (window - k) for k in range(trip, window + 1))
    return p * 86400 / interval_s


def _setting(profile: dict[str, Any], name: str) -> float:
    return float(profile.get(name, DEFAULTS[name]))


def _queue_stream(
    stack: BenchStack, brands: list[BenchBrand], start: datetime, every_s: float, n: int
) -> None:
    """Queue every trial's post stream up front (scheduled), so the load is there all along."""
    with httpx.Client(base_url=stack.api.url, timeout=30) as http:
        for b in brands:
            for i in range(n):
                at = (start + timedelta(seconds=i * every_s)).isoformat()
                r = http.post(
                    "/v1/posts",
                    json={"text": f"Stream {b.id} post {i}", "scheduled_at": at},
                    headers=b.auth(),
                )
                r.raise_for_status()


def _first_stream_status(requests: list[dict[str, Any]], brand: BenchBrand, after: float) -> float | None:
    token = f"Bearer {brand.mastodon_token}"
    times = [
        r["at"]
        for r in requests
        if r["endpoint"] == "statuses.create"
        and r["status"] == 200
        and r["headers"].get("authorization") == token
        and f"Stream {brand.id} post" in str((r["body"] or {}).get("status", ""))
        and r["at"] >= after
    ]
    return min(times) if times else None


def _target(stack: BenchStack, b: BenchBrand) -> str:
    return stack.sandbox.urls["extra_bluesky"][b.target].split("://", 1)[1]


def _trip_times(stack: BenchStack) -> dict[str, float]:
    """When each target went `down`, from the health events in the ledger."""
    out: dict[str, float] = {}
    for _, body in stack.redis.xrange(PREFIX + "events", "-", "+"):
        if body.get("type") == "bluesky.down" and body.get("target") not in out:
            out[body["target"]] = float(body["at_epoch"])
    return out


def run_profile(name: str, trials: int, post_every_s: float, warmup_s: float | None = None) -> dict[str, Any]:
    profile = PROFILES[name]
    interval = _setting(profile, "health_probe_interval_s")
    trip = int(_setting(profile, "health_trip_after"))
    window = int(_setting(profile, "health_window"))
    target_s = interval * trip + 2
    warmup = warmup_s if warmup_s is not None else max(8.0, interval * 1.5)
    brands = [
        BenchBrand(
            f"trial{i:02d}",
            channels=("mastodon",),
            routing={"failover": ["mastodon"], "always_on": [], "lookback_minutes": 0},
            target=i,
        )
        for i in range(trials)
    ]
    stack = BenchStack(brands, settings=profile, extra_targets=trials)
    try:
        stack.start(concurrency=4)
        budget = warmup + interval + target_s * 1.5 + 10
        start = datetime.now(UTC) + timedelta(seconds=2)
        _queue_stream(stack, brands, start, post_every_s, int(budget / post_every_s) + 1)
        t0 = time.time()
        breaks: dict[str, float] = {}
        rng = random.Random()

        def brk(b: BenchBrand, delay: float) -> None:
            time.sleep(delay)
            url = stack.sandbox.urls["extra_bluesky"][b.target]
            breaks[b.id] = time.time()
            stack.sandbox.control(url, "fail", group="feeds", mode="error")

        threads = [
            threading.Thread(target=brk, args=(b, warmup + rng.uniform(0, interval)), daemon=True)
            for b in brands
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        reactions: dict[str, float | None] = {b.id: None for b in brands}
        deadline = max(breaks.values()) + target_s * 1.5 + 5
        depth: list[int] = []  # messages waiting in the broker: a busy worker delays the reroute
        while time.time() < deadline and any(v is None for v in reactions.values()):
            time.sleep(1.0)
            depth.append(sum(stack.redis.llen(Keys(PREFIX).broker_queue(q)) for q in QUEUES))
            seen = stack.sandbox.requests(stack.sandbox.urls["mastodon"])
            for b in brands:
                if reactions[b.id] is None:
                    first = _first_stream_status(seen, b, breaks[b.id])
                    if first is not None:
                        reactions[b.id] = first - breaks[b.id]
        trips = _trip_times(stack)
        detect = {b.id: trips[_target(stack, b)] - breaks[b.id] for b in brands if _target(stack, b) in trips}
        values = [v for v in reactions.values() if v is not None]
        return {
            "profile": name,
            "settings": {**DEFAULTS, **profile},
            "target_s": target_s,
            "false_trips_per_day_at_10pct_errors": false_trips_per_day(interval, window, trip),
            "trials": trials,
            "reacted": len(values),
            "reaction_s": reactions,
            "distribution": report.distribution(values),
            "within_target": sum(1 for v in values if v <= target_s),
            # Where the time goes: break -> `down` (probes), then `down` -> on Mastodon (reroute).
            "detect_s": report.distribution(list(detect.values())),
            "reroute_s": report.distribution(
                [reactions[k] - v for k, v in detect.items() if reactions.get(k) is not None]
            ),
            "queue_depth": report.distribution(depth),
            "warmup_s": warmup,
            "seconds": time.time() - t0,
        }
    finally:
        stack.close()


def run(
    trials: int = 20,
    profiles: tuple[str, ...] = ("fastest", "default"),
    post_every_s: float = 1.0,
    warmup_s: float | None = None,
) -> dict[str, Any]:
    results = {p: run_profile(p, trials, post_every_s, warmup_s) for p in profiles}
    rows = []
    for p, r in results.items():
        d = r["distribution"]
        rows.append(
            (
                p,
                f"{r['reacted']}/{r['trials']}",
                d["min"],
                d["p50"],
                d["p90"],
                d["max"],
                r["target_s"],
                f"{r['within_target']}/{r['trials']}",
                f"{r['false_trips_per_day_at_10pct_errors']:.3g}",
            )
        )
    report.table(
        "Failover reaction: feeds break -> first rerouted post on Mastodon (s)",
        ["profile", "reacted", "min", "p50", "p90", "max", "target", "within", "false trips/day @10%"],
        rows,
    )
    return {"profiles": results}
