"""The rules of one delivery attempt: who may claim it, how long to wait before a retry.

Pure functions; the worker applies them through the store's compare-and-set.
"""

from __future__ import annotations

import random
from enum import StrEnum

from broadcaster.models import Delivery, DeliveryState, now_utc


class Claim(StrEnum):
    go = "go"  # this worker now owns the send
    busy = "busy"  # another worker holds a live lease
    done = "done"  # nothing to do (final, held, skipped)
    uncertain = "uncertain"  # a non-idempotent send was cut short: never resend silently


def claim(d: Delivery, now: float, lease_s: float, idempotent: bool) -> tuple[Claim, Delivery | None]:
    """Decide what a worker holding a deliver task may do with this delivery."""
    if d.state == DeliveryState.pending:
        return Claim.go, d.model_copy(
            update={
                "state": DeliveryState.sending,
                "attempts": d.attempts + 1,
                "lease_until": now + lease_s,
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


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: a crowd of retries does not arrive at once."""
    ceiling = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def delivered(d: Delivery, remote_id: str, url: str | None, recipients=None) -> Delivery:
    return d.model_copy(
        update={
            "state": DeliveryState.delivered,
            "remote_id": remote_id,
            "url": url,
            "error": None,
            "lease_until": None,
            "delivered_at": now_utc(),
            "recipients": recipients if recipients is not None else d.recipients,
        }
    )


def failed(d: Delivery, error: str) -> Delivery:
    return d.model_copy(update={"state": DeliveryState.failed, "error": error, "lease_until": None})


def retry_later(d: Delivery, error: str) -> Delivery:
    return d.model_copy(update={"state": DeliveryState.pending, "error": error, "lease_until": None})
