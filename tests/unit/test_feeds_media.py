"""A feed entry's images: an enclosure (RSS: the first; Atom: each) and, per image, a Media
RSS media:content with the alt text as media:description, read back by a feed parser."""

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import feedparser

from broadcaster.core.brands import parse_brands
from broadcaster.core.feeds import MEDIA_NS, build_feed
from tests.unit.test_brands_and_routing import BRANDS

IMAGES = [
    {
        "id": "med_A",
        "alt": "A tray of croissants",
        "mime": "image/jpeg",
        "width": 1600,
        "height": 900,
        "size": 734211,
    },
    {
        "id": "med_B",
        "alt": "Cold brew <on tap> & more",
        "mime": "image/png",
        "width": 800,
        "height": 800,
        "size": 1234,
    },
]


def _entry(media):
    return {
        "id": "p_1",
        "title": "Spring menu",
        "text": "Spring menu",
        "link": None,
        "published": datetime(2026, 3, 1, tzinfo=UTC).isoformat(),
        **({"media": media} if media else {}),
    }


def _feed(fmt, media=IMAGES) -> bytes:
    return build_feed(parse_brands(BRANDS).require("acme"), [_entry(media)], "https://api.example/", fmt)


def test_each_image_is_a_media_content_with_its_alt_text_in_rss_and_atom():
    for fmt in ("rss", "atom"):
        root = ET.fromstring(_feed(fmt))  # noqa: S314 (our own feed)
        contents = root.findall(f".//{{{MEDIA_NS}}}content")
        assert [c.get("url") for c in contents] == [
            "https://api.example/media/med_A",
            "https://api.example/media/med_B",
        ], fmt
        assert [c.get("type") for c in contents] == ["image/jpeg", "image/png"]
        assert (contents[0].get("width"), contents[0].get("height"), contents[0].get("fileSize")) == (
            "1600",
            "900",
            "734211",
        )
        alts = [c.find(f"{{{MEDIA_NS}}}description").text for c in contents]
        assert alts == ["A tray of croissants", "Cold brew <on tap> & more"]


def test_rss_has_the_first_image_as_its_enclosure_and_atom_every_image():
    rss = feedparser.parse(_feed("rss")).entries[0]
    assert [(e.href, e.type, e.length) for e in rss.enclosures] == [
        ("https://api.example/media/med_A", "image/jpeg", "734211")
    ]
    atom = feedparser.parse(_feed("atom")).entries[0]
    assert sorted(e.href for e in atom.enclosures) == [
        "https://api.example/media/med_A",
        "https://api.example/media/med_B",
    ]
    assert 'alt="A tray of croissants"' in rss.description


def test_an_entry_without_images_has_no_media_elements():
    root = ET.fromstring(_feed("rss", media=None))  # noqa: S314 (our own feed)
    assert root.findall(f".//{{{MEDIA_NS}}}content") == []
    assert root.findall(".//enclosure") == []
