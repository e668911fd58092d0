"""One delivery attempt of one post to one channel: claim, send, record.

Called by the `broadcaster.deliver` task; returns what Celery should do next, so
the task stays a thin wrapper and no worker ever sleeps for a retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from broadcaster.core.brands import Brand, MissingSecret
from broadcaster.core.delivery_rules import Claim, backoff_s
from broadcaster.core.health import Health
from broadcaster.core.models import Delivery, DeliveryState, text_for
from channels import build_channel
from channels.base import ChannelError, Deferred, Outbound, RateLimited, Receipt, Skipped, Uncertain
from workers import failover, health
from workers.lease import kept
from workers.runtime import Handoff, Runtime

log = logging.getLogger("broadcaster.deliver")

MAX_RETRY_WAIT_S = 1800  # keep every countdown well below the broker's visibility timeout


@dataclass(frozen=True)
class Outcome:
    result: str
    retry_in: float | None = None


def deliver_once(
    rt: Runtime,
    post_id: str,
    channel: str,
    handoff: Handoff,
    read_health: Callable[[Brand], Health] | None = None,
) -> Outcome:
    """`read_health`: how a batch reads the brand's Bluesky target (`failover.HealthReads`)."""
    loaded = rt.store.load(post_id)
    if loaded is None or channel not in loaded[1]:
        return Outcome("missing")
    post, _ = loaded
    brand = rt.brands().get(post.brand)
    store = rt.store
    if brand is None:
        store.fail(post_id, channel, f"brand {post.brand} is not configured", sending_only=False)
        return Outcome("failed")
    try:
        ch = build_channel(channel, brand, rt.channel_ctx())
    except (KeyError, ImportError, AttributeError) as e:
        store.fail(post_id, channel, f"channel {channel} is not available: {e}", sending_only=False)
        return Outcome("failed")
    gate = failover.before_send(rt, brand, post, loaded[1], channel, handoff.deliver, read_health)
    if gate is not None:  # Bluesky is down (reroute), or the outage notice must go out first
        return Outcome(*gate)

    now = rt.store.now()
    lease = rt.settings.send_lease_s
    deadline = now + lease + rt.settings.send_grace_s
    verdict, mine = store.claim(post_id, channel, now, lease, ch.idempotent, deadline, ch.resend_horizon_s)
    if verdict != Claim.go or mine is None:
        return Outcome(str(verdict))

    message = Outbound(
        post_id=post.id,
        brand=brand,
        text=text_for(post, channel),
        link=post.link,
        priority=post.priority,
        created_at_us=post.created_at_us,
        attempt=mine.attempts,
        kind=post.kind,
        media=tuple(post.media),
    )
    started = time.monotonic()
    try:
        with kept(rt, post_id, channel, mine.attempts):
            receipt: Receipt = ch.send(message)
    except MissingSecret as e:
        store.fail(post_id, channel, str(e))
        return Outcome("failed")
    except ChannelError as e:
        return on_error(rt, post_id, channel, mine, e, handoff)
    except Exception as e:
        log.exception("unexpected error delivering %s to %s", post_id, channel)
        return on_error(rt, post_id, channel, mine, ChannelError(f"unexpected {type(e).__name__}"), handoff)
    finally:
        elapsed = time.monotonic() - started
    # In the same step: a Bluesky delivery enters its target's recent posts, for the look-back
    # mirror if the target trips soon after (not a healthy signal: see workers.health); a fan-out
    # run's per-recipient outcomes are written with the delivery's record.
    on_bluesky = brand.bluesky.target if channel == "bluesky" else None
    store.delivered(
        post_id,
        channel,
        receipt.remote_id,
        receipt.url,
        receipt.recipients,
        receipt.note,
        on_bluesky,
        receipt.outcomes,
    )
    log.info(
        "delivered %s to %s in %.0f ms",
        post_id,
        channel,
        elapsed * 1000,
        extra={"post_id": post_id, "brand": brand.id, "channel": channel},
    )
    return Outcome("delivered")


