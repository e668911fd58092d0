"""Hand due posts to the workers, exactly once each, and re-drive what a lost worker left.

The schedule lives in Redis (`sched`), not in Celery ETAs: a claim moves a due post to
`dispatching` atomically, routing decides its deliveries, and each pending delivery is
indexed in `inflight` *before* its task is sent, so the sweeper can re-drive anything
a crash dropped between the two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from broadcaster import routing
from broadcaster.brands import Brand
from broadcaster.celeryconf import QUEUE
from broadcaster.delivery_rules import should_redrive
from broadcaster.models import ACTIVE_STATES, FINAL_STATES, Delivery, DeliveryState, now_utc
from workers.runtime import Runtime

log = logging.getLogger("broadcaster.dispatch")

Enqueue = Callable[[str, str], None]


def bluesky_is_down(rt: Runtime, brand: Brand) -> bool:
    """Seam for the health watcher: is the brand's Bluesky target down for routing?"""
    from broadcaster.health_store import is_down

    return is_down(rt.redis, rt.settings, brand.bluesky.target)


def after_reroute(rt: Runtime, brand: Brand, post_id: str, enqueue: Enqueue) -> None:
    """Seam for the failover: queue the outage notice first, remember the held post for backfill."""
    from workers.failover import after_dispatch_reroute

    after_dispatch_reroute(rt, brand, post_id, enqueue)


def apply_routes(rt: Runtime, post_id: str, changes: dict[str, routing.Route]) -> None:
    for channel, route in changes.items():

        def change(d: Delivery | None, route: routing.Route = route, channel: str = channel):
            if d is None:
                return Delivery(channel=channel, state=route.state, reason=route.reason)
            if d.state in FINAL_STATES or d.state == route.state:
                return None
            return d.model_copy(update={"state": route.state, "reason": route.reason})

        rt.store.update_delivery(post_id, channel, change)


def enqueue_pending(rt: Runtime, post_id: str, enqueue: Enqueue) -> int:
    loaded = rt.store.load(post_id)
    if loaded is None:
        return 0
    _, deliveries = loaded
    deadline = time.time() + rt.settings.sweep_deadline_s
    n = 0
    for channel, d in deliveries.items():
        if d.state in ACTIVE_STATES:
            rt.store.track_inflight(post_id, channel, deadline)
            enqueue(post_id, channel)
            n += 1
    return n


def dispatch_post(rt: Runtime, post_id: str, enqueue: Enqueue) -> None:
    loaded = rt.store.load(post_id)
    if loaded is None:
        rt.store.finish_dispatch(post_id)
        return
    post, deliveries = loaded
    if post.canceled_at is not None:
        rt.store.finish_dispatch(post_id)
        return
    brand = rt.brands().get(post.brand)
    if brand is None:
        for channel in deliveries:
            rt.store.update_delivery(
                post_id,
                channel,
                lambda d: (
                    d.model_copy(
                        update={"state": DeliveryState.failed, "error": f"brand {post.brand} is gone"}
                    )
                    if d and d.state in ACTIVE_STATES
                    else None
                ),
            )
    else:
        if post.dispatched_at is None:
            down = "bluesky" in deliveries and bluesky_is_down(rt, brand)
            apply_routes(rt, post_id, routing.plan_dispatch(brand, post, deliveries, down))
            if down:
                rt.store.update_post(post_id, lambda p: p.model_copy(update={"rerouted_at": now_utc()}))
            bsky = deliveries.get("bluesky")
            # A dispatch cut short after parking the post as held is re-run by the sweeper: index it
            # for backfill again even if the target has recovered meanwhile (the seam is idempotent).
            if down or (bsky is not None and bsky.state == DeliveryState.held):
                after_reroute(rt, brand, post_id, enqueue)
        first = rt.store.update_post(
            post_id,
            lambda p: p.model_copy(update={"dispatched_at": now_utc()}) if p.dispatched_at is None else None,
        )
        if first is not None:
            rt.store.add_event("post.dispatched", brand=post.brand, post=post_id)
        enqueue_pending(rt, post_id, enqueue)
    rt.store.finish_dispatch(post_id)


def dispatch_due(rt: Runtime, enqueue: Enqueue) -> int:
    """Dispatch every post that is due now; returns how many."""
    total = 0
    batch = rt.settings.dispatch_batch
    while True:
        ids = rt.store.claim_due(time.time(), batch, lease_s=rt.settings.sweep_deadline_s)
        for post_id in ids:
            try:
                dispatch_post(rt, post_id, enqueue)
            except Exception:
                # Left in `dispatching`: the sweeper re-drives it after its lease.
                log.exception("dispatch of %s failed; the sweeper will retry it", post_id)
        total += len(ids)
        if len(ids) < batch:
            return total


def queue_backlog(rt: Runtime) -> int:
    """Deliver tasks waiting in the broker (kombu's Redis transport keeps a queue as a list)."""
    try:
        return int(rt.redis.llen(QUEUE))
    except Exception:  # a broker on another server: behave as if nothing were queued
        return 0


def sweep(rt: Runtime, enqueue: Enqueue) -> dict[str, int]:
    """Re-drive dispatches and deliveries whose deadline passed (lost worker, lost message)."""
    now = time.time()
    redispatched = 0
    for post_id in rt.store.expired_dispatches(now):
        dispatch_post(rt, post_id, enqueue)
        redispatched += 1
    redriven = 0
    # A pending delivery past its deadline may simply be queued behind a backlog: re-driving it
    # then would only add load where load is the problem. While deliver tasks are waiting in the
    # broker, only deliveries stuck for longer than `sweep_max_queue_wait_s` are re-driven.
    backlog = queue_backlog(rt)
    for post_id, channel in rt.store.expired_inflight(now):
        loaded = rt.store.load(post_id)
        d = loaded[1].get(channel) if loaded else None
        if d is None or d.state not in ACTIVE_STATES:
            rt.redis.zrem(rt.settings.key("inflight"), f"{post_id}|{channel}")
            continue
        if d.state == DeliveryState.sending and d.lease_until and d.lease_until > now:
            rt.store.track_inflight(post_id, channel, d.lease_until + 1)
            continue
        rt.store.track_inflight(post_id, channel, now + rt.settings.sweep_deadline_s)
        if not should_redrive(d, now, backlog, rt.settings.sweep_max_queue_wait_s):
            continue
        enqueue(post_id, channel)
        redriven += 1
    if redispatched or redriven:
        log.warning("sweeper re-drove %d dispatches and %d deliveries", redispatched, redriven)
    retired = rt.store.retire_expired((b.id for b in rt.brands()), now)  # retention: see the store
    return {"redispatched": redispatched, "redriven": redriven, "retired": retired}
