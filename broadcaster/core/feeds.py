"""Build a brand's RSS 2.0 / Atom feed with feedgen from its stored entries (newest first)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from html import escape
from typing import Any, Literal

from feedgen.feed import FeedGenerator

from broadcaster.core.brands import Brand

Format = Literal["rss", "atom"]

# XML 1.0 has no way to write these, so feedgen refuses them (and one bad entry would break the feed).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_safe(char: str) -> bool:
    return _XML_INVALID.match(char) is None


def _clean(text: str) -> str:
    return _XML_INVALID.sub("", text)


def feed_etag(brand_id: str, entries: list[dict[str, Any]], fmt: Format) -> str:
    h = hashlib.sha256(f"{brand_id}|{fmt}".encode())
    for e in entries:
        h.update(f"|{e['id']}|{e['published']}".encode())
    return f'"{h.hexdigest()[:32]}"'


def last_modified(entries: list[dict[str, Any]]) -> datetime:
    if not entries:
        return datetime(2000, 1, 1, tzinfo=UTC)
    return max(datetime.fromisoformat(e["published"]) for e in entries).replace(microsecond=0)


def build_feed(brand: Brand, entries: list[dict[str, Any]], base_url: str, fmt: Format) -> bytes:
    """`entries` newest first, as `Store.rss_entries` returns them."""
    base = base_url.rstrip("/")
    fg = FeedGenerator()
    fg.id(f"{base}/feeds/{brand.id}")
    fg.title(brand.rss.title)
    fg.link(href=f"{base}/feeds/{brand.id}.{fmt}", rel="self")
    fg.link(href=brand.rss.link, rel="alternate")  # the last link added is RSS <link>
    fg.description(brand.rss.description)
    fg.language(brand.rss.language)
    fg.updated(last_modified(entries))
    for e in reversed(entries):  # feedgen prepends: add oldest first to emit newest first
        fe = fg.add_entry()
        fe.id(f"urn:broadcaster:{brand.id}:{e['id']}")
        fe.guid(f"urn:broadcaster:{brand.id}:{e['id']}", permalink=False)
        fe.title(_clean(e["title"]) or brand.name)
        fe.link(href=e.get("link") or brand.rss.link)
        text = _clean(e["text"])
        body = escape(text).replace("\n", "<br/>")
        if e.get("link"):
            body += f'<br/><a href="{escape(e["link"])}">{escape(e["link"])}</a>'
        fe.description(body)  # RSS readers render <description> as HTML: the post's text must be escaped
        fe.content(body, type="html")
        published = datetime.fromisoformat(e["published"])
        fe.published(published)
        fe.updated(published)
    feed: bytes = fg.rss_str(pretty=True) if fmt == "rss" else fg.atom_str(pretty=True)  # feedgen is untyped
    return feed
