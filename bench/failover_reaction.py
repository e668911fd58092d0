"""Failover reaction with the shipped settings: detection and recovery for a 502 and for a hang,
the false-trip rate, and the probe load while healthy, side by side in one run.

Each trial is a brand on a fake Bluesky of its own (its own health target), so trials do
not touch each other's health. Trials break `at_once` (2) targets at a time: with ten
targets confirming at the fast cadence together, a busy two-core machine measures its own
worker queue, not the breaker. Per trial and per fault, in turn
(`error`: the feeds answer 502 UpstreamFailure; `hang`: they accept and never answer, the
2026-04-12 shape), while login and createRecord keep working:

1. after a healthy spell (the steady cadence), the fault is injected at a random offset
   within one steady probe interval, so the trials sample every probe phase;
2. detection: from the injection to the target's `bluesky.down` event;
3. the fault is healed a few seconds after `down`; recovery: from the heal to `bluesky.up`;
4. for the 502, the end-to-end reaction too: from the injection to the first status of the
   trial's post stream (queued through the API, one due every `post_every_s`) on Mastodon.

A trial that never reacts (no `down`, no `up`, no post on Mastodon before the deadline) is
a failure and stays in the statistics as "never" (+inf): it is not dropped, so one miss
shows in the max and, if it is half of them, in the p50.

Computed beside the measurements, from the pure state machine (`broadcaster.core.health`):
the false-trip rate a year at a 10% random probe-error rate (the union bound of the
docstring there, times the number of signals a year a simulation of the adaptive cadence
gives, and that simulation's own trip count), and the probe load while healthy, measured
as requests per target per minute on the fakes during the healthy spells.

Profiles: `default` (the shipped settings, the targets: detection p50 <= 10 s, max <= 15 s,
recovery max <= 15 s) and `smoke` (seconds, for the smoke test only).
"""

from __future__ import annotations

import math
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench import report
from bench.harness import PREFIX, BenchBrand, BenchStack
from broadcaster.core.health import Health, Thresholds, next_probe_in, observe
from broadcaster.core.settings import Settings

PROFILES: dict[str, dict[str, Any]] = {
    "default": {},  # the shipped defaults: steady 7 s, confirm 0.4 s, 7 in a row trips
    # Only for the smoke test: seconds, not minutes.
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
FAULTS = ("error", "hang")
TARGETS = {"detect_p50_s": 10.0, "detect_max_s": 15.0, "recover_max_s": 15.0}
PROBE_ENDPOINTS = (
    "com.atproto.server.getSession",
    "app.bsky.feed.getTimeline",
    "app.bsky.feed.getFeed",
)
YEAR_S = 365 * 86400


def _setting(profile: dict[str, Any], name: str) -> float:
    return float(profile.get(name, Settings.model_fields[name].default))


def thresholds(profile: dict[str, Any]) -> Thresholds:
    return Thresholds.from_settings(Settings(_env_file=None, **profile))  # type: ignore[call-arg]


# ---- computed from the state machine ----------------------------------------------------------
def false_trips_per_year(
    th: Thresholds, error_rate: float = 0.1, hours: float = 150.0, max_signals: int = 200_000
) -> dict[str, Any]:
    """Signals independent with P(failed) = `error_rate`: a signal trips with probability at most
    p^confirm_after + P(Bin(window, p) >= trip_after) (a union bound); a simulation of the
    adaptive cadence over the pure machine gives the mean time between signals (and counts the
    trips it saw itself). The healthy probe takes 0.1 s; beat ticks every fast interval. It stops
    at `hours` or after `max_signals` signals (the smoke profile's 0.25 s cadence would take two
    million over 150 hours; 200,000 pin the mean gap as well)."""
    p = error_rate
    per_signal = (p**th.confirm_after if th.confirm_after else 0.0) + sum(
        math.comb(th.window, k) * p**k * (1 - p) ** (th.window - k)
        for k in range(th.trip_after, th.window + 1)
    )
    rng, h, t, signals, trips = random.Random(2026), Health(), 0.0, 0, 0
    while t < hours * 3600 and signals < max_signals:
        t = math.ceil((t + next_probe_in(h, th)) / th.fast_s) * th.fast_s + 0.1
        h, transition = observe(h, rng.random() >= p, th, t)
        signals += 1
        if transition is not None and transition.went_down:
            trips += 1
            h = Health()
    gap = t / signals
    return {
        "error_rate": error_rate,
        "per_signal_bound": per_signal,
        "mean_signal_gap_s": gap,
        "per_year_bound": per_signal * YEAR_S / gap,
        "simulated_hours": t / 3600,
        "simulated_trips": trips,
    }


# ---- statistics that keep the misses ----------------------------------------------------------
def with_misses(values: list[float | None]) -> dict[str, Any]:
    """p50 and max over every trial, a miss (None) counted as +inf and shown as None ("never")."""
    ordered = sorted(math.inf if v is None else v for v in values)
    if not ordered:
        return {"n": 0, "missed": 0, "min": None, "p50": None, "max": None}
    k = (len(ordered) - 1) / 2
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    if k == lo or math.isinf(ordered[lo]):
        p50 = ordered[lo]
    elif math.isinf(ordered[hi]):
        p50 = math.inf  # between a reaction and a miss: the median trial did not react in time
    else:
        p50 = ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)

    def shown(x: float) -> float | None:
        return None if math.isinf(x) else round(x, 2)

    return {
        "n": len(ordered),
        "missed": sum(1 for v in values if v is None),
        "min": shown(ordered[0]),
        "p50": shown(p50),
        "max": shown(ordered[-1]),
    }


