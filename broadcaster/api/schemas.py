"""API schemas, split by role: what a client sends, what it gets back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, cast

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl

from broadcaster.core.brands import ChannelName, Priority, PriorityName
from broadcaster.core.feeds import xml_safe
from broadcaster.core.ids import MEDIA_ID_PATTERN
from broadcaster.core.models import (
    MEDIA_PER_POST,
    Delivery,
    DeliveryState,
    MediaRef,
    Post,
    PostState,
    post_state,
)


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty or only whitespace")
    return _printable(v)


def _printable(v: str) -> str:
    bad = sorted({f"U+{ord(c):04X}" for c in v if not xml_safe(c)})
    if bad:
        raise ValueError(f"must not contain control characters ({', '.join(bad[:5])})")
    return v


Text = Annotated[str, Field(min_length=1, max_length=5000), AfterValidator(_not_blank)]
MEDIA_ALT_MAX = 1500  # Mastodon's limit on a media description


class MediaAttach(BaseModel):
    """An image a post carries: an id from `POST /v1/media` and its alt text."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=MEDIA_ID_PATTERN, description="From `POST /v1/media`.")]
    alt: Annotated[str, Field(max_length=MEDIA_ALT_MAX), AfterValidator(_printable)] = Field(
        "", description="Alt text (what a screen reader says); required unless the brand relaxed it."
    )


Media = Annotated[list[MediaAttach], Field(max_length=MEDIA_PER_POST)]
Variants = Annotated[dict[ChannelName, Text], Field(max_length=5)]
Channels = Annotated[list[ChannelName], Field(min_length=1, max_length=5)]


class PostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text = Field(description="What to say; shaped per channel (see docs/api.md).")
    link: HttpUrl | None = Field(None, description="Optional link, appended where it fits.")
    scheduled_at: AwareDatetime | None = Field(
        None, description="ISO 8601 with a timezone; omitted = now. At most a year ahead."
    )
    channels: Channels | None = Field(
        None, description="Subset of the brand's channels; omitted = the brand's routing policy."
    )
    priority: PriorityName = "normal"
    media: Media = Field(default_factory=list, description="Up to four images, each with alt text.")
    variants: Variants = Field(
        default_factory=dict,
        description="Text for one channel instead of `text` (e.g. a short `sms`), checked for it.",
    )


class PostUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text | None = None
    link: HttpUrl | None = None
    scheduled_at: AwareDatetime | None = None
    channels: Channels | None = None
    media: Media | None = Field(None, description="Replaces the images ([] removes them).")
    variants: Variants | None = Field(None, description="Replaces the variants ({} removes them).")


class DeliveryPublic(BaseModel):
    channel: str
    state: DeliveryState
    attempts: int
    remote_id: str | None = None
    url: str | None = None
    error: str | None = None
    reason: str | None = None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None = None
    recipients: dict[str, dict] | None = None

    @classmethod
    def of(cls, d: Delivery) -> DeliveryPublic:
        return cls.model_validate(d.model_dump(exclude={"lease_until"}))


class PostPublic(BaseModel):
    id: str
    brand: str
    state: PostState
    kind: str
    text: str
    link: str | None
    priority: PriorityName
    scheduled_at: datetime
    created_at: datetime
    dispatched_at: datetime | None
    canceled_at: datetime | None
    media: list[MediaRef] = Field(default_factory=list)
    variants: dict[str, str] = Field(default_factory=dict)
    deliveries: list[DeliveryPublic]

    @classmethod
    def of(cls, post: Post, deliveries: dict[str, Delivery]) -> PostPublic:
        return cls(
            id=post.id,
            brand=post.brand,
            state=post_state(post, deliveries),
            kind=post.kind,
            text=post.text,
            link=post.link,
            priority=cast("PriorityName", Priority(post.priority).name),  # the enum names are the literals
            scheduled_at=post.scheduled_at,
            created_at=post.created_at,
            dispatched_at=post.dispatched_at,
            canceled_at=post.canceled_at,
            media=post.media,
            variants=post.variants,
            deliveries=[DeliveryPublic.of(d) for d in deliveries.values()],
        )


class MediaPublic(BaseModel):
    """An image as stored (after any resize): what a post's `media[].id` names."""

    id: str
    mime: str
    width: int
    height: int
    size: int = Field(description="Bytes as stored.")
    url: str = Field(description="Public URL (`GET /media/{id}`).")

    @classmethod
    def of(cls, m: Any, public_base_url: str) -> MediaPublic:
        url = f"{public_base_url.rstrip('/')}/media/{m.id}"
        return cls(id=m.id, mime=m.mime, width=m.width, height=m.height, size=m.size, url=url)


class PostList(BaseModel):
    items: list[PostPublic]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class Problem(BaseModel):
    detail: str | list


def _problem(description: str) -> dict:
    return {"model": Problem, "description": description}


# Answers every authenticated route can give, documented so clients (and schemathesis) know them.
AUTH_RESPONSES: dict[int | str, dict] = {
    401: _problem("Missing, unknown or revoked API key"),
    422: _problem("A field is invalid; `detail[].loc` names it"),
    503: _problem("Redis is unavailable or the configuration cannot be read; retry later"),
}
BODY_RESPONSES: dict[int | str, dict] = {
    400: _problem("The body could not be parsed"),
    413: _problem("The body is larger than 64 KiB"),
    415: _problem("The body is not JSON"),
}
