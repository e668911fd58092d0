"""Brands file validation and the routing policy."""

from datetime import UTC, datetime

import pytest

from broadcaster.core import routing
from broadcaster.core.brands import BrandsFileError, Priority, hash_api_key, parse_brands
from broadcaster.core.models import Delivery, DeliveryState, Post

KEY_HASH = hash_api_key("k1")

BRANDS = f"""
brands:
  - id: acme
    name: Acme
    api_keys: ["{KEY_HASH}"]
    bluesky: {{handle: acme.test, app_password_env: ACME_PW, pds_url: "http://127.0.0.1:1/"}}
    rss: {{title: t, link: "https://acme.example/", description: d}}
    mastodon: {{instance_url: "https://m.example", access_token_env: ACME_MT}}
    telegram: {{bot_token_env: ACME_TG, chat_ids: ["@acme"]}}
    sms: {{account_sid: AC1, auth_token_env: ACME_TW, from_number: "+15005550006"}}
  - id: solo
    name: Solo
    api_keys: ["{hash_api_key("k2")}"]
    bluesky: {{handle: solo.test, app_password_env: SOLO_PW}}
    rss: {{title: t, link: "https://solo.example/", description: d}}
    routing: {{failback: skip}}
"""

T = datetime(2026, 11, 23, tzinfo=UTC)


@pytest.fixture
def brands():
    return parse_brands(BRANDS)


def test_a_brand_is_found_by_its_key_and_not_by_a_wrong_one(brands):
    assert brands.by_api_key("k1").id == "acme"
    assert brands.by_api_key("k3") is None


def test_the_pds_url_defaults_to_bsky_social_and_loses_its_trailing_slash(brands):
    assert brands.require("solo").bluesky.pds_url == "https://bsky.social"
    assert brands.require("acme").bluesky.pds_url == "http://127.0.0.1:1"


def test_a_plain_text_api_key_in_the_file_is_refused_with_the_field_named():
    bad = BRANDS.replace(KEY_HASH, "my-secret-key")
    with pytest.raises(BrandsFileError, match=r"brands\.0\.api_keys.*broadcaster keys new"):
        parse_brands(bad)


def test_an_unknown_field_is_refused():
    with pytest.raises(BrandsFileError, match="colour"):
        parse_brands(BRANDS.replace("name: Acme", "name: Acme\n    colour: red"))


def test_channels_are_what_the_brand_configured(brands):
    assert brands.require("acme").channels == ["bluesky", "mastodon", "telegram", "sms", "rss"]
    assert brands.require("solo").channels == ["bluesky", "rss"]


def test_a_post_starts_with_primary_and_always_on_channels(brands):
    assert routing.channels_at_queue(brands.require("acme"), None) == ["bluesky", "rss"]
    assert routing.channels_at_queue(brands.require("acme"), ["telegram"]) == ["telegram"]


def test_sms_is_a_failover_channel_only_at_or_above_the_priority_threshold(brands):
    acme = brands.require("acme")
    assert routing.failover_channels(acme, Priority.normal) == ["mastodon", "telegram"]
    assert routing.failover_channels(acme, Priority.high) == ["mastodon", "telegram", "sms"]


def _post(priority=Priority.normal):
    return Post(id="p_1", brand="acme", text="t", priority=priority, scheduled_at=T, created_at=T)


def test_when_bluesky_is_down_a_due_post_is_held_and_sent_to_the_failover_channels(brands):
    ds = {"bluesky": Delivery(channel="bluesky"), "rss": Delivery(channel="rss")}
    plan = routing.plan_dispatch(brands.require("acme"), _post(), ds, bluesky_down=True)
    assert plan["bluesky"].state == DeliveryState.held
    assert {c for c, r in plan.items() if r.state == DeliveryState.pending} == {"mastodon", "telegram"}


def test_failback_mode_skip_skips_bluesky_instead_of_holding(brands):
    ds = {"bluesky": Delivery(channel="bluesky"), "rss": Delivery(channel="rss")}
    plan = routing.plan_dispatch(brands.require("solo"), _post(), ds, bluesky_down=True)
    assert plan == {"bluesky": routing.Route(DeliveryState.skipped, "Bluesky is down")}


def test_when_bluesky_is_up_nothing_changes(brands):
    ds = {"bluesky": Delivery(channel="bluesky"), "rss": Delivery(channel="rss")}
    assert routing.plan_dispatch(brands.require("acme"), _post(), ds, bluesky_down=False) == {}
