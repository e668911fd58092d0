"""Hand due posts to the workers, exactly once each, and re-drive what a lost worker left.

The schedule lives in Redis (`sched`), not in Celery ETAs: a claim moves a due post to
`dispatching` atomically, routing decides its deliveries, and each pending delivery is
indexed in `inflight` *before* its task is sent, so the sweeper can re-drive anything
a crash dropped between the two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from broadcaster.common.celeryconf import CONTROL_QUEUE, QUEUE, SHARE_TASK
from broadcaster.core import routing
from broadcaster.core.brands import Brand
from broadcaster.core.delivery_rules import should_redispatch, should_redrive
from broadcaster.core.health import Health, down_for
from broadcaster.core.models import ACTIVE_STATES, Delivery, DeliveryState, Post
from broadcaster.ledger import health as health_store
from broadcaster.ledger.blobs import open_blob_store
from broadcaster.ledger.media import MediaLedger
from broadcaster.ledger.readiness import record_sweep
from workers import failover, notices
from workers.runtime import Runtime

log = logging.getLogger("broadcaster.dispatch")

Enqueue = Callable[[str, str], None]


def target_health(rt: Runtime, brand: Brand) -> Health:
    """Seam for the health watcher: the brand's Bluesky target as routing sees it."""
    return health_store.load(rt.redis, rt.settings, brand.bluesky.target)


def enqueue_pending(rt: Runtime, post_id: str, enqueue: Enqueue, deliveries: dict[str, Delivery]) -> int:
    """Hand out the post's active deliveries (the ledger indexed them when it wrote them)."""
    active = [c for c, d in deliveries.items() if d.state in ACTIVE_STATES]
    for channel in active:
        enqueue(post_id, channel)
    return len(active)


def dispatch_post(
    rt: Runtime,
    post_id: str,
    enqueue: Enqueue,
    loaded: tuple[Post, dict[str, Delivery]] | None = None,
    health: Callable[[Brand], Health] | None = None,
) -> None:
    """Route one due post and hand its deliveries out. `loaded` and `health` come from a batch."""
    if loaded is None:
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
        rt.store.fail_active(post_id, f"brand {post.brand} is gone")
        return
    routes: dict[str, routing.Route] = {}
    down = False
    h: Health | None = None
    if post.dispatched_at is None:
        h = (health or (lambda b: target_health(rt, b)))(brand)
        down = "bluesky" in deliveries and down_for(h, brand.routing.on_partial)
        routes = routing.plan_dispatch(brand, post, deliveries, down)
    deadline = rt.store.now() + rt.settings.sweep_deadline_s
    held_key = failover.held_key(rt, brand.bluesky.target)
    now = rt.store.dispatch(post_id, routes, down, held_key, deadline)
    if now is None:
        return
    if down and h is not None:  # the audience reads the outage notice first
        notices.notice_once(rt, brand, h.outage, enqueue)
    enqueue_pending(rt, post_id, enqueue, now)


def dispatch_posts(rt: Runtime, ids: list[str], enqueue: Enqueue) -> int:
    """Dispatch claimed posts: read together, one health read per target; returns how many."""
    health = failover.HealthReads(rt, read=lambda brand: target_health(rt, brand))  # once per run
    by_id = {post.id: (post, ds) for post, ds in rt.store.load_many(ids)}
    for post_id in ids:
        try:
            dispatch_post(rt, post_id, enqueue, by_id.get(post_id), health)
        except Exception:
            # Left in `dispatching`: the sweeper re-drives it after its lease.
            log.exception("dispatch of %s failed; the sweeper will retry it", post_id)
    return len(ids)


DISPATCH_CHUNK = 50  # a bigger claim is shared out as tasks of this many posts


