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
from broadcaster.core.health import OUT, Health, State, Transition, down_for
from broadcaster.core.models import ACTIVE_STATES, Delivery, DeliveryState, Post
from broadcaster.ledger import health as health_store
from broadcaster.ledger.keys import Keys
from workers import notices
from workers.runtime import Handoff, Runtime

log = logging.getLogger("broadcaster.failover")

Enqueue = Callable[[str, str], None]

NOTICE_WAIT_S = 0.3  # how soon a rerouted post looks again for its channel's outage notice


class HealthReads:
    """Each Bluesky target's health as one run of work sees it (a dispatch run, a batch of
    deliveries): read once per target (`read`, by default from the ledger), and again once the
    read is `fresh_s` old (None: for the whole run). A post that goes out on a read a moment old
    is no risk the ledger does not already cover: a send into a new outage fails and reroutes
    the post, and one that works while the feeds fail is mirrored by the look-back
    (`mirror_recent`)."""

    def __init__(
        self, rt: Runtime, fresh_s: float | None = None, read: Callable[[Brand], Health] | None = None
    ) -> None:
        self.read = read or (lambda brand: health_store.load(rt.redis, rt.settings, brand.bluesky.target))
        self.fresh_s = fresh_s
        self.known: dict[str, tuple[Health, float]] = {}

    def __call__(self, brand: Brand) -> Health:
        target = brand.bluesky.target
        known = self.known.get(target)
        if known is None or (self.fresh_s is not None and time.monotonic() - known[1] >= self.fresh_s):
            known = self.known[target] = (self.read(brand), time.monotonic())
        return known[0]


def held_key(rt: Runtime, target: str) -> str:
    return Keys(rt.settings.key_prefix).held(target)


def _brands_on(rt: Runtime, target: str) -> list[Brand]:
    return sorted((b for b in rt.brands() if b.bluesky.target == target), key=lambda b: b.id)


# ---- rerouting -------------------------------------------------------------------------------
def reroute_post(
    rt: Runtime, brand: Brand, post_id: str, reason: str, enqueue: Enqueue, error: str | None = None
) -> bool:
    """Hold (or skip) the post's Bluesky delivery and send it to the failover channels now."""
    loaded = rt.store.load(post_id)
    if loaded is None:
        return False
    post, deliveries = loaded
    changes = routing.reroute(brand, post, deliveries, reason)
    if "bluesky" not in changes:
        return False
    target = brand.bluesky.target
    h = health_store.load(rt.redis, rt.settings, target)
    if h.effective in OUT:
        notices.post_notice(rt, brand, target, h.outage, policy.OUTAGE, enqueue)
    to_bsky = changes.pop("bluesky")
    deadline = rt.store.now() + rt.settings.sweep_deadline_s
    now = rt.store.reroute(post_id, to_bsky, changes, held_key(rt, target), deadline, error)
    if now is None:
        return False  # someone else decided first (delivered meanwhile, or already rerouted)
    parked = now["bluesky"]
    for channel, d in now.items():
        if channel != "bluesky" and d.state in ACTIVE_STATES:
            enqueue(post_id, channel)
    log.warning(
        "rerouted %s of %s away from Bluesky (%s): %s",
        post_id,
        brand.id,
        parked.state.value,
        reason,
        extra={"post_id": post_id, "brand": brand.id, "target": target},
    )
    return True


def before_send(
    rt: Runtime,
    brand: Brand,
    post: Post,
    deliveries: dict[str, Delivery],
    channel: str,
    enqueue: Enqueue,
    health: Callable[[Brand], Health] | None = None,
) -> tuple[str, float | None] | None:
    """The deliver task asks first: go ahead (None), or (result, retry in seconds). `health`: how
    the task reads the brand's target (a batch's `HealthReads`); a fresh read by default."""
    if channel == "bluesky":
        d = deliveries.get("bluesky")
        if (
            d is not None
            and d.state == DeliveryState.pending
            and down_for((health or HealthReads(rt))(brand), brand.routing.on_partial)
        ):
            # Handed out before the trip (or a backfill that raced a new one): do not send into it.
            rerouted = reroute_post(rt, brand, post.id, "Bluesky is down", enqueue)
            return ("rerouted", None) if rerouted else None
        return None
    if (
        post.kind == "post"
        and post.rerouted_at is not None
        and notices.outage_notice_pending(rt, brand, channel, enqueue, health)
    ):
        rt.store.postpone(post.id, channel, rt.store.now() + NOTICE_WAIT_S + rt.settings.sweep_deadline_s)
        return ("waiting for the outage notice", NOTICE_WAIT_S)
    return None


