"""The rules of one delivery attempt: who may claim it, how long to wait before a retry.

Pure functions; the worker applies them through the store's compare-and-set.
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Any

from broadcaster.core.models import Delivery, DeliveryState, now_utc


class Claim(StrEnum):
    go = "go"  # this worker now owns the send
    busy = "busy"  # another worker holds a live lease
    done = "done"  # nothing to do (final, held, skipped)
    uncertain = "uncertain"  # a non-idempotent send was cut short: never resend silently


def claim(
    d: Delivery, now: float, lease_s: float, idempotent: bool, horizon_s: float | None = None
) -> tuple[Claim, Delivery | None]:
    """Decide what a worker holding a deliver task may do with this delivery.

    `horizon_s`: how long after the first attempt that may have reached the server a resend is
    still safe (Mastodon remembers an Idempotency-Key for an hour). Past it, a retry would post
    a second time: the delivery is `uncertain` instead. An attempt a 429 gave back (attempts back
    to 0) does not count: the next claim is a first try again.
    """
    if _past_horizon(d, now, horizon_s):
        since = now - (d.first_try_at or now)
        return Claim.uncertain, d.model_copy(
            update={
                "state": DeliveryState.uncertain,
                "lease_until": None,
                "error": (
                    f"an earlier attempt may have arrived and {since:.0f} s have passed since it "
                    f"(the server dedupes for {horizon_s:.0f} s): not resent"
                ),
            }
        )
    if d.state == DeliveryState.pending:
        return Claim.go, d.model_copy(
            update={
                "state": DeliveryState.sending,
                "attempts": d.attempts + 1,
                "lease_until": now + lease_s,
                "first_try_at": now if d.attempts == 0 else d.first_try_at,
            }
        )
    if d.state == DeliveryState.sending:
        if d.lease_until is not None and d.lease_until > now:
            return Claim.busy, None
        if not idempotent:
            return Claim.uncertain, d.model_copy(
                update={
                    "state": DeliveryState.uncertain,
                    "lease_until": None,
                    "error": "the worker sending this was lost mid-send; it may or may not have arrived",
                }
            )
        return Claim.go, d.model_copy(update={"attempts": d.attempts + 1, "lease_until": now + lease_s})
    return Claim.done, None


def _past_horizon(d: Delivery, now: float, horizon_s: float | None) -> bool:
    """A retry (attempts left over, no live lease) later than the server's dedupe window."""
    if horizon_s is None or d.attempts == 0 or d.first_try_at is None or now - d.first_try_at <= horizon_s:
        return False
    if d.state == DeliveryState.pending:
        return True
    return d.state == DeliveryState.sending and (d.lease_until is None or d.lease_until <= now)


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: a crowd of retries does not arrive at once."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def delivered(
    d: Delivery,
    remote_id: str,
    url: str | None,
    recipients: dict[str, dict[str, Any]] | None = None,
    note: str | None = None,
) -> Delivery:
    """Delivered; `note` (the channel's remark, e.g. a link card left out) becomes the `reason`."""
    return d.model_copy(
        update={
            "reason": note if note is not None else d.reason,
            "state": DeliveryState.delivered,
            "remote_id": remote_id,
            "url": url,
            "error": None,
            "lease_until": None,
            "delivered_at": now_utc(),
            "limited_since": None,
            "recipients": recipients if recipients is not None else d.recipients,
        }
    )


def failed(d: Delivery, error: str) -> Delivery:
    return d.model_copy(update={"state": DeliveryState.failed, "error": error, "lease_until": None})


def retry_later(d: Delivery, error: str) -> Delivery:
    return d.model_copy(
        update={"state": DeliveryState.pending, "error": error, "lease_until": None, "limited_since": None}
    )


def rate_limited_retry(d: Delivery, error: str, now: float) -> Delivery:
    """Retry after the server's wait without using up an attempt: a 429 says nothing about the post."""
    return d.model_copy(
        update={
            "state": DeliveryState.pending,
            "error": error,
            "lease_until": None,
            "attempts": max(0, d.attempts - 1),
            "limited_since": d.limited_since or now,
        }
    )


def should_redrive(d: Delivery, now: float, backlog: int, max_queue_wait_s: float) -> bool:
    """May the sweeper send another task for this delivery whose deadline passed?

    A `sending` delivery is re-driven once its lease ran out (its worker is gone). A `pending`
    one may just be queued behind a backlog: while deliver tasks wait in the broker it is left
    alone until it has waited `max_queue_wait_s`, so an outage's backlog is not doubled.
    """
    if d.state == DeliveryState.sending:
        return not (d.lease_until and d.lease_until > now)
    if d.state == DeliveryState.pending:
        return not backlog or now - d.updated_at.timestamp() >= max_queue_wait_s
    return False


def should_redispatch(due_at: float, now: float, shares_waiting: bool, max_queue_wait_s: float) -> bool:
    """May the sweeper dispatch a claimed post whose dispatching lease ran out?

    While a backlog's shares wait in the broker the post may simply be in one: it is left alone
    until it is `max_queue_wait_s` past due. With no share waiting, its share was lost (a worker
    killed with it) and the post is dispatched again at once. Dispatching twice is harmless
    (routes and deliveries are compare-and-set), only wasted work.
    """
    return not shares_waiting or now - due_at >= max_queue_wait_s
