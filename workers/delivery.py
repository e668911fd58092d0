"""One delivery attempt of one post to one channel: claim, send, record.

Called by the `broadcaster.deliver` task; returns what Celery should do next, so
the task stays a thin wrapper and no worker ever sleeps for a retry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from broadcaster.core.brands import MissingSecret
from broadcaster.core.delivery_rules import (
    Claim,
    backoff_s,
    claim,
    delivered,
    failed,
    rate_limited_retry,
    retry_later,
)
from broadcaster.core.models import Delivery, DeliveryState
from channels import build_channel
from channels.base import ChannelError, Deferred, Outbound, RateLimited, Receipt, Skipped, Uncertain
from workers import failover, health
from workers.runtime import Runtime

log = logging.getLogger("broadcaster.deliver")

MAX_RETRY_WAIT_S = 1800  # keep every countdown well below the broker's visibility timeout


@dataclass(frozen=True)
class Outcome:
    result: str
    retry_in: float | None = None


def _only_if_sending(new_fn):
    def change(cur: Delivery | None) -> Delivery | None:
        if cur is None or cur.state != DeliveryState.sending:
            return None
        return new_fn(cur)

    return change


def deliver_once(rt: Runtime, post_id: str, channel: str) -> Outcome:
    loaded = rt.store.load(post_id)
    if loaded is None or channel not in loaded[1]:
        return Outcome("missing")
    post, _ = loaded
    brand = rt.brands().get(post.brand)
    store = rt.store
    if brand is None:
        store.update_delivery(
            post_id, channel, lambda d: failed(d, f"brand {post.brand} is not configured") if d else None
        )
        return Outcome("failed")
    try:
        ch = build_channel(channel, brand, rt.channel_ctx())
    except (KeyError, ImportError, AttributeError) as e:
        reason = f"channel {channel} is not available: {e}"
        store.update_delivery(post_id, channel, lambda d: failed(d, reason) if d else None)
        return Outcome("failed")
    gate = failover.before_send(rt, brand, post, loaded[1], channel, failover.enqueue_delivery)
    if gate is not None:  # Bluesky is down (reroute), or the outage notice must go out first
        return Outcome(*gate)

    now = time.time()
    verdict: dict[str, Claim] = {}

    def take(d: Delivery | None) -> Delivery | None:
        if d is None:
            verdict["c"] = Claim.done
            return None
        c, new = claim(d, now, rt.settings.send_lease_s, ch.idempotent)
        verdict["c"] = c
        return new

    deadline = now + rt.settings.send_lease_s + rt.settings.sweep_deadline_s
    _, mine = store.update_delivery(post_id, channel, take, inflight_until=deadline)
    if verdict.get("c") != Claim.go or mine is None:
        return Outcome(str(verdict.get("c", Claim.done)))

    message = Outbound(
        post_id=post.id,
        brand=brand,
        text=post.text,
        link=post.link,
        priority=post.priority,
        created_at_us=post.created_at_us,
        attempt=mine.attempts,
        kind=post.kind,
    )
    started = time.monotonic()
    try:
        receipt: Receipt = ch.send(message)
    except MissingSecret as e:
        reason = str(e)
        store.update_delivery(post_id, channel, _only_if_sending(lambda d: failed(d, reason)))
        return Outcome("failed")
    except ChannelError as e:
        return on_error(rt, post_id, channel, mine, e)
    except Exception as e:
        log.exception("unexpected error delivering %s to %s", post_id, channel)
        return on_error(rt, post_id, channel, mine, ChannelError(f"unexpected {type(e).__name__}"))
    finally:
        elapsed = time.monotonic() - started
    store.update_delivery(
        post_id,
        channel,
        _only_if_sending(lambda d: delivered(d, receipt.remote_id, receipt.url, receipt.recipients)),
    )
    log.info(
        "delivered %s to %s in %.0f ms",
        post_id,
        channel,
        elapsed * 1000,
        extra={"post_id": post_id, "brand": brand.id, "channel": channel},
    )
    if channel == "bluesky":
        on_bluesky_result(rt, brand, ok=True, error=None, post_id=post_id)
    return Outcome("delivered")


def on_bluesky_result(rt: Runtime, brand, ok: bool, error: str | None, post_id: str | None = None) -> None:
    """Seam for the health watcher's passive signals (a send is a probe too).

    A send that works is remembered for the look-back mirror but not counted as healthy:
    posting can work while the feeds the audience reads do not. Failures: see `on_error`.
    """
    if ok and post_id:
        health.sent(rt, brand, post_id)


def _keep_recipients(d: Delivery, e: ChannelError) -> Delivery:
    """A fan-out channel's per-recipient progress travels with its error into the ledger."""
    return d.model_copy(update={"recipients": e.recipients}) if e.recipients is not None else d


