"""The one small interface every outbound channel implements, and the errors it raises.

A channel's `send` returns a `Receipt` or raises a `ChannelError` whose type says
what the worker should do next: retry with backoff, retry after the server's hint,
or give up and record why. Never a bool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import redis

from broadcaster.core.brands import Brand
from broadcaster.core.models import MediaRef
from broadcaster.core.settings import Settings

if TYPE_CHECKING:
    from broadcaster.ledger.recipients import Outcomes
    from broadcaster.ledger.store import Store


@dataclass(frozen=True)
class Outbound:
    """One post as a channel sees it: ids, this channel's text and the images, nothing of the ledger.

    `text` is already the channel's text (`core.models.text_for`: its variant, else the post's);
    `media` are the attached images (bytes: `open_blob_store(settings).get(keys.media_blob(id))`).
    """

    post_id: str
    brand: Brand
    text: str
    link: str | None
    priority: int
    created_at_us: int
    attempt: int
    kind: str = "post"
    media: tuple[MediaRef, ...] = ()


def media_url(settings: Settings, media_id: str) -> str:
    """The image's public URL (MMS MediaUrl, RSS enclosure, the brand page): `GET /media/{id}`."""
    return f"{settings.public_base_url.rstrip('/')}/media/{media_id}"


@dataclass(frozen=True)
class Receipt:
    remote_id: str
    url: str | None = None
    recipients: dict[str, dict[str, Any]] | None = None  # per chat / number outcome summary
    note: str | None = None  # delivered, with a remark for the record (e.g. why no link card)
    # A fan-out run's per-recipient outcomes, not written yet: whoever settles the delivery hands
    # them to the `delivered` verb, which writes them with the record (unwritten, the recipients
    # stay claimed and a later run marks them `uncertain`: never sent twice, see recipients.py).
    outcomes: Outcomes | None = None


@dataclass
class ChannelContext:
    """What a channel may use besides the network: settings and the Redis ledger."""

    settings: Settings
    redis: redis.Redis
    extras: dict[str, Any] = field(default_factory=dict)
    store: Store | None = None  # the process's ledger, when it has one (a `Store` is costly to build)


class ChannelError(Exception):
    """A send failed. `permanent` = do not retry; `retry_after` = the server asked us to wait."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        outage: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after
        self.outage = outage
        # Per-recipient progress (Telegram chats, SMS numbers) for the ledger to keep with the error.
        self.recipients: dict[str, dict[str, Any]] | None = None

    def carrying(self, recipients: dict[str, dict[str, Any]] | None) -> ChannelError:
        """Attach per-recipient progress, so a retry or a failure still shows who got the post."""
        self.recipients = recipients
        return self


class TransientError(ChannelError):
    """Raised for 5xx, timeouts and connection errors: retry with exponential backoff."""

    def __init__(self, message: str, *, outage: bool = True):
        super().__init__(message, outage=outage)


class RateLimited(ChannelError):
    """Raised for 429 / flood control: retry no sooner than `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message, retry_after=max(0.0, retry_after))


class PermanentError(ChannelError):
    """Raised when retrying cannot help (bad credentials, rejected content): record and give up."""

    def __init__(self, message: str):
        super().__init__(message, permanent=True)


class Skipped(ChannelError):
    """Raised when the post must not go out on purpose (SMS budget spent, priority below the SMS
    threshold, nobody subscribed): recorded `skipped` with this reason, never retried."""

    def __init__(self, reason: str):
        super().__init__(reason, permanent=True)


class Uncertain(ChannelError):
    """Raised when nothing is known to have arrived but a send may have (a timeout after the
    request left, a lost worker): recorded `uncertain`, never re-sent silently."""

    def __init__(self, message: str):
        super().__init__(message, permanent=True)


class Deferred(RateLimited):
    """Raised when a fan-out channel waits for its own pacing budget (or paused after a batch):
    continue after `retry_after` seconds without using up an attempt; per-recipient markers
    make the next run resume exactly where this one stopped."""


class Channel(Protocol):
    """One outbound service for one brand."""

    name: ClassVar[str]
    # True when re-sending after an interrupted attempt cannot duplicate the post
    # (server-side idempotency, a lookup before resend, or per-recipient claim markers).
    idempotent: ClassVar[bool]
    # Seconds after a first attempt during which a resend is still deduplicated by the server
    # (Mastodon's Idempotency-Key lives an hour); None: no limit.
    resend_horizon_s: float | None

    def send(self, message: Outbound) -> Receipt: ...

    def check(self) -> str:
        """Verify the credentials against the service; return who we are there."""
        ...


class ConfiguredChannel:
    """Base of the channels configured per brand (`brand.<name>`): keeps brand, config and context.

    Raises KeyError for a brand without that channel, which the deliverer records as
    "channel not available".
    """

    name: ClassVar[str]
    resend_horizon_s: float | None = None

    def __init__(self, brand: Brand, ctx: ChannelContext):
        cfg = getattr(brand, self.name, None)
        if cfg is None:
            raise KeyError(f"brand {brand.id} has no {self.name} configuration")
        self.brand = brand
        self.cfg = cfg
        self.ctx = ctx
