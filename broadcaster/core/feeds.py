"""Build a brand's RSS 2.0 / Atom feed with feedgen from its stored entries (newest first).

An entry's images (`media`: id, alt, mime, width, height, size) become, each, a Media RSS
`<media:content>` with the alt text as `<media:description>` (feedgen's own media extension
has no description, hence `_MediaEntry`), an `<img alt>` in the HTML body, and an enclosure:
every image in Atom (`link rel="enclosure"`), the first in RSS (RSS 2.0 readers take one).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from html import escape
from typing import Any, Literal

from feedgen.ext.base import BaseEntryExtension, BaseExtension
from feedgen.feed import FeedGenerator
from feedgen.util import xml_elem

from broadcaster.core.brands import Brand

Format = Literal["rss", "atom"]
MEDIA_NS = "http://search.yahoo.com/mrss/"

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


class _Media(BaseExtension):  # feedgen is untyped: its classes are Any
    def extend_ns(self) -> dict[str, str]:
        return {"media": MEDIA_NS}


class _MediaEntry(BaseEntryExtension):
    """`<media:content>` per image, with its alt text as `<media:description>`."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def extend_rss(self, item: Any) -> Any:
        self._contents(item)
        return item

    def extend_atom(self, entry: Any) -> Any:
        # Atom takes an enclosure link per image. Written here: feedgen 1.0's Atom output drops
        # a link's rel, type and length (it shadows the link with its element), so its own
        # enclosure() would come out as a plain alternate link.
        for image in self.items:
            xml_elem(
                "link",
                entry,
                href=image["url"],
                rel="enclosure",
                type=image["type"],
                length=image["fileSize"],
            )
        self._contents(entry)
        return entry

    def _contents(self, parent: Any) -> None:
        for image in self.items:
            content = xml_elem(f"{{{MEDIA_NS}}}content", parent)
            for attr in ("url", "type", "medium", "width", "height", "fileSize"):
                content.set(attr, image[attr])
            if image["alt"]:
                description = xml_elem(f"{{{MEDIA_NS}}}description", content)
                description.set("type", "plain")
                description.text = image["alt"]


def _images(fe: Any, images: list[dict[str, Any]], base: str, fmt: Format) -> str:
    """Attach the entry's images (see the module docstring); the HTML to append to its body."""
    items = [
        {
            "url": f"{base}/media/{m['id']}",
            "type": m["mime"],
            "medium": "image",
            "width": str(m["width"]),
            "height": str(m["height"]),
            "fileSize": str(m["size"]),
            "alt": _clean(m.get("alt") or ""),
        }
        for m in images
    ]
    fe.media.items = items
    if fmt == "rss" and items:  # RSS 2.0 readers take one enclosure: the first image
        fe.enclosure(items[0]["url"], items[0]["fileSize"], items[0]["type"])
    return "".join(f'<br/><img src="{escape(i["url"])}" alt="{escape(i["alt"])}"/>' for i in items)


def build_feed(brand: Brand, entries: list[dict[str, Any]], base_url: str, fmt: Format) -> bytes:
    """`entries` newest first, as `Store.rss_entries` returns them."""
    base = base_url.rstrip("/")
    fg = FeedGenerator()
    fg.register_extension("media", _Media, _MediaEntry)
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
        if e.get("media"):
            body += _images(fe, e["media"], base, fmt)
        fe.description(body)  # RSS readers render <description> as HTML: the post's text must be escaped
        fe.content(body, type="html")
        published = datetime.fromisoformat(e["published"])
        fe.published(published)
        fe.updated(published)
    feed: bytes = fg.rss_str(pretty=True) if fmt == "rss" else fg.atom_str(pretty=True)  # feedgen is untyped
    return feed