def dispatch_due(rt: Runtime, enqueue: Enqueue, hand_off: Callable[[list[str]], None] | None = None) -> int:
    """Dispatch every post that is due now; returns how many.

    A claim of more than `DISPATCH_CHUNK` posts (a backlog) is shared out through `hand_off`
    as tasks of that many (on the control queue), so every worker dispatches at once. A share
    lost with a killed worker leaves its posts in `dispatching`: the sweeper dispatches them
    once their lease has run out and no share waits in the control queue (`sweep`).
    """
    total = 0
    batch = rt.settings.dispatch_batch
    while True:
        ids = rt.store.claim_due(rt.store.now(), batch, lease_s=rt.settings.sweep_deadline_s)
        if hand_off is not None and len(ids) > DISPATCH_CHUNK:
            for i in range(0, len(ids), DISPATCH_CHUNK):
                hand_off(ids[i : i + DISPATCH_CHUNK])
        elif ids:
            dispatch_posts(rt, ids, enqueue)
        total += len(ids)
        if len(ids) < batch:
            return total


SHARE_SCAN_LIMIT = 2000


def shares_waiting(rt: Runtime) -> bool:
    """Does a backlog share (`SHARE_TASK`) wait in the control queue?

    kombu's Redis transport keeps a queue as a list of JSON messages that name their task in
    the headers; the scan stops at `SHARE_SCAN_LIMIT` messages and then assumes one does.
    """
    try:
        waiting = rt.redis.lrange(rt.store.keys.broker_queue(CONTROL_QUEUE), 0, SHARE_SCAN_LIMIT - 1)
    except Exception:
        return True  # cannot tell: wait, `sweep_max_queue_wait_s` bounds it
    return len(waiting) >= SHARE_SCAN_LIMIT or any(SHARE_TASK in m for m in waiting)


def queue_backlog(rt: Runtime) -> int:
    """Deliver tasks waiting in the broker (kombu's Redis transport keeps a queue as a list)."""
    try:
        return int(rt.redis.llen(rt.store.keys.broker_queue(QUEUE)))
    except Exception:  # a broker on another server: behave as if nothing were queued
        return 0


def sweep(rt: Runtime, enqueue: Enqueue) -> dict[str, int]:
    """Re-drive dispatches and deliveries whose deadline passed (lost worker, lost message)."""
    now = rt.store.now()
    settings = rt.settings
    redispatched = 0
    expired = rt.store.expired_dispatches(now)
    waiting = shares_waiting(rt) if expired else False
    for post_id in expired:
        loaded = rt.store.load(post_id)
        due = loaded[0].scheduled_at.timestamp() if loaded else 0.0
        if not should_redispatch(due, now, waiting, settings.sweep_max_queue_wait_s):
            rt.store.extend_dispatch([post_id], now + settings.sweep_deadline_s)
            continue
        dispatch_post(rt, post_id, enqueue, loaded)
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
            rt.store.forget_inflight(post_id, channel)
            continue
        if d.state == DeliveryState.sending and d.lease_until and d.lease_until > now:
            rt.store.postpone(post_id, channel, d.lease_until + 1)
            continue
        rt.store.postpone(post_id, channel, now + rt.settings.sweep_deadline_s)
        if not should_redrive(d, now, backlog, rt.settings.sweep_max_queue_wait_s):
            continue
        enqueue(post_id, channel)
        redriven += 1
    if redispatched or redriven:
        log.warning("sweeper re-drove %d dispatches and %d deliveries", redispatched, redriven)
    retired = rt.store.retire_expired((b.id for b in rt.brands()), now)  # retention: see the store
    collected = collect_media(rt, now)
    record_sweep(rt.redis, settings, now)
    return {"redispatched": redispatched, "redriven": redriven, "retired": retired, "media": collected}


def collect_media(rt: Runtime, now: float) -> int:
    """Delete images no post needs any more (their posts expired, or never attached in time)."""
    try:
        return MediaLedger(rt.redis, rt.settings).collect(open_blob_store(rt.settings), now)
    except Exception:  # a blob store hiccup must not stop the sweeper: the images wait in media:gc
        log.warning("could not collect unused images; will try again next sweep", exc_info=True)
        return 0
