"""Fail over and fail back: what happens to posts when a Bluesky target goes down and returns.

* On the trip to `down` (per outage, per brand on the target): the outage notice is
  queued to the failover channels, then posts Bluesky took within the brand's
  look-back window are mirrored there, once each.
* While it is down: due posts are rerouted at dispatch (`workers.dispatch`), and a
  Bluesky send that fails with a 5xx / timeout reroutes its post at once. A rerouted
  post waits on each channel until the outage notice is out there, so the audience
  reads the notice first. Its Bluesky delivery is `held` (backfill) or `skipped`.
* On recovery: the recovery notice (if configured and an outage notice went out),
  then held posts go back to Bluesky oldest first, at `backfill_rate_per_s`, each once;
  if the target goes down again meanwhile, the rest stay held.

`reconcile` is the one entry point: it runs right after a transition and again after
every probe, and each step is idempotent (an idempotency key per notice, a delivery
created only where none exists, a compare-and-set from `held`), so a worker lost
half-way is caught up by the next probe and nothing is sent twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from broadcaster.core import outage as policy
from broadcaster.core import routing
from broadcaster.core.brands import Brand
from broadcaster.core.health import State, Transition
from broadcaster.core.ids import new_post_id
from broadcaster.core.models import ACTIVE_STATES, Delivery, DeliveryState, Post, now_utc
from broadcaster.ledger import health as health_store
from workers.runtime import Runtime

log = logging.getLogger("broadcaster.core.outage")

Enqueue = Callable[[str, str], None]

NOTICE_WAIT_S = 0.3  # how soon a rerouted post looks again for its channel's outage notice
NOTICE_MAX_WAIT_S = 60.0  # a notice stuck longer than this (say, rate-limited) no longer holds posts


def _k(rt: Runtime, *parts: str) -> str:
    return rt.settings.key(*parts)


def held_key(rt: Runtime, target: str) -> str:
    return _k(rt, "held", target)


def _brands_on(rt: Runtime, target: str) -> list[Brand]:
    return sorted((b for b in rt.brands() if b.bluesky.target == target), key=lambda b: b.id)


def _feed_url(rt: Runtime, brand: Brand) -> str:
    return f"{rt.settings.public_base_url.rstrip('/')}/feeds/{brand.id}.rss"


# ---- notices ---------------------------------------------------------------------------------
def notice_id(rt: Runtime, brand: Brand, target: str, outage: int, kind: str) -> str | None:
    """The id of the brand's notice for this outage, if it was queued."""
    ref = rt.redis.get(_k(rt, "idem", brand.id, policy.notice_key(target, outage, kind)))
    return ref.rsplit(":", 1)[-1] if ref else None


def post_notice(
    rt: Runtime, brand: Brand, target: str, outage: int, kind: str, enqueue: Enqueue
) -> str | None:
    """Queue the brand's notice for this outage (once: an idempotency key per outage) and send it now."""
    text = policy.notice_text(brand, kind, _feed_url(rt, brand))
    channels = policy.notice_channels(brand)
    if text is None or not channels:
        return None
    now = now_utc()
    post = Post(
        id=new_post_id(),
        brand=brand.id,
        text=text,
        kind="notice",
        scheduled_at=now,
        created_at=now,
        channels=channels,
    )
    key = policy.notice_key(target, outage, kind)
    existing = rt.store.create_post(post, [Delivery(channel=c) for c in channels], idempotency_key=key)
    if existing is not None:
        return existing
    _dispatch_now(rt, post.id, enqueue)
    log.info(
        "queued the %s notice of %s for outage %d of %s",
        kind,
        brand.id,
        outage,
        target,
        extra={"brand": brand.id, "target": target, "post_id": post.id},
    )
    return post.id


