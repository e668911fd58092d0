"""One delivery attempt of one post to one channel: claim, send, record.

Called by the `broadcaster.deliver` task; returns what Celery should do next, so
the task stays a thin wrapper and no worker ever sleeps for a retry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from broadcaster.brands import MissingSecret
from broadcaster.delivery_rules import Claim, backoff_s, claim, delivered, failed, retry_later
from broadcaster.models import Delivery, DeliveryState
from channels import build_channel
from channels.base import ChannelError, Outbound, RateLimited, Receipt
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

    now = time.time()
    verdict: dict[str, Claim] = {}

    def take(d: Delivery | None) -> Delivery | None:
        if d is None:
            verdict["c"] = Claim.done
            return None
        c, new = claim(d, now, rt.settings.send_lease_s, ch.idempotent)
        verdict["c"] = c
        return new

    _, mine = store.update_delivery(post_id, channel, take)
    if verdict.get("c") != Claim.go or mine is None:
        return Outcome(str(verdict.get("c", Claim.done)))

    store.track_inflight(post_id, channel, now + rt.settings.send_lease_s + rt.settings.sweep_deadline_s)
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
        on_bluesky_result(rt, brand, ok=True, error=None)
    return Outcome("delivered")


def on_bluesky_result(rt: Runtime, brand, ok: bool, error: str | None) -> None:
    """Seam for the health watcher's passive signals (a send is a probe too)."""


def on_error(rt: Runtime, post_id: str, channel: str, mine: Delivery, e: ChannelError) -> Outcome:
    store = rt.store
    attempts = mine.attempts
    if e.permanent:
        store.update_delivery(post_id, channel, _only_if_sending(lambda d: failed(d, e.message)))
        log.warning("permanent failure of %s on %s: %s", post_id, channel, e.message)
        return Outcome("failed")
    if attempts >= rt.settings.max_attempts:
        msg = f"{e.message} (gave up after {attempts} attempts)"
        store.update_delivery(post_id, channel, _only_if_sending(lambda d: failed(d, msg)))
        return Outcome("failed")
    if isinstance(e, RateLimited):
        wait = min(MAX_RETRY_WAIT_S, (e.retry_after or 1.0) + 0.25)
    else:
        wait = backoff_s(attempts, rt.settings.retry_base_s, rt.settings.retry_max_s)
    store.update_delivery(post_id, channel, _only_if_sending(lambda d: retry_later(d, e.message)))
    store.track_inflight(post_id, channel, time.time() + wait + rt.settings.sweep_deadline_s)
    log.info("retrying %s on %s in %.1f s: %s", post_id, channel, wait, e.message)
    return Outcome("retry", retry_in=wait)
