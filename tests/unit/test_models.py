"""A post's overall state is derived from its deliveries."""

from datetime import UTC, datetime

import pytest

from broadcaster.core.models import Delivery, DeliveryState, Post, PostState, post_state

T = datetime(2026, 11, 23, tzinfo=UTC)


def _post(**kw) -> Post:
    base = {"id": "p_1", "brand": "acme", "text": "hi", "scheduled_at": T, "created_at": T}
    return Post(**(base | kw))


def _ds(**states: str) -> dict[str, Delivery]:
    return {c: Delivery(channel=c, state=DeliveryState(s)) for c, s in states.items()}


def test_a_post_not_yet_dispatched_is_scheduled():
    assert post_state(_post(), _ds(bluesky="pending", rss="pending")) == PostState.scheduled


def test_a_canceled_post_is_canceled_whatever_its_deliveries_say():
    assert post_state(_post(canceled_at=T), _ds(bluesky="canceled")) == PostState.canceled


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ({"bluesky": "pending", "rss": "delivered"}, PostState.dispatching),
        ({"bluesky": "sending", "rss": "delivered"}, PostState.dispatching),
        ({"bluesky": "delivered", "rss": "delivered"}, PostState.delivered),
        ({"bluesky": "failed", "rss": "delivered"}, PostState.partially_delivered),
        ({"bluesky": "failed", "rss": "failed"}, PostState.failed),
        ({"bluesky": "uncertain", "rss": "delivered"}, PostState.partially_delivered),
        ({"bluesky": "held", "mastodon": "delivered", "rss": "delivered"}, PostState.delivered),
        ({"bluesky": "skipped", "rss": "delivered"}, PostState.delivered),
        ({"bluesky": "held"}, PostState.dispatching),
    ],
)
def test_a_dispatched_posts_state_follows_its_deliveries(states, expected):
    assert post_state(_post(dispatched_at=T), _ds(**states)) == expected