def _dispatch_now(rt: Runtime, post_id: str, enqueue: Enqueue) -> None:
    """Take the post off the schedule (as the dispatcher's claim would) and hand it out now."""
    from workers import dispatch

    pipe = rt.redis.pipeline()
    pipe.zrem(_k(rt, "sched"), post_id)
    pipe.zadd(_k(rt, "dispatching"), {post_id: time.time() + rt.settings.sweep_deadline_s})
    removed, _ = pipe.execute()
    if removed:  # else the dispatcher claimed it first and hands it out itself
        dispatch.dispatch_post(rt, post_id, enqueue)


# (brand, target, outage, channel) whose outage notice is out (final) on that channel. A final
# delivery never becomes active again, so this process need not ask again: a backlog of
# rerouted posts costs one health read each, not three round trips (bench: backlog).
_NOTICE_OUT: set[tuple[str, str, int, str]] = set()
_NOTICE_OUT_MAX = 10_000


def _outage_notice_pending(rt: Runtime, brand: Brand, channel: str, enqueue: Enqueue) -> bool:
    """Must a rerouted post wait on `channel` for the brand's outage notice to go out first?"""
    target = brand.bluesky.target
    h = health_store.load(rt.redis, rt.settings, target)
    if h.effective != State.down or channel not in policy.notice_channels(brand):
        return False
    seen = (brand.id, target, h.outage, channel)
    if seen in _NOTICE_OUT:
        return False
    pending = _notice_pending(rt, brand, target, h.outage, channel, enqueue)
    if not pending:
        if len(_NOTICE_OUT) >= _NOTICE_OUT_MAX:
            _NOTICE_OUT.clear()
        _NOTICE_OUT.add(seen)
    return pending


def _notice_pending(
    rt: Runtime, brand: Brand, target: str, outage: int, channel: str, enqueue: Enqueue
) -> bool:
    nid = notice_id(rt, brand, target, outage, policy.OUTAGE)
    if nid is None:
        nid = post_notice(rt, brand, target, outage, policy.OUTAGE, enqueue)
        if nid is None:
            return False
    loaded = rt.store.load(nid)
    if loaded is None:
        return False
    notice, deliveries = loaded
    d = deliveries.get(channel)
    too_old = (now_utc() - notice.created_at).total_seconds() > NOTICE_MAX_WAIT_S
    return d is not None and d.state in ACTIVE_STATES and not too_old


# ---- rerouting -------------------------------------------------------------------------------
def _hold(rt: Runtime, brand: Brand, post: Post) -> None:
    rt.redis.zadd(held_key(rt, brand.bluesky.target), {post.id: post.scheduled_at.timestamp()})


# (brand, target, outage) whose outage notice this process has queued (or found queued).
_NOTICE_QUEUED: set[tuple[str, str, int]] = set()


def after_dispatch_reroute(
    rt: Runtime, brand: Brand, post: Post, held: bool, outage: int, enqueue: Enqueue
) -> None:
    """The dispatcher rerouted a due post (`outage`: the target's, 0 if it recovered meanwhile):
    keep it held for backfill, queue the outage notice first (once per outage and process)."""
    if held:
        _hold(rt, brand, post)
    target = brand.bluesky.target
    if outage and (brand.id, target, outage) not in _NOTICE_QUEUED:
        post_notice(rt, brand, target, outage, policy.OUTAGE, enqueue)
        if len(_NOTICE_QUEUED) >= _NOTICE_OUT_MAX:
            _NOTICE_QUEUED.clear()
        _NOTICE_QUEUED.add((brand.id, target, outage))