# ---- measured on the fakes ----------------------------------------------------------------------
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
    return str(stack.sandbox.urls["extra_bluesky"][b.target]).split("://", 1)[1]


def _event_after(stack: BenchStack, kind: str, target: str, after: float) -> float | None:
    """When the target's first `kind` health event after `after` came (the ledger's clock)."""
    for _, body in stack.redis.xrange(PREFIX + "events", "-", "+"):
        if body.get("type") == kind and body.get("target") == target and float(body["at_epoch"]) >= after:
            return float(body["at_epoch"])
    return None


def _probe_rate(stack: BenchStack, brands: list[BenchBrand], spells: list[tuple[float, float]]) -> float:
    """Probe requests per target per minute on the fakes during the healthy spells."""
    total, minutes = 0, sum(b - a for a, b in spells) / 60 * len(brands)
    for b in brands:
        seen = stack.sandbox.requests(stack.sandbox.urls["extra_bluesky"][b.target])
        total += sum(
            1 for r in seen if r["endpoint"] in PROBE_ENDPOINTS and any(a <= r["at"] < z for a, z in spells)
        )
    return total / minutes if minutes else 0.0


def _phase(
    stack: BenchStack, brands: list[BenchBrand], fault: str, interval: float, patience_s: float, hold_s: float
) -> dict[str, dict[str, float | None]]:
    """Break every trial's feeds with `fault` (a random phase each), heal each `hold_s` after its
    `down`; detection and recovery per trial (None: never)."""
    rng = random.Random()
    breaks: dict[str, float] = {}

    def brk(b: BenchBrand, delay: float) -> None:
        time.sleep(delay)
        breaks[b.id] = time.time()
        stack.sandbox.control(
            stack.sandbox.urls["extra_bluesky"][b.target], "fail", group="feeds", mode=fault
        )

    threads = [threading.Thread(target=brk, args=(b, rng.uniform(0, interval)), daemon=True) for b in brands]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    detect: dict[str, float | None] = {b.id: None for b in brands}
    heals: dict[str, float] = {}
    deadline = max(breaks.values()) + patience_s
    while time.time() < deadline and len(heals) < len(brands):
        time.sleep(0.5)
        for b in brands:
            if b.id in heals:
                continue
            down = _event_after(stack, "bluesky.down", _target(stack, b), breaks[b.id])
            if down is not None:
                detect[b.id] = down - breaks[b.id]
            if (down is not None and time.time() >= down + hold_s) or time.time() >= deadline:
                heals[b.id] = time.time()
                stack.sandbox.control(stack.sandbox.urls["extra_bluesky"][b.target], "heal", group="feeds")
    for b in brands:
        if b.id not in heals:
            heals[b.id] = time.time()
            stack.sandbox.control(stack.sandbox.urls["extra_bluesky"][b.target], "heal", group="feeds")
    recover: dict[str, float | None] = {b.id: None for b in brands}
    deadline = max(heals.values()) + patience_s
    while time.time() < deadline and any(v is None for k, v in recover.items() if detect[k] is not None):
        time.sleep(0.5)
        for b in brands:
            if recover[b.id] is None and detect[b.id] is not None:
                up = _event_after(stack, "bluesky.up", _target(stack, b), heals[b.id])
                recover[b.id] = None if up is None else up - heals[b.id]
    return {"breaks": dict(breaks), "detect_s": detect, "recover_s": recover}