def on_channel_decision(rt: Runtime, post_id: str, channel: str, e: ChannelError) -> Outcome | None:
    """Skipped, Uncertain and Deferred are the channel's decisions, not failures (channels.base)."""
    store = rt.store
    if isinstance(e, Skipped | Uncertain):
        state = DeliveryState.skipped if isinstance(e, Skipped) else DeliveryState.uncertain
        store.decided(post_id, channel, state, e.message, e.recipients)
        log.info("%s on %s is %s: %s", post_id, channel, state.value, e.message)
        return Outcome(state.value)
    if isinstance(e, Deferred):  # pacing: continue later, without using up an attempt
        wait = min(MAX_RETRY_WAIT_S, max(0.05, e.retry_after or 0.0))
        deadline = rt.store.now() + wait + rt.settings.sweep_deadline_s
        store.retry(post_id, channel, e.message, deadline, e.recipients, free=True)
        return Outcome("retry", retry_in=wait)
    return None


def bluesky_send_failed(rt: Runtime, post_id: str, error: str, handoff: Handoff) -> bool:
    """A Bluesky send failed like an outage: count it, act on a trip, reroute this post now."""
    loaded = rt.store.load(post_id)
    brand = rt.brands().get(loaded[0].brand) if loaded else None
    if brand is None:
        return False
    transition = health.send_failed(rt, brand, error)
    if transition is not None:
        failover.reconcile(rt, brand.bluesky.target, handoff, transition)
    reason = f"Bluesky send failed: {error}"
    return failover.reroute_post(rt, brand, post_id, reason, handoff.deliver, error=error)


def on_error(
    rt: Runtime, post_id: str, channel: str, mine: Delivery, e: ChannelError, handoff: Handoff
) -> Outcome:
    store = rt.store
    attempts = mine.attempts
    decided = on_channel_decision(rt, post_id, channel, e)
    if decided is not None:
        return decided
    outage = channel == "bluesky" and e.outage and not e.permanent
    if outage and bluesky_send_failed(rt, post_id, e.message, handoff):
        return Outcome("rerouted")  # counted by the watcher; the post went to the failover channels now
    if e.permanent:
        store.fail(post_id, channel, e.message, e.recipients)
        log.warning("permanent failure of %s on %s: %s", post_id, channel, e.message)
        return Outcome("failed")
    if isinstance(e, RateLimited):
        return _rate_limited(rt, post_id, channel, mine, e)
    if attempts >= rt.settings.max_attempts:
        store.fail(post_id, channel, f"{e.message} (gave up after {attempts} attempts)", e.recipients)
        return Outcome("failed")
    wait = backoff_s(attempts, rt.settings.retry_base_s, rt.settings.retry_max_s)
    store.retry(
        post_id, channel, e.message, rt.store.now() + wait + rt.settings.sweep_deadline_s, e.recipients
    )
    log.info("retrying %s on %s in %.1f s: %s", post_id, channel, wait, e.message)
    return Outcome("retry", retry_in=wait)


def _rate_limited(rt: Runtime, post_id: str, channel: str, mine: Delivery, e: RateLimited) -> Outcome:
    """Wait as long as the server asked (a little more, never less), then try again."""
    now = rt.store.now()
    if mine.limited_since and now - mine.limited_since > rt.settings.rate_limited_give_up_s:
        msg = f"{e.message} (rate-limited for over {rt.settings.rate_limited_give_up_s:.0f} s; gave up)"
        rt.store.fail(post_id, channel, msg, e.recipients)
        return Outcome("failed")
    wait = min(MAX_RETRY_WAIT_S, (e.retry_after or 1.0) + 0.25)
    deadline = now + wait + rt.settings.sweep_deadline_s
    rt.store.retry(post_id, channel, e.message, deadline, e.recipients, rate_limited_at=now)
    log.info("%s on %s rate-limited; retrying in %.1f s", post_id, channel, wait)
    return Outcome("retry", retry_in=wait)