def reroute_post(
    rt: Runtime, brand: Brand, post_id: str, reason: str, enqueue: Enqueue, error: str | None = None
) -> bool:
    """Hold (or skip) the post's Bluesky delivery and send it to the failover channels now."""
    from workers import dispatch

    loaded = rt.store.load(post_id)
    if loaded is None:
        return False
    post, deliveries = loaded
    changes = routing.reroute(brand, post, deliveries, reason)
    if "bluesky" not in changes:
        return False
    h = health_store.load(rt.redis, rt.settings, brand.bluesky.target)
    if h.effective == State.down:
        post_notice(rt, brand, brand.bluesky.target, h.outage, policy.OUTAGE, enqueue)
    to_bsky = changes.pop("bluesky")

    def park(d: Delivery | None) -> Delivery | None:
        if d is None or d.state not in ACTIVE_STATES:
            return None
        update = {"state": to_bsky.state, "reason": to_bsky.reason, "lease_until": None}
        return d.model_copy(update=update | ({"error": error} if error else {}))

    if to_bsky.state == DeliveryState.held:
        _hold(rt, brand, post)  # indexed first: a backfill skips an entry that turns out not held
    _, parked = rt.store.update_delivery(post_id, "bluesky", park)
    if parked is None:
        return False  # someone else decided first (delivered meanwhile, or already rerouted)
    dispatch.apply_routes(rt, post_id, changes)
    rt.store.update_post(
        post_id, lambda p: p.model_copy(update={"rerouted_at": now_utc()}) if p.rerouted_at is None else None
    )
    dispatch.enqueue_pending(rt, post_id, enqueue)
    log.warning(
        "rerouted %s of %s away from Bluesky (%s): %s",
        post_id,
        brand.id,
        parked.state.value,
        reason,
        extra={"post_id": post_id, "brand": brand.id, "target": brand.bluesky.target},
    )
    return True


def before_send(
    rt: Runtime, brand: Brand, post: Post, deliveries: dict[str, Delivery], channel: str, enqueue: Enqueue
) -> tuple[str, float | None] | None:
    """The deliver task asks first: go ahead (None), or (result, retry in seconds)."""
    if channel == "bluesky":
        d = deliveries.get("bluesky")
        target = brand.bluesky.target
        if (
            d is not None
            and d.state == DeliveryState.pending
            and health_store.is_down(rt.redis, rt.settings, target)
        ):
            # Handed out before the trip (or a backfill that raced a new one): do not send into it.
            rerouted = reroute_post(rt, brand, post.id, "Bluesky is down", enqueue)
            return ("rerouted", None) if rerouted else None
        return None
    if (
        post.kind == "post"
        and post.rerouted_at is not None
        and _outage_notice_pending(rt, brand, channel, enqueue)
    ):
        rt.store.track_inflight(post.id, channel, time.time() + NOTICE_WAIT_S + rt.settings.sweep_deadline_s)
        return ("waiting for the outage notice", NOTICE_WAIT_S)
    return None


def enqueue_delivery(post_id: str, channel: str) -> None:
    """Hand a delivery to the workers (for callers that were not given an `enqueue`)."""
    from workers.tasks import enqueue_delivery as send

    send(post_id, channel)


def bluesky_send_failed(rt: Runtime, post_id: str, error: str, enqueue: Enqueue = enqueue_delivery) -> bool:
    """A Bluesky send failed like an outage: count it, act on a trip, reroute this post now."""
    from workers import health

    loaded = rt.store.load(post_id)
    brand = rt.brands().get(loaded[0].brand) if loaded else None
    if brand is None:
        return False
    transition = health.send_failed(rt, brand, error)
    if transition is not None:
        reconcile(rt, brand.bluesky.target, enqueue, transition)
    return reroute_post(rt, brand, post_id, f"Bluesky send failed: {error}", enqueue, error=error)


# ---- look-back mirror ------------------------------------------------------------------------
def mirror_recent(rt: Runtime, brand: Brand, target: str, down_since: float, enqueue: Enqueue) -> int:
    """Posts Bluesky took shortly before the trip: the audience could not see them, so mirror them."""
    from workers import dispatch

    start = down_since - brand.routing.lookback_minutes * 60
    ids = rt.redis.zrangebyscore(_k(rt, "bsky", "recent", target), start, down_since, withscores=True)
    mirrored = 0
    for post_id, delivered_at in ids:
        loaded = rt.store.load(post_id)
        if loaded is None or loaded[0].brand != brand.id:
            continue
        post, deliveries = loaded
        if not policy.in_lookback(brand, delivered_at, down_since):
            continue
        ago = int(down_since - delivered_at)
        routes = policy.mirror_routes(
            brand, post, deliveries, f"Bluesky went down {ago} s after it was posted"
        )
        if not routes:
            continue
        rt.store.update_post(
            post_id,
            lambda p: p.model_copy(update={"rerouted_at": now_utc()}) if p.rerouted_at is None else None,
        )
        dispatch.apply_routes(rt, post_id, routes)
        dispatch.enqueue_pending(rt, post_id, enqueue)
        mirrored += 1
    if mirrored:
        log.warning(
            "mirrored %d posts of %s that reached Bluesky just before it went down",
            mirrored,
            brand.id,
            extra={"brand": brand.id, "target": target},
        )
    return mirrored


