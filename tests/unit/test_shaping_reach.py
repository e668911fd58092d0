"""Queue-time checks for every channel a post may reach, each with its own text and real
limits: Bluesky in graphemes and bytes, variants per channel, SMS with image links, and the
failover channels a reroute adds even when `channels` was given."""

from __future__ import annotations

from broadcaster.core import routing, shaping
from broadcaster.core.brands import Brand, Priority

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # one grapheme, 7 code points, 25 bytes


def _brand(**routing_policy) -> Brand:
    return Brand.model_validate(
        {
            "id": "acme",
            "name": "Acme",
            "api_keys": ["sha256:" + "0" * 64],
            "bluesky": {"handle": "acme.test", "app_password_env": "X"},
            "rss": {"title": "t", "link": "https://acme.example/", "description": "d"},
            "mastodon": {"instance_url": "https://m.example", "access_token_env": "Y"},
            "telegram": {"bot_token_env": "T", "chat_ids": ["@acme"]},
            "sms": {"account_sid": "AC" + "1" * 32, "auth_token_env": "Z", "from_number": "+15550000000"},
            "routing": {"failover": ["mastodon", "telegram", "sms"], **routing_policy},
        }
    )


def test_bluesky_counts_bytes_as_well_as_graphemes():
    marks = "e" + "\u0301" * 3200  # one grapheme, 6,401 bytes: past the client library's 3,000 too
    problem = shaping.validate_for_channel("bluesky", marks, None)
    assert problem is not None
    assert "6401 bytes" in problem
    assert "3000 bytes" in problem
    problem = shaping.validate_for_channel("bluesky", FAMILY * 150, None)  # 150 graphemes, 3,750 bytes
    assert problem is not None
    assert "3750 bytes" in problem
    assert shaping.validate_for_channel("bluesky", FAMILY * 120, None) is None  # 3,000 bytes exactly


def test_a_post_to_bluesky_may_reach_the_failover_channels_even_when_channels_is_given():
    brand = _brand()
    assert routing.reachable_channels(brand, ["bluesky"], Priority.urgent) == [
        "bluesky",
        "mastodon",
        "telegram",
        "sms",
        "rss",
    ]
    # SMS only at or above the brand's SMS priority; a post not to Bluesky is never rerouted.
    assert "sms" not in routing.reachable_channels(brand, ["bluesky"], Priority.normal)
    assert routing.reachable_channels(brand, ["mastodon"], Priority.urgent) == ["mastodon"]


def test_each_channel_is_checked_with_its_own_variant():
    text = "Our spring menu is here, with pistachio croissants \U0001f950 " + "x" * 240  # UCS-2: 5 SMS
    channels = ["bluesky", "sms"]
    found = shaping.validate_for_channels(channels, text, None, _brand())
    assert found is not None
    assert found[0] == "sms"
    assert "5 SMS segments" in found[1]
    variants = {"sms": "Spring menu is here! acme.example/menu"}
    assert shaping.validate_for_channels(channels, text, None, _brand(), variants=variants) is None
    too_long = {"sms": "y" * 600}
    assert shaping.validate_for_channels(channels, "short", None, _brand(), variants=too_long)[0] == "sms"


def test_an_sms_without_mms_counts_the_image_links_it_carries():
    text = "a" * 400  # three GSM-7 segments alone (the brand allows three)
    links = ["https://broadcaster.example/media/med_" + "A" * 26] * 2
    assert shaping.validate_for_channel("sms", text, None, _brand()) is None
    problem = shaping.validate_for_channel("sms", text, None, _brand(), image_links=links)
    assert problem is not None
    assert "image links included" in problem
    assert shaping.sms_text("hi", None, links) == "hi\n" + "\n".join(links)


def test_telegram_takes_a_caption_up_to_1024_and_a_longer_text_as_its_own_message():
    assert shaping.telegram_caption("a" * 1024, None)
    assert not shaping.telegram_caption("a" * 1025, None)
    # Not a refusal: with images, a long text goes as a separate message, within 4096.
    assert shaping.validate_for_channel("telegram", "a" * 4000, None) is None
