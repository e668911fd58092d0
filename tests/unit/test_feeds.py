"""The brand feed: newest first, and one odd entry can never break it."""

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from html.parser import HTMLParser

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


class _Rendered(HTMLParser):
    """What a reader shows of an HTML fragment: its tags and its text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text = ""
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text += data


def test_the_rss_description_shows_a_posts_markup_as_text_not_html():
    brand = parse_brands(BRANDS).require("acme")
    text = 'Use <b>bold</b> & <a href="https://evil.example/">click</a>'
    entry = {
        "id": "p_3",
        "title": "markup",
        "text": text,
        "link": None,
        "published": "2026-01-03T00:00:00+00:00",
    }
    xml = build_feed(brand, [entry], "https://api.example", "rss")
    html = ET.fromstring(xml).findtext("channel/item/description")  # noqa: S314 (our own feed)
    assert html is not None
    shown = _Rendered(html)
    assert shown.tags == []
    assert shown.text == text
    assert feedparser.parse(xml).entries[0].description == html  # feedparser agrees: escaped HTML


def test_the_rss_description_links_the_posts_link_as_the_content_does():
    brand = parse_brands(BRANDS).require("acme")
    entry = {
        "id": "p_4",
        "title": "link",
        "text": "read <this>",
        "link": "https://x.example/4",
        "published": "2026-01-04T00:00:00+00:00",
    }
    feed = build_feed(brand, [entry], "https://api.example", "rss")
    item = ET.fromstring(feed).find("channel/item")  # noqa: S314 (our own feed)
    assert item is not None
    shown = _Rendered(item.findtext("description") or "")
    assert shown.tags == ["br", "a"]
    assert shown.text == "read <this>https://x.example/4"
    encoded = item.findtext("{http://purl.org/rss/1.0/modules/content/}encoded")
    assert item.findtext("description") == encoded