# ---- the one entry point ---------------------------------------------------------------------
def reconcile(rt: Runtime, target: str, enqueue: Enqueue, transition: Transition | None = None) -> None:
    """Bring the failover in line with the target's effective state (idempotent)."""
    h = health_store.load(rt.redis, rt.settings, target)
    brands = _brands_on(rt, target)
    if h.effective == State.down:
        if health_store.acted(rt.redis, rt.settings, target, "down") < h.outage:
            for brand in brands:
                post_notice(rt, brand, target, h.outage, policy.OUTAGE, enqueue)
                mirror_recent(rt, brand, target, h.effective_since, enqueue)
            health_store.mark_acted(rt.redis, rt.settings, target, "down", h.outage)
        return
    if h.outage and health_store.acted(rt.redis, rt.settings, target, "up") < h.outage:
        for brand in brands:
            if notice_id(rt, brand, target, h.outage, policy.OUTAGE) is not None:
                post_notice(rt, brand, target, h.outage, policy.RECOVERY, enqueue)
        health_store.mark_acted(rt.redis, rt.settings, target, "up", h.outage)
    if h.effective == State.up and rt.redis.zcard(held_key(rt, target)):
        start_backfill(rt, target)


# ---- backfill --------------------------------------------------------------------------------
def _backfill_lease(rt: Runtime, target: str) -> tuple[str, int]:
    return _k(rt, "backfill", target), int(1 / rt.settings.backfill_rate_per_s) + 30


def start_backfill(rt: Runtime, target: str) -> bool:
    """Start the backfill chain for a target unless one is running."""
    key, ttl = _backfill_lease(rt, target)
    if not rt.redis.set(key, "1", nx=True, ex=ttl):
        return False
    from workers import tasks

    tasks.backfill.apply_async((target,))
    log.info("backfill of held posts to %s started", target, extra={"target": target})
    return True


def backfill_step(rt: Runtime, target: str, enqueue: Enqueue) -> float | None:
    """Release the oldest held post to Bluesky; returns when to take the next one (None = done)."""
    key, ttl = _backfill_lease(rt, target)
    rt.redis.set(key, "1", ex=ttl)
    held = held_key(rt, target)
    while True:
        if health_store.load(rt.redis, rt.settings, target).effective != State.up:
            rt.redis.delete(key)
            log.warning("backfill to %s paused: it is not up; the rest stay held", target)
            return None
        ids = rt.redis.zrange(held, 0, 0)
        if not ids:
            rt.redis.delete(key)
            log.info("backfill to %s done", target, extra={"target": target})
            return None
        post_id = ids[0]

        def release(d: Delivery | None) -> Delivery | None:
            if d is None or d.state != DeliveryState.held:
                return None
            return d.model_copy(
                update={"state": DeliveryState.pending, "reason": "backfill after the outage", "error": None}
            )

        _, released = rt.store.update_delivery(post_id, "bluesky", release)
        rt.redis.zrem(held, post_id)
        if released is None:
            continue  # not held any more (or gone): nothing to send, take the next one at once
        rt.store.track_inflight(post_id, "bluesky", time.time() + rt.settings.sweep_deadline_s)
        enqueue(post_id, "bluesky")
        return 1 / rt.settings.backfill_rate_per_s
