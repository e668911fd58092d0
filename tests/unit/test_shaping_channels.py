"""Per-channel shaping: Mastodon's counting, Telegram's escaping, SMS segments, and the queue-time check."""

from __future__ import annotations

import html

import pytest

from broadcaster.core import shaping
from broadcaster.core.brands import Brand, MastodonConfig, SmsConfig

KEY = "sha256:" + "0" * 64


def brand(**channels) -> Brand:
    return Brand(
        id="acme",
        name="Acme",
        api_keys=[KEY],
        bluesky={"handle": "acme.test", "app_password_env": "X"},
        rss={"title": "t", "link": "https://acme.example/", "description": "d"},
        **channels,
    )


# ---- Mastodon ------------------------------------------------------------------------------------
def test_mastodon_counts_every_url_as_23_characters():
    long_url = "https://shop.example/" + "x" * 200
    assert shaping.mastodon_length(f"Sale {long_url}") == len("Sale ") + 23
    assert shaping.mastodon_length("http://a.io") == 23


def test_mastodon_counts_the_content_warning_too():
    assert shaping.mastodon_length("Hello", "Spoiler") == 5 + 7


def test_mastodon_counts_a_remote_mention_by_its_local_part():
    assert shaping.mastodon_length("hi @anna@example.social") == len("hi @anna")


def test_mastodon_rejects_what_exceeds_the_brands_limit_with_the_cw():
    cfg = MastodonConfig(
        instance_url="https://m.example", access_token_env="T", spoiler_text="CW!", max_characters=100
    )
    b = brand(mastodon=cfg)
    assert shaping.validate_for_channel("mastodon", "a" * 97, None, b) is None
    problem = shaping.validate_for_channel("mastodon", "a" * 98, None, b)
    assert problem is not None
    assert "101 characters" in problem
    assert "limit is 100" in problem


def test_mastodon_does_not_count_a_long_link_against_the_limit_beyond_23():
    cfg = MastodonConfig(instance_url="https://m.example", access_token_env="T", max_characters=50)
    problem = shaping.validate_for_channel(
        "mastodon", "a" * 26, "https://x.example/" + "p" * 300, brand(mastodon=cfg)
    )
    assert problem is None  # 26 + newline + 23


def test_mastodon_uses_500_when_no_brand_is_given():
    assert shaping.validate_for_channel("mastodon", "a" * 500, None) is None
    assert shaping.validate_for_channel("mastodon", "a" * 501, None) is not None


# ---- Telegram ------------------------------------------------------------------------------------
def test_telegram_html_escapes_what_telegram_would_parse():
    out = shaping.telegram_html("1 < 2 & *not bold* <b>x</b>", None)
    assert out == "1 &lt; 2 &amp; *not bold* &lt;b&gt;x&lt;/b&gt;"
    assert html.unescape(out) == "1 < 2 & *not bold* <b>x</b>"


def test_telegram_html_adds_the_link_as_an_anchor_with_its_query_escaped():
    out = shaping.telegram_html("Sale", 'https://x.example/?a=1&b="2"')
    assert (
        out
        == 'Sale\n<a href="https://x.example/?a=1&amp;b=&quot;2&quot;">https://x.example/?a=1&amp;b="2"</a>'
    )


def test_telegram_html_does_not_repeat_a_link_already_in_the_text():
    assert (
        shaping.telegram_html("See https://x.example/s", "https://x.example/s") == "See https://x.example/s"
    )


def test_telegram_counts_utf16_units_and_allows_4096():
    assert shaping.telegram_length("😀", None) == 2
    assert shaping.validate_for_channel("telegram", "a" * 4096, None) is None
    problem = shaping.validate_for_channel("telegram", "a" * 4000, "https://x.example/" + "p" * 100)
    assert problem is not None
    assert "Telegram allows 4096" in problem


# ---- SMS -----------------------------------------------------------------------------------------
def test_sms_gsm7_fits_160_in_one_segment_and_153_per_segment_after():
    assert shaping.sms_encoding("a" * 160) == "GSM-7"
    assert shaping.sms_segments("a" * 160) == 1
    assert shaping.sms_segments("a" * 161) == 2
    assert shaping.sms_segments("a" * 306) == 2
    assert shaping.sms_segments("a" * 307) == 3


def test_sms_gsm7_extension_characters_count_twice():
    assert shaping.sms_segments("€" * 80) == 1
    assert shaping.sms_segments("€" * 81) == 2
    assert shaping.sms_segments("[]" * 40 + "a") == 2


def test_sms_one_character_outside_gsm7_makes_the_whole_message_ucs2():
    text = "a" * 69 + "😀"  # the emoji is two UTF-16 units
    assert shaping.sms_encoding(text) == "UCS-2"
    assert shaping.sms_segments("a" * 70 + "ł") == 2  # 71 units > 70
    assert shaping.sms_segments("ł" * 70) == 1
    assert shaping.sms_segments("ł" * 134) == 2  # 67 per segment
    assert shaping.sms_segments("ł" * 135) == 3


def test_sms_replaces_look_alikes_that_would_force_ucs2():
    body = shaping.sms_text("It\u2019s \u201con\u201d\xa0today \u2013 come\u2026", None)
    assert body == 'It\'s "on" today - come...'
    assert shaping.sms_encoding(body) == "GSM-7"


@pytest.mark.parametrize(
    "text",
    [
        "Hot \u2014 fresh \U0001f525 today",
        "Za\u017c\u00f3\u0142\u0107 \u2013 \u201cg\u0119\u015bl\u0105\u201d\u2026",
    ],
)
def test_sms_keeps_look_alikes_as_written_when_the_message_is_ucs2_anyway(text):
    body = shaping.sms_text(text, "https://x.example/s")
    assert body == text + "\nhttps://x.example/s"
    assert shaping.sms_encoding(body) == "UCS-2"


def test_sms_keeps_the_link_whole():
    assert shaping.sms_text("Sale", "https://x.example/s") == "Sale\nhttps://x.example/s"


def test_sms_rejects_more_segments_than_the_brand_allows_naming_the_encoding():
    b = brand(
        sms=SmsConfig(account_sid="AC1", auth_token_env="T", from_number="+12015550100", max_segments=2)
    )
    assert shaping.validate_for_channel("sms", "a" * 306, None, b) is None
    problem = shaping.validate_for_channel("sms", "a" * 307, None, b)
    assert problem == (
        "needs 3 SMS segments (GSM-7, link included); the brand allows 2 "
        "(shorten it, or avoid characters outside GSM-7 such as emoji)"
    )
    assert "UCS-2" in (shaping.validate_for_channel("sms", "😀" * 70, None, b) or "")


def test_sms_rejects_bodies_over_twilios_1600_characters():
    b = brand(
        sms=SmsConfig(account_sid="AC1", auth_token_env="T", from_number="+12015550100", max_segments=10)
    )
    problem = shaping.validate_for_channel("sms", "a" * 1601, None, b)
    assert problem is not None
    assert "1600" in problem


def test_channels_without_limits_accept_anything():
    assert shaping.validate_for_channel("rss", "a" * 5000, None) is None
