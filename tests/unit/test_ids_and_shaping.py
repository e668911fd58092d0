"""Post ids sort by time; the Bluesky record key is a valid TID derived from the post."""

import re

from broadcaster.core import shaping
from broadcaster.core.ids import new_post_id, tid_for

TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")


def test_post_ids_sort_by_creation_time():
    a, b = new_post_id(1_000), new_post_id(2_000)
    assert a < b
    assert a.startswith("p_")
    assert len(a) == 28


def test_the_bluesky_record_key_is_a_valid_tid_and_the_same_for_the_same_post():
    k1 = tid_for("p_ABC", 1_763_900_000_000_000)
    assert TID.match(k1)
    assert k1 == tid_for("p_ABC", 1_763_900_000_000_000)
    assert k1 != tid_for("p_ABD", 1_763_900_000_000_000)
    assert k1 != tid_for("p_ABC", 1_763_900_000_000_000, salt="2")


def test_graphemes_count_what_a_reader_sees():
    assert shaping.graphemes("é") == 1
    assert shaping.graphemes("e\u0301") == 1  # e + combining accent
    assert shaping.graphemes("👩‍👩‍👧") == 1
    assert shaping.graphemes("🇫🇷") == 1


def test_the_link_is_appended_once():
    assert shaping.with_link("Sale", "https://x.example/s") == "Sale\nhttps://x.example/s"
    assert shaping.with_link("Sale https://x.example/s", "https://x.example/s") == "Sale https://x.example/s"


def test_bluesky_rejects_more_than_300_graphemes_including_the_link():
    assert shaping.validate_for_channel("bluesky", "a" * 300, None, {}) is None
    problem = shaping.validate_for_channel("bluesky", "a" * 290, "https://example.com/x", {})
    assert problem is not None
    assert "312 graphemes" in problem


def test_rss_titles_are_the_first_line_shortened():
    assert shaping.rss_title("Hello\nworld") == "Hello"
    title = shaping.rss_title("x" * 200)
    assert title.endswith("…")
    assert shaping.graphemes(title) == shaping.RSS_TITLE_CHARS
