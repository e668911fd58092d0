"""Celery tasks. Thin: load ids, call the worker logic, turn its outcome into a retry.

Task arguments are ids only (post id, channel name): Flower shows arguments.
"""

from __future__ import annotations

from broadcaster.queue import kick_key
from broadcaster.readiness import record_dispatch
from workers import delivery, dispatch, failover, health
from workers.celery_app import CONTROL_QUEUE, app
from workers.runtime import runtime


def enqueue_delivery(post_id: str, channel: str) -> None:
    deliver.apply_async((post_id, channel))


def redrive_delivery(post_id: str, channel: str) -> None:
    """A re-driven delivery is already late: the control queue gets it to a worker first."""
    deliver.apply_async((post_id, channel), queue=CONTROL_QUEUE)


@app.task(name="broadcaster.dispatch_due", ignore_result=True)
def dispatch_due() -> int:
    rt = runtime()
    rt.redis.delete(kick_key(rt.settings))  # posts queued from now on kick again (broadcaster.queue)
    n = dispatch.dispatch_due(rt, enqueue_delivery)
    record_dispatch(rt.redis, rt.settings)  # the scheduler's heartbeat, read by /readyz
    return n


@app.task(name="broadcaster.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    return dispatch.sweep(runtime(), redrive_delivery)


@app.task(name="broadcaster.deliver", bind=True, ignore_result=True, max_retries=None)
def deliver(self, post_id: str, channel: str) -> str:
    outcome = delivery.deliver_once(runtime(), post_id, channel)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.result


@app.task(name="broadcaster.probe_bluesky", ignore_result=True)
def probe_bluesky() -> int:
    """Beat: one probe task per Bluesky target in use (brands on one PDS share it)."""
    rt = runtime()
    timeout = rt.settings.health_probe_timeout_s
    targets = health.brands_by_target(rt)
    for target, brands in targets.items():
        checks = 2 + len(brands[0].bluesky.probe_feeds)
        probe_target.apply_async(
            (target,),
            expires=max(1.0, rt.settings.health_probe_interval_s * 2),
            soft_time_limit=timeout * (checks + 1) + 5,
            time_limit=timeout * (checks + 1) + 10,
        )
    return len(targets)


@app.task(name="broadcaster.probe_target", ignore_result=True)
def probe_target(target: str) -> str:
    return health.run_probe(runtime(), target, enqueue_delivery)


@app.task(name="broadcaster.health_actions", ignore_result=True)
def health_actions(target: str) -> None:
    """Act on a target's state now (after an operator's override) instead of after the next probe."""
    failover.reconcile(runtime(), target, enqueue_delivery)


@app.task(name="broadcaster.backfill", ignore_result=True)
def backfill(target: str) -> None:
    """Release one held post to Bluesky, then come back after the rate limit's pause."""
    wait = failover.backfill_step(runtime(), target, enqueue_delivery)
    if wait is not None:
        backfill.apply_async((target,), countdown=wait)
