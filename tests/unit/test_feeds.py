"""The brand feed: newest first, and one odd entry can never break it."""

from datetime import UTC, datetime

import feedparser

from broadcaster.core.brands import parse_brands
from broadcaster.core.feeds import build_feed, feed_etag
from tests.unit.test_brands_and_routing import BRANDS


def _entries():
    return [
        {
            "id": "p_2",
            "title": "second",
            "text": "second",
            "link": None,
            "published": datetime(2026, 1, 2, tzinfo=UTC).isoformat(),
        },
        {
            "id": "p_1",
            "title": "first\x1b",
            "text": "first \x07 bell",
            "link": "https://x.example/1",
            "published": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        },
    ]


def test_the_feed_lists_entries_newest_first_in_rss_and_atom():
    brand = parse_brands(BRANDS).require("acme")
    for fmt in ("rss", "atom"):
        feed = feedparser.parse(build_feed(brand, _entries(), "https://api.example", fmt))
        assert [e.id for e in feed.entries] == ["urn:broadcaster:acme:p_2", "urn:broadcaster:acme:p_1"]


def test_control_characters_in_an_old_entry_are_dropped_instead_of_breaking_the_feed():
    brand = parse_brands(BRANDS).require("acme")
    feed = feedparser.parse(build_feed(brand, _entries(), "https://api.example", "rss"))
    assert not feed.bozo
    assert feed.entries[1].title == "first"
    assert "bell" in feed.entries[1].description


def test_the_etag_changes_when_an_entry_is_added():
    entries = _entries()
    assert feed_etag("acme", entries, "rss") != feed_etag("acme", entries[1:], "rss")
    assert feed_etag("acme", entries, "rss") != feed_etag("acme", entries, "atom")
