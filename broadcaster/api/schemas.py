"""API schemas, split by role: what a client sends, what it gets back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, cast

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl

from broadcaster.core.brands import ChannelName, Priority, PriorityName
from broadcaster.core.feeds import xml_safe
from broadcaster.core.models import Delivery, DeliveryState, Post, PostState, post_state


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be empty or only whitespace")
    bad = sorted({f"U+{ord(c):04X}" for c in v if not xml_safe(c)})
    if bad:
        raise ValueError(f"must not contain control characters ({', '.join(bad[:5])})")
    return v


Text = Annotated[str, Field(min_length=1, max_length=5000), AfterValidator(_not_blank)]
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


class PostUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Text | None = None
    link: HttpUrl | None = None
    scheduled_at: AwareDatetime | None = None
    channels: Channels | None = None


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
            deliveries=[DeliveryPublic.of(d) for d in deliveries.values()],
        )


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
