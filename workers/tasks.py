"""Celery tasks. Thin: load ids, call the worker logic, turn its outcome into a retry.

Task arguments are ids only (post id, channel name): Flower shows arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery.exceptions import SoftTimeLimitExceeded

from broadcaster.common.celeryconf import CONTROL_QUEUE, SHARE_TASK
from broadcaster.common.queue import kick_key
from broadcaster.core.brands import BrandsFileError
from broadcaster.core.health import Thresholds
from broadcaster.ledger import health as health_store
from broadcaster.ledger.readiness import record_dispatch
from workers import delivery, dispatch, failover, health
from workers.celery_app import app
from workers.runtime import Handoff, runtime

log = logging.getLogger("broadcaster.tasks")


# Deliveries of one channel per message when a dispatch hands out many. 25, not 10: at the
# backlog benchmark the workers spent 37 CPU s instead of 42 (fewer messages to receive, trace,
# ack and report to Flower); each delivery is still its own claim, send and record.
DELIVER_BATCH = 25
HEALTH_FRESH_S = 1.0  # a batch's Bluesky deliveries share a target's health read this long
SEND_BOUND_S = 30  # a generous bound on one send (the channels' own timeouts are shorter)


def enqueue_delivery(post_id: str, channel: str) -> None:
    deliver.apply_async((post_id, channel))


def handoff() -> Handoff:
    """How the worker logic hands work back to Celery (see `workers.runtime.Handoff`)."""
    return Handoff(deliver=enqueue_delivery, backfill=lambda target: backfill.apply_async((target,)))


class DeliveryBatch:
    """Collects the deliveries a dispatch run hands out and sends them as few messages.

    One Celery message per delivery was a sixth of a worker's time in a backlog; grouped by
    channel (a slow channel holds up only its own), up to `DELIVER_BATCH` a message. A lone
    delivery still travels as a `deliver` task, so a single post is as quick as ever.
    """

    def __init__(
        self,
        send_one: Callable[[str, str], None] | None = None,
        send_many: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.pairs: list[tuple[str, str]] = []
        self.send_one = send_one or enqueue_delivery
        self.send_many = send_many or _send_many

    def __call__(self, post_id: str, channel: str) -> None:
        self.pairs.append((post_id, channel))

    def flush(self) -> None:
        by_channel: dict[str, list[str]] = {}
        for post_id, channel in self.pairs:
            by_channel.setdefault(channel, []).append(post_id)
        self.pairs = []
        for channel, ids in by_channel.items():
            for i in range(0, len(ids), DELIVER_BATCH):
                chunk = ids[i : i + DELIVER_BATCH]
                if len(chunk) == 1:
                    self.send_one(chunk[0], channel)
                else:
                    self.send_many(channel, chunk)


def _send_many(channel: str, post_ids: list[str]) -> None:
    soft = 90 + SEND_BOUND_S * (len(post_ids) - 1)  # each send is bounded by its own timeouts
    deliver_many.apply_async((channel, post_ids), soft_time_limit=soft, time_limit=soft + 30)


def redrive_delivery(post_id: str, channel: str) -> None:
    """A re-driven delivery is already late: the control queue gets it to a worker first."""
    deliver.apply_async((post_id, channel), queue=CONTROL_QUEUE)


@app.task(name="broadcaster.dispatch_due", ignore_result=True, send_events=False)  # housekeeping
def dispatch_due() -> int:
    rt = runtime()
    rt.redis.delete(kick_key(rt.settings))  # posts queued from now on kick again (broadcaster.common.queue)
    batch = DeliveryBatch()
    try:
        n = dispatch.dispatch_due(rt, batch, hand_off=lambda ids: dispatch_posts.apply_async((ids,)))
    finally:
        batch.flush()
    record_dispatch(rt.redis, rt.settings)  # the scheduler's heartbeat, read by /readyz
    return n


@app.task(name=SHARE_TASK, ignore_result=True, send_events=False)  # housekeeping
def dispatch_posts(post_ids: list[str]) -> int:
    """A share of a backlog the dispatcher claimed (ids only): several workers dispatch at once."""
    batch = DeliveryBatch()
    try:
        return dispatch.dispatch_posts(runtime(), post_ids, batch)
    finally:
        batch.flush()


@app.task(name="broadcaster.sweep", ignore_result=True, send_events=False)  # housekeeping
def sweep() -> dict[str, int]:
    return dispatch.sweep(runtime(), redrive_delivery)


@app.task(name="broadcaster.deliver", bind=True, ignore_result=True, max_retries=None)
def deliver(self, post_id: str, channel: str) -> str:
    outcome = delivery.deliver_once(runtime(), post_id, channel, handoff())
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.result


@app.task(name="broadcaster.deliver_many", ignore_result=True)
def deliver_many(channel: str, post_ids: list[str]) -> int:
    """Deliveries of one channel, one after the other; each is its own claim, send and record.

    A retry goes back as a `deliver` task of its own; one that raises is left to the sweeper
    (it is in the in-flight index) and the rest go on.
    """
    rt = runtime()
    done = 0
    health = failover.HealthReads(rt, fresh_s=HEALTH_FRESH_S)
    for post_id in post_ids:
        try:
            outcome = delivery.deliver_once(rt, post_id, channel, handoff(), health)
        except (SoftTimeLimitExceeded, BrandsFileError):
            raise  # the rest stay indexed in flight: the sweeper hands them out again
        except Exception:
            log.exception("delivery of %s to %s failed; the sweeper will retry it", post_id, channel)
            continue
        if outcome.retry_in is not None:
            deliver.apply_async((post_id, channel), countdown=outcome.retry_in)
        done += 1
    return done


@app.task(name="broadcaster.probe_bluesky", ignore_result=True, send_events=False)  # housekeeping
def probe_bluesky() -> int:
    """Beat, every fast interval: a probe task per Bluesky target whose next probe is due (brands
    on one PDS share it). The adaptive cadence is the health's due time (`core.health.next_probe_in`):
    steady while nothing is in doubt, fast while a failure or a recovery is being confirmed."""
    rt = runtime()
    timeout = rt.settings.health_probe_timeout_s
    fast = Thresholds.from_settings(rt.settings).fast_s
    sent = 0
    for target, brands in health.brands_by_target(rt).items():
        if not health_store.probe_due(rt.redis, rt.settings, target):
            continue
        checks = 2 + len(brands[0].bluesky.probe_feeds)
        probe_target.apply_async(
            (target,),
            expires=max(1.0, fast * 2),
            soft_time_limit=timeout * (checks + 1) + 5,
            time_limit=timeout * (checks + 1) + 10,
        )
        sent += 1
    return sent


@app.task(name="broadcaster.probe_target", ignore_result=True, send_events=False)  # housekeeping
def probe_target(target: str) -> str:
    rt = runtime()
    result, transition = health.run_probe(rt, target)
    if result not in ("busy", "not due", "unknown target"):
        failover.reconcile(rt, target, handoff(), transition)
    return result


@app.task(name="broadcaster.health_actions", ignore_result=True)
def health_actions(target: str) -> None:
    """Act on a target's state now (after an operator's override) instead of after the next probe."""
    failover.reconcile(runtime(), target, handoff())


@app.task(name="broadcaster.backfill", ignore_result=True)
def backfill(target: str) -> None:
    """Release one held post to Bluesky, then come back after the rate limit's pause."""
    wait = failover.backfill_step(runtime(), target, enqueue_delivery)
    if wait is not None:
        backfill.apply_async((target,), countdown=wait)