# ---- look-back mirror ------------------------------------------------------------------------
def mirror_recent(
    rt: Runtime, brand: Brand, target: str, start: float, down_since: float, enqueue: Enqueue
) -> int:
    """Posts Bluesky took between the outage's onset and the trip (`policy.lookback_start`): the
    audience could not see them, so mirror them."""
    ids = rt.store.recent_on_bluesky(target, start, down_since)
    mirrored = 0
    for post_id, delivered_at in ids:
        loaded = rt.store.load(post_id)
        if loaded is None or loaded[0].brand != brand.id:
            continue
        post, deliveries = loaded
        if not start <= delivered_at <= down_since:
            continue
        ago = int(down_since - delivered_at)
        routes = policy.mirror_routes(
            brand, post, deliveries, f"Bluesky went down {ago} s after it was posted"
        )
        if not routes:
            continue
        deadline = rt.store.now() + rt.settings.sweep_deadline_s
        now = rt.store.route(post_id, routes, deadline, rerouted=True)
        for channel, d in now.items():
            if d.state in ACTIVE_STATES:
                enqueue(post_id, channel)
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
def reconcile(rt: Runtime, target: str, handoff: Handoff, transition: Transition | None = None) -> None:
    """Bring the failover in line with the target's effective state (idempotent)."""
    enqueue = handoff.deliver
    h = health_store.load(rt.redis, rt.settings, target)
    brands = _brands_on(rt, target)
    if h.effective in OUT:
        # `partial`: every brand's outage notice, the look-back mirror for the brands that fail
        # over on it; `down` (at once, or after `partial`): the mirror for the others too.
        out = health_store.acted(rt.redis, rt.settings, target, "down") >= h.outage
        full = health_store.acted(rt.redis, rt.settings, target, "down_full") >= h.outage
        if not out or (h.effective == State.down and not full):
            for brand in brands:
                if not out:
                    notices.post_notice(rt, brand, target, h.outage, policy.OUTAGE, enqueue)
                was_mirrored = out and brand.routing.on_partial == "failover"
                if down_for(h, brand.routing.on_partial) and not was_mirrored:
                    start = policy.lookback_start(
                        brand, h.onset, h.effective_since, rt.settings.health_probe_interval_s
                    )
                    mirror_recent(rt, brand, target, start, h.effective_since, enqueue)
            health_store.mark_acted(rt.redis, rt.settings, target, "down", h.outage)
            if h.effective == State.down:
                health_store.mark_acted(rt.redis, rt.settings, target, "down_full", h.outage)
        return
    if h.outage and health_store.acted(rt.redis, rt.settings, target, "up") < h.outage:
        for brand in brands:
            if notices.notice_id(rt, brand, target, h.outage, policy.OUTAGE) is not None:
                notices.post_notice(rt, brand, target, h.outage, policy.RECOVERY, enqueue)
        health_store.mark_acted(rt.redis, rt.settings, target, "up", h.outage)
    if h.effective == State.up and rt.store.held_count(held_key(rt, target)):
        start_backfill(rt, target, handoff)


# ---- backfill --------------------------------------------------------------------------------
def _backfill_lease(rt: Runtime, target: str) -> tuple[str, int]:
    return Keys(rt.settings.key_prefix).backfill(target), int(1 / rt.settings.backfill_rate_per_s) + 30


def start_backfill(rt: Runtime, target: str, handoff: Handoff) -> bool:
    """Start the backfill chain for a target unless one is running."""
    key, ttl = _backfill_lease(rt, target)
    if not rt.redis.set(key, "1", nx=True, ex=ttl):
        return False
    handoff.backfill(target)
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
        ids = rt.store.next_held(held)
        if not ids:
            rt.redis.delete(key)
            log.info("backfill to %s done", target, extra={"target": target})
            return None
        post_id = ids[0]
        deadline = rt.store.now() + rt.settings.sweep_deadline_s
        if rt.store.release_held(post_id, held, deadline) is None:
            continue  # not held any more (or gone): nothing to send, take the next one at once
        enqueue(post_id, "bluesky")
        return 1 / rt.settings.backfill_rate_per_s
