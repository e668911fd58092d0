"""Outage and recovery notices: one per brand, outage and kind, sent ahead of rerouted posts.

A notice is an ordinary post (kind `notice`) on the brand's failover channels, created
with an idempotency key per outage, so however many workers notice the trip, the
audience reads it once. It is dispatched at once, not at the dispatcher's next pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from broadcaster.core import outage as policy
from broadcaster.core.brand_page import page_url
from broadcaster.core.brands import Brand
from broadcaster.core.health import OUT, Health
from broadcaster.core.ids import new_post_id
from broadcaster.core.models import ACTIVE_STATES, Delivery, Post, now_utc
from broadcaster.ledger import health as health_store
from workers.runtime import Runtime

log = logging.getLogger("broadcaster.notices")

Enqueue = Callable[[str, str], None]

NOTICE_MAX_WAIT_S = 60.0  # a notice stuck longer than this (say, rate-limited) no longer holds posts
_CACHE_MAX = 10_000


def feed_url(rt: Runtime, brand: Brand) -> str:
    return f"{rt.settings.public_base_url.rstrip('/')}/feeds/{brand.id}.rss"


def notice_id(rt: Runtime, brand: Brand, target: str, outage: int, kind: str) -> str | None:
    """The id of the brand's notice for this outage, if it was queued."""
    return rt.store.idempotent_post(brand.id, policy.notice_key(target, outage, kind))


def post_notice(
    rt: Runtime, brand: Brand, target: str, outage: int, kind: str, enqueue: Enqueue
) -> str | None:
    """Queue the brand's notice for this outage (once: an idempotency key per outage) and send it now."""
    text = policy.notice_text(
        brand, kind, feed_url(rt, brand), page_url(rt.settings.public_base_url, brand.id)
    )
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
    deadline = rt.store.now() + rt.settings.sweep_deadline_s
    if rt.store.claim_now(post.id, deadline):  # else the dispatcher claimed it and hands it out
        deliveries = rt.store.dispatch(post.id, {}, False, "", deadline) or {}
        for channel, d in deliveries.items():
            if d.state in ACTIVE_STATES:
                enqueue(post.id, channel)
    log.info(
        "queued the %s notice of %s for outage %d of %s",
        kind,
        brand.id,
        outage,
        target,
        extra={"brand": brand.id, "target": target, "post_id": post.id},
    )
    return post.id


# (brand, target, outage) whose outage notice this process has queued (or found queued).
_QUEUED: set[tuple[str, str, int]] = set()


def notice_once(rt: Runtime, brand: Brand, outage: int, enqueue: Enqueue) -> None:
    """The dispatcher rerouted a post: make sure the outage notice is queued (once per process)."""
    target = brand.bluesky.target
    if not outage or (brand.id, target, outage) in _QUEUED:
        return
    post_notice(rt, brand, target, outage, policy.OUTAGE, enqueue)
    if len(_QUEUED) >= _CACHE_MAX:
        _QUEUED.clear()
    _QUEUED.add((brand.id, target, outage))


# (brand, target, outage, channel) whose outage notice is out (final) on that channel. A final
# delivery never becomes active again, so this process need not ask again: a backlog of
# rerouted posts costs one health read each, not three round trips (bench: backlog).
_OUT: set[tuple[str, str, int, str]] = set()


def outage_notice_pending(
    rt: Runtime, brand: Brand, channel: str, enqueue: Enqueue, health: Callable[[Brand], Health] | None = None
) -> bool:
    """Must a rerouted post wait on `channel` for the brand's outage notice to go out first?

    `health`: a batch's read of the target (`failover.HealthReads`), which spares each rerouted
    delivery of a backlog its own read. Only a read that says the target is out is taken as it
    is: anything else is read again, so no post goes ahead of its notice on a stale read."""
    target = brand.bluesky.target
    h = health(brand) if health is not None else None
    if h is None or h.effective not in OUT:
        h = health_store.load(rt.redis, rt.settings, target)
    if h.effective not in OUT or channel not in policy.notice_channels(brand):
        return False
    seen = (brand.id, target, h.outage, channel)
    if seen in _OUT:
        return False
    pending = _pending(rt, brand, target, h.outage, channel, enqueue)
    if not pending:
        if len(_OUT) >= _CACHE_MAX:
            _OUT.clear()
        _OUT.add(seen)
    return pending


def _pending(rt: Runtime, brand: Brand, target: str, outage: int, channel: str, enqueue: Enqueue) -> bool:
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