def run_profile(
    name: str, trials: int, post_every_s: float, warmup_s: float | None = None, at_once: int = 2
) -> dict[str, Any]:
    profile = PROFILES[name]
    th = thresholds(profile)
    interval = th.probe_every_s
    trip = int(_setting(profile, "health_trip_after"))
    target_s = interval * trip + 2  # the window rule's bound, for the end-to-end reaction
    warmup = warmup_s if warmup_s is not None else max(8.0, interval * 1.5)
    patience = 3 * (interval + th.confirm_after * th.fast_s + th.latency_budget_s) + 10
    hold = 3.0
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
        stack.start(concurrency=4, probes=True)  # as `broadcaster up` runs them
        t0 = time.time()
        spells: list[tuple[float, float]] = []
        faults: dict[str, Any] = {}
        reactions: dict[str, float | None] = {b.id: None for b in brands}
        rounds = [brands[i : i + at_once] for i in range(0, len(brands), at_once)]
        for fault in FAULTS:
            calm = time.time()
            time.sleep(warmup)  # healthy: the steady cadence (the first spell includes the first login)
            spells.append((calm + min(2.0, warmup / 2), time.time()))
            detect: dict[str, float | None] = {}
            recover: dict[str, float | None] = {}
            for group in rounds:  # a few targets at a time: the workers are not the bottleneck
                if fault == "error":
                    start = datetime.now(UTC) + timedelta(seconds=1)
                    _queue_stream(
                        stack, group, start, post_every_s, int((interval + patience) / post_every_s) + 5
                    )
                phase = _phase(stack, group, fault, interval, patience, hold)
                detect |= phase["detect_s"]
                recover |= phase["recover_s"]
                if fault == "error":
                    seen = stack.sandbox.requests(stack.sandbox.urls["mastodon"])
                    for b in group:
                        first = _first_stream_status(seen, b, phase["breaks"][b.id])
                        reactions[b.id] = None if first is None else first - phase["breaks"][b.id]
            faults[fault] = {
                "detect_s": detect,
                "recover_s": recover,
                "detect": with_misses(list(detect.values())),
                "recover": with_misses(list(recover.values())),
            }
        values = [v for v in reactions.values() if v is not None]
        return {
            "profile": name,
            "settings": {
                k: _setting(profile, k)
                for k in (
                    "health_probe_interval_s",
                    "health_confirm_interval_s",
                    "health_confirm_after",
                    "health_window",
                    "health_trip_after",
                    "health_recover_after",
                    "health_latency_budget_s",
                    "health_probe_timeout_s",
                )
            },
            "targets": TARGETS,
            "faults": faults,
            "false_trips": false_trips_per_year(th),
            "probe_requests_per_target_per_min": _probe_rate(stack, brands, spells),
            "probe_requests_computed_per_min": 60 / interval * len(PROBE_ENDPOINTS),
            "target_s": target_s,
            "trials": trials,
            "targets_broken_at_once": at_once,
            "reacted": len(values),
            "reaction_s": reactions,
            "reaction": with_misses(list(reactions.values())),
            "distribution": report.distribution(values),
            "within_target": sum(1 for v in values if v <= target_s),
            "warmup_s": warmup,
            "seconds": time.time() - t0,
        }
    finally:
        stack.close()


def _fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:.1f}"


def run(
    trials: int = 10,
    profiles: tuple[str, ...] = ("default",),
    post_every_s: float = 1.0,
    warmup_s: float | None = None,
    at_once: int = 2,
) -> dict[str, Any]:
    results = {p: run_profile(p, trials, post_every_s, warmup_s, at_once) for p in profiles}
    rows = []
    for p, r in results.items():
        f = r["false_trips"]
        for fault in FAULTS:
            d, u = r["faults"][fault]["detect"], r["faults"][fault]["recover"]
            rows.append(
                (
                    p,
                    fault,
                    f"{d['n'] - d['missed']}/{d['n']}",
                    _fmt(d["p50"]),
                    _fmt(d["max"]),
                    f"{u['n'] - u['missed']}/{u['n']}",
                    _fmt(u["p50"]),
                    _fmt(u["max"]),
                    f"{f['per_year_bound']:.2f}",
                    f"{r['probe_requests_per_target_per_min']:.1f}",
                )
            )
    report.table(
        "Failover reaction: feeds break -> down, fix -> up (s); false trips at 10% errors; probe load",
        ["profile", "fault", "down", "p50", "max", "up", "p50", "max", "false trips/yr", "probe req/min"],
        rows,
    )
    return {"profiles": results}
