"""Is this deployment actually publishing? Heartbeats in Redis and the checks behind /readyz.

A process that answers HTTP but publishes nothing must not look ready, so readiness
asks the ledger: Redis answers, some worker sent a heartbeat recently, the dispatcher
(run by the beat scheduler every second) ran recently, and no post has waited for
dispatch longer than a margin.

Keys: `heartbeat:workers` (hash worker name -> epoch seconds, written by each worker's
main process on Celery's heartbeat) and `heartbeat:dispatch` (epoch seconds, written
by every run of `broadcaster.dispatch_due`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis

from broadcaster.core.settings import Settings
from broadcaster.ledger import health
from broadcaster.ledger.clock import clock_for
from broadcaster.ledger.keys import Keys


def record_dispatch(r: redis.Redis, settings: Settings, now: float | None = None) -> None:
    r.set(Keys(settings.key_prefix).dispatch_heartbeat, str(now or clock_for(r).now()))


# Keep the latest start: a slow pass finishing after a newer one must not move it back.
_LATEST = """
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > old then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


def record_sweep(r: redis.Redis, settings: Settings, started: float) -> None:
    """A sweeper pass that started at `started` (ledger clock) has finished.

    The sweeper sends no task events (Flower would list it every few seconds), so whoever must
    know that a full pass ran after a moment (the tests' `wait_quiet`) reads this instead."""
    r.eval(_LATEST, 1, Keys(settings.key_prefix).sweep_heartbeat, f"{started:.6f}")


def last_sweep_started(r: redis.Redis, settings: Settings) -> float:
    """The start of the latest finished sweeper pass (0: none yet)."""
    value = r.get(Keys(settings.key_prefix).sweep_heartbeat)
    return float(cast("str", value)) if value else 0.0


def record_worker(r: redis.Redis, settings: Settings, hostname: str, now: float | None = None) -> None:
    r.hset(Keys(settings.key_prefix).worker_heartbeats, hostname, str(now or clock_for(r).now()))


def forget_worker(r: redis.Redis, settings: Settings, hostname: str) -> None:
    r.hdel(Keys(settings.key_prefix).worker_heartbeats, hostname)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    # False: reported (a warning), but publishing works: it does not make the deployment unready.
    blocking: bool = True


def probes_check(misconfigured: dict[str, list[str]]) -> Check:
    """Probe feeds that cannot succeed (target -> feed URIs): outage detection is blind to them,
    publishing is not, so this check warns without making the deployment unready."""
    if not misconfigured:
        return Check("probes", True, "every probe feed answers", blocking=False)
    named = "; ".join(f"{t}: {', '.join(sorted(f))}" for t, f in sorted(misconfigured.items()))
    return Check(
        "probes", False, f"probe feeds misconfigured (answer 4xx, left out): {named}", blocking=False
    )


def evaluate(
    settings: Settings,
    now: float,
    worker_beats: dict[str, str],
    dispatch_beat: str | None,
    overdue: int,
) -> list[Check]:
    """The readiness checks from what Redis holds (pure, so it is tested without Redis)."""
    fresh = sorted(w for w, ts in worker_beats.items() if now - float(ts) <= settings.ready_worker_max_age_s)
    checks = [Check("redis", True, "answers")]
    checks.append(
        Check("worker", bool(fresh), f"{len(fresh)} alive" if fresh else "no worker heartbeat recently")
    )
    if dispatch_beat is None:
        checks.append(Check("scheduler", False, "the dispatcher never ran (is beat running?)"))
    else:
        age = now - float(dispatch_beat)
        ok = age <= settings.ready_scheduler_max_age_s
        checks.append(Check("scheduler", ok, f"dispatcher last ran {age:.0f}s ago"))
    checks.append(
        Check(
            "schedule",
            overdue == 0,
            f"{overdue} posts overdue by more than {settings.ready_overdue_margin_s:.0f}s",
        )
    )
    return checks


def check(r: redis.Redis, settings: Settings, now: float | None = None) -> list[Check]:
    """Read the heartbeats and the schedule; a Redis failure is a failed `redis` check."""
    now = now or clock_for(r).now()
    try:
        pipe = r.pipeline(transaction=False)
        pipe.hgetall(Keys(settings.key_prefix).worker_heartbeats)
        pipe.get(Keys(settings.key_prefix).dispatch_heartbeat)
        pipe.zcount(Keys(settings.key_prefix).sched, "-inf", now - settings.ready_overdue_margin_s)
        workers, dispatch, overdue = pipe.execute()
        bad = {
            t: list(feeds)
            for t in health.known_targets(r, settings)
            if (feeds := health.misconfigured_checks(r, settings, t))
        }
    except redis.RedisError as e:
        return [Check("redis", False, f"unreachable ({type(e).__name__})")]
    return [*evaluate(settings, now, workers, dispatch, int(overdue)), probes_check(bad)]


def container_check(r: redis.Redis, settings: Settings, component: str, worker_name: str = "") -> Check:
    """For `broadcaster healthcheck` (Docker): one component, judged from Redis."""
    checks = {c.name: c for c in check(r, settings)}
    if not checks["redis"].ok:
        return checks["redis"]
    if component == "worker":
        raw = r.hget(Keys(settings.key_prefix).worker_heartbeats, worker_name)
        age = clock_for(r).now() - float(raw) if raw else None
        ok = age is not None and age <= settings.ready_worker_max_age_s
        return Check(
            "worker", ok, f"{worker_name} heartbeat {'missing' if age is None else f'{age:.0f}s old'}"
        )
    if component == "scheduler":
        return checks["scheduler"]
    bad = [c for c in checks.values() if not c.ok and c.blocking]
    return Check("ready", not bad, "; ".join(c.detail for c in bad) or "ready")