def on_channel_decision(rt: Runtime, post_id: str, channel: str, e: ChannelError) -> Outcome | None:
    """Skipped, Uncertain and Deferred are the channel's decisions, not failures (channels.base)."""
    store = rt.store
    if isinstance(e, Skipped | Uncertain):
        state = DeliveryState.skipped if isinstance(e, Skipped) else DeliveryState.uncertain
        why = {"reason": e.message} if isinstance(e, Skipped) else {"error": e.message}
        change = {"state": state, "lease_until": None, **why}
        store.update_delivery(
            post_id, channel, _only_if_sending(lambda d: _keep_recipients(d.model_copy(update=change), e))
        )
        log.info("%s on %s is %s: %s", post_id, channel, state.value, e.message)
        return Outcome(state.value)
    if isinstance(e, Deferred):  # pacing: continue later, without using up an attempt
        wait = min(MAX_RETRY_WAIT_S, max(0.05, e.retry_after or 0.0))
        store.update_delivery(
            post_id,
            channel,
            _only_if_sending(
                lambda d: _keep_recipients(
                    retry_later(d, e.message).model_copy(update={"attempts": max(0, d.attempts - 1)}),
                    e,
                )
            ),
            inflight_until=time.time() + wait + rt.settings.sweep_deadline_s,
        )
        return Outcome("retry", retry_in=wait)
    return None


def on_error(rt: Runtime, post_id: str, channel: str, mine: Delivery, e: ChannelError) -> Outcome:
    store = rt.store
    attempts = mine.attempts
    decided = on_channel_decision(rt, post_id, channel, e)
    if decided is not None:
        return decided
    outage = channel == "bluesky" and e.outage and not e.permanent
    if outage and failover.bluesky_send_failed(rt, post_id, e.message):
        return Outcome("rerouted")  # counted by the watcher; the post went to the failover channels now
    if e.permanent:
        store.update_delivery(
            post_id, channel, _only_if_sending(lambda d: _keep_recipients(failed(d, e.message), e))
        )
        log.warning("permanent failure of %s on %s: %s", post_id, channel, e.message)
        return Outcome("failed")
    if isinstance(e, RateLimited):
        return _rate_limited(rt, post_id, channel, mine, e)
    if attempts >= rt.settings.max_attempts:
        msg = f"{e.message} (gave up after {attempts} attempts)"
        store.update_delivery(
            post_id, channel, _only_if_sending(lambda d: _keep_recipients(failed(d, msg), e))
        )
        return Outcome("failed")
    wait = backoff_s(attempts, rt.settings.retry_base_s, rt.settings.retry_max_s)
    store.update_delivery(
        post_id,
        channel,
        _only_if_sending(lambda d: _keep_recipients(retry_later(d, e.message), e)),
        inflight_until=time.time() + wait + rt.settings.sweep_deadline_s,
    )
    log.info("retrying %s on %s in %.1f s: %s", post_id, channel, wait, e.message)
    return Outcome("retry", retry_in=wait)


def _rate_limited(rt: Runtime, post_id: str, channel: str, mine: Delivery, e: RateLimited) -> Outcome:
    """Wait as long as the server asked (a little more, never less), then try again."""
    now = time.time()
    if mine.limited_since and now - mine.limited_since > rt.settings.rate_limited_give_up_s:
        msg = f"{e.message} (rate-limited for over {rt.settings.rate_limited_give_up_s:.0f} s; gave up)"
        rt.store.update_delivery(
            post_id, channel, _only_if_sending(lambda d: _keep_recipients(failed(d, msg), e))
        )
        return Outcome("failed")
    wait = min(MAX_RETRY_WAIT_S, (e.retry_after or 1.0) + 0.25)
    rt.store.update_delivery(
        post_id,
        channel,
        _only_if_sending(lambda d: _keep_recipients(rate_limited_retry(d, e.message, now), e)),
        inflight_until=now + wait + rt.settings.sweep_deadline_s,
    )
    log.info("%s on %s rate-limited; retrying in %.1f s", post_id, channel, wait)
    return Outcome("retry", retry_in=wait)
