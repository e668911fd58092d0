"""Outage and recovery notices, and which posts the look-back mirror copies (pure policy)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broadcaster.core import outage as failover
from broadcaster.core.brands import Priority, hash_api_key, parse_brands
from broadcaster.core.models import Delivery, DeliveryState, Post

BRANDS = f"""
brands:
  - id: acme
    name: Acme Coffee
    api_keys: ["{hash_api_key("k1")}"]
    bluesky: {{handle: acme.test, app_password_env: ACME_PW}}
    rss: {{title: t, link: "https://acme.example/", description: d}}
    mastodon: {{instance_url: "https://mastodon.example", access_token_env: ACME_MT}}
    telegram: {{bot_token_env: ACME_TG, chat_ids: ["@acme"]}}
    sms: {{account_sid: AC1, auth_token_env: ACME_TW, from_number: "+15005550006"}}
    routing:
      recovery_notice: "{{brand}}: Bluesky is back {{on purpose}}."
  - id: quiet
    name: Quiet
    api_keys: ["{hash_api_key("k2")}"]
    bluesky: {{handle: quiet.test, app_password_env: QUIET_PW}}
    rss: {{title: t, link: "https://quiet.example/", description: d}}
    routing: {{outage_notice: null, failover: [rss], always_on: []}}
"""

FEED = "https://news.example/feeds/acme.rss"
T = datetime(2026, 4, 12, 15, 0, tzinfo=UTC)


@pytest.fixture
def brands():
    return parse_brands(BRANDS)


def post(kind: str = "post", priority: int = Priority.normal) -> Post:
    return Post(id="p_1", brand="acme", text="hi", kind=kind, priority=priority, scheduled_at=T, created_at=T)


def test_the_outage_notice_names_the_brand_and_where_to_follow_it(brands):
    text = failover.notice_text(brands.require("acme"), failover.OUTAGE, FEED)
    assert text == (
        "Acme Coffee here: Bluesky is having trouble. Until it is back, follow us on "
        f"Mastodon (mastodon.example), Telegram and RSS ({FEED})."
    )


def test_a_notice_goes_to_the_failover_and_always_on_channels_but_not_to_paid_sms(brands):
    assert failover.notice_channels(brands.require("acme")) == ["mastodon", "telegram", "rss"]


def test_other_braces_in_a_template_are_left_as_written(brands):
    text = failover.notice_text(brands.require("acme"), failover.RECOVERY, FEED)
    assert text == "Acme Coffee: Bluesky is back {on purpose}."


def test_a_brand_without_a_notice_gets_none(brands):
    assert failover.notice_text(brands.require("quiet"), failover.OUTAGE, FEED) is None
    assert failover.notice_text(brands.require("quiet"), failover.RECOVERY, FEED) is None


def test_each_outage_has_its_own_notice_key():
    assert failover.notice_key("bsky.social", 1, "outage") != failover.notice_key("bsky.social", 2, "outage")
    assert failover.notice_key("bsky.social", 1, "outage") != failover.notice_key(
        "bsky.social", 1, "recovery"
    )


def test_join_words_reads_like_a_sentence():
    assert failover.join_words([]) == ""
    assert failover.join_words(["A"]) == "A"
    assert failover.join_words(["A", "B", "C"]) == "A, B and C"


def test_a_post_bluesky_took_is_mirrored_to_the_failover_channels_it_has_not_reached(brands):
    acme = brands.require("acme")
    deliveries = {
        "bluesky": Delivery(channel="bluesky", state=DeliveryState.delivered),
        "rss": Delivery(channel="rss", state=DeliveryState.delivered),
    }
    routes = failover.mirror_routes(acme, post(), deliveries, "Bluesky went down")
    assert set(routes) == {"mastodon", "telegram"}  # SMS only from high priority
    assert all(r.state == DeliveryState.pending for r in routes.values())
    assert routes["mastodon"].reason == "mirrored: Bluesky went down"
    urgent = failover.mirror_routes(acme, post(priority=Priority.urgent), deliveries, "x")
    assert "sms" in urgent


@pytest.mark.parametrize("state", [DeliveryState.held, DeliveryState.failed, DeliveryState.pending])
def test_a_post_bluesky_did_not_take_is_not_mirrored(brands, state):
    deliveries = {"bluesky": Delivery(channel="bluesky", state=state)}
    assert failover.mirror_routes(brands.require("acme"), post(), deliveries, "x") == {}


def test_a_notice_is_never_mirrored(brands):
    deliveries = {"bluesky": Delivery(channel="bluesky", state=DeliveryState.delivered)}
    assert failover.mirror_routes(brands.require("acme"), post(kind="notice"), deliveries, "x") == {}


def test_the_look_back_starts_at_the_outages_onset_less_a_margin(brands):
    acme = brands.require("acme")  # 30 minutes at most by default
    down = 10_000.0
    assert failover.lookback_start(acme, down - 40, down, 10) == down - 50
    # An onset longer ago than the brand's minutes: those minutes cap it.
    assert failover.lookback_start(acme, down - 3 * 3600, down, 10) == down - 30 * 60
    # An operator's override has no onset: the brand's minutes.
    assert failover.lookback_start(acme, 0.0, down, 10) == down - 30 * 60
