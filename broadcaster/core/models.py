"""The ledger's records: a post, its delivery to each channel, and the states they move through.

Pure data and pure rules; `broadcaster.ledger.store` keeps them in Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer


class DeliveryState(StrEnum):
    pending = "pending"  # waiting for a worker (first try or a retry)
    sending = "sending"  # claimed by a worker; the remote call may be under way
    delivered = "delivered"
    failed = "failed"  # permanent error, or out of attempts
    held = "held"  # Bluesky was down: kept to backfill on recovery
    skipped = "skipped"  # not sent on purpose (failback mode skip, SMS budget spent, ...)
    uncertain = "uncertain"  # a send without server-side idempotency was cut short
    canceled = "canceled"


FINAL_STATES = frozenset(
    {
        DeliveryState.delivered,
        DeliveryState.failed,
        DeliveryState.skipped,
        DeliveryState.uncertain,
        DeliveryState.canceled,
    }
)
ACTIVE_STATES = frozenset({DeliveryState.pending, DeliveryState.sending})


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _us_from_epoch(v: Any) -> Any:
    """A stored time back: an integer is microseconds since the epoch (ISO strings, as written
    before, and datetimes pass on to pydantic)."""
    return _EPOCH + v * _US if isinstance(v, int) and not isinstance(v, bool) else v


def _us_since_epoch(v: datetime) -> int:
    """How the ledger stores a time: 16 digits instead of a 29-byte ISO string, exactly."""
    return (v - _EPOCH) // _US


# A time of a ledger record. In JSON (only the ledger writes these records as JSON, to Redis) it is
# the integer microseconds since the epoch: about 13 bytes less per time, about 250 a post fanned
# out to five channels (docs/benchmarks.md, section 5). The API answers ISO times as before.
StoredTime = Annotated[
    datetime,
    BeforeValidator(_us_from_epoch),
    PlainSerializer(_us_since_epoch, return_type=int, when_used="json"),
]


class PostState(StrEnum):
    scheduled = "scheduled"
    dispatching = "dispatching"
    delivered = "delivered"
    partially_delivered = "partially_delivered"
    failed = "failed"
    canceled = "canceled"


def now_utc() -> datetime:
    return datetime.now(UTC)


class Delivery(BaseModel):
    channel: str
    state: DeliveryState = DeliveryState.pending
    attempts: int = 0
    remote_id: str | None = None
    url: str | None = None
    error: str | None = None
    reason: str | None = None  # why held/skipped/rerouted
    created_at: StoredTime = Field(default_factory=now_utc)
    updated_at: StoredTime = Field(default_factory=now_utc)
    delivered_at: StoredTime | None = None
    lease_until: float | None = None  # epoch seconds; a `sending` claim expires then
    limited_since: float | None = None  # epoch seconds; first 429 of the current rate-limit spell
    first_try_at: float | None = None  # epoch seconds; the claim of the attempt that still counts first
    recipients: dict[str, dict[str, Any]] | None = None  # per chat / phone number outcomes


MEDIA_PER_POST = 4  # Bluesky's app.bsky.embed.images and Mastodon both take four


class MediaRef(BaseModel):
    """One image attached to a post, as stored by `POST /v1/media` (after any resize)."""

    id: str  # "med_…", answered by POST /v1/media; the blob is at keys.media_blob(id)
    alt: str = ""  # alt text ("" only where the brand relaxed the rule)
    mime: str  # image/jpeg | image/png | image/webp | image/gif
    width: int
    height: int
    size: int  # bytes as stored


class Post(BaseModel):
    id: str
    brand: str
    text: str
    link: str | None = None
    priority: int = 1
    kind: str = "post"  # "post", or "notice" for outage/recovery notices
    scheduled_at: StoredTime
    created_at: StoredTime
    channels: list[str] | None = None  # as requested; None = the brand's routing decides
    idempotency_key: str | None = None
    body_hash: str | None = None
    dispatched_at: StoredTime | None = None
    canceled_at: StoredTime | None = None
    rerouted_at: StoredTime | None = None  # when it was sent to the failover channels
    media: list[MediaRef] = Field(default_factory=list)  # up to MEDIA_PER_POST images
    variants: dict[str, str] = Field(default_factory=dict)  # channel name -> that channel's text

    @property
    def created_at_us(self) -> int:
        return int(self.created_at.timestamp() * 1_000_000)


def text_for(post: Post, channel: str) -> str:
    """The text `channel` gets: the post's variant for it, else the post's own text."""
    return post.variants.get(channel, post.text)


def post_state(post: Post, deliveries: dict[str, Delivery]) -> PostState:
    """The overall state of a post, derived from its deliveries (never stored, so never stale).

    `held` and `skipped` deliveries do not count against a post: it is delivered when
    everything it was actually sent to arrived; `uncertain` counts as not delivered.
    """
    if post.canceled_at is not None:
        return PostState.canceled
    if post.dispatched_at is None:
        return PostState.scheduled
    states = [d.state for d in deliveries.values()]
    if any(s in ACTIVE_STATES for s in states):
        return PostState.dispatching
    counted = [s for s in states if s not in (DeliveryState.held, DeliveryState.skipped)]
    delivered = sum(1 for s in counted if s == DeliveryState.delivered)
    if counted and delivered == len(counted):
        return PostState.delivered
    if delivered:
        return PostState.partially_delivered
    if not counted:
        # Everything held or skipped: nothing reached anyone yet, nothing failed either.
        return PostState.dispatching if DeliveryState.held in states else PostState.failed
    return PostState.failed
