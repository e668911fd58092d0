"""A link card for a post's link: the page's Open Graph title, description and image.

Built for Bluesky's `app.bsky.embed.external` (Bluesky shows no preview of its own: the
poster's client makes the card). The page is a URL a brand gave, so it is fetched like a
webhook is sent: through the address-checked client (`broadcaster.ledger.safe_http`: no
private addresses unless `link_card_allow_private`, no redirects, no proxies), reading at
most `link_card_max_bytes`. Page and image share one wall-clock budget,
`link_card_timeout_s`, so a slow site never holds the post longer than that.

A card is a nicety: anything that goes wrong raises `CardUnavailable` with the reason, and
the caller sends the post without a card, recording why.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

from broadcaster.core import images
from broadcaster.core.settings import Settings
from broadcaster.ledger import safe_http

THUMB_MAX_BYTES = 1_000_000  # app.bsky.embed.external#external thumb: maxSize
THUMB_FETCH_CAP = 5_000_000  # read at most this much of the image (then made to fit)
TITLE_MAX = 300
DESCRIPTION_MAX = 1000


_clients: dict[tuple[float, bool], httpx.Client] = {}
_clients_lock = threading.Lock()


def _client(settings: Settings) -> httpx.Client:
    """One address-checked client per process and setting (making one loads the CA bundle:
    a few hundred milliseconds, not to be spent inside a card's time budget)."""
    key = (settings.link_card_timeout_s, settings.link_card_allow_private)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = safe_http.client(*key)
        return _clients[key]


class CardUnavailable(Exception):
    """The card cannot be built; the message says why (for the delivery record)."""


@dataclass(frozen=True)
class Card:
    url: str
    title: str
    description: str
    image: bytes | None = None  # a JPEG/PNG/WebP/GIF of at most THUMB_MAX_BYTES
    image_problem: str | None = None  # why a page's og:image was left out


class _OpenGraph(HTMLParser):
    """The `og:*` meta tags (and `<title>` / description as fallbacks) of a page's head."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.og: dict[str, str] = {}
        self.title = ""
        self.description = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "meta":
            key = (a.get("property") or a.get("name") or "").lower()
            if key.startswith("og:") and key not in self.og:
                self.og[key] = a.get("content", "").strip()
            elif key == "description" and not self.description:
                self.description = a.get("content", "").strip()
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CardUnavailable("the link card took too long")
        return left


def _fetch(c: httpx.Client, url: str, budget: _Budget, cap: int, what: str) -> safe_http.Answer:
    try:
        # identity: the answer is read raw (capped as sent), so a compressed page would be unreadable
        answer = safe_http.get(c, url, budget.left(), cap, {"Accept-Encoding": "identity"})
    except safe_http.AddressRefused as e:
        raise CardUnavailable(f"the {what} {url} {e}") from None
    except httpx.TimeoutException:
        raise CardUnavailable(f"the {what} {url} did not answer in time") from None
    except httpx.HTTPError as e:
        raise CardUnavailable(f"the {what} {url} could not be fetched ({type(e).__name__})") from None
    if answer.status != 200:
        raise CardUnavailable(f"the {what} {url} answered {answer.status}")
    return answer


def _fit(data: bytes) -> bytes:
    """The image as Bluesky takes a thumbnail: at most 1,000,000 bytes, made smaller the way an
    upload is (`core.images.fit`: re-encoded, then scaled down keeping its aspect ratio)."""
    try:
        return images.fit(data, THUMB_MAX_BYTES)[0]
    except images.ImageRejected as e:
        raise CardUnavailable(f"the page's image {e}") from None


def build_card(url: str, settings: Settings) -> Card:
    """The card for `url`, within `link_card_timeout_s`; raises CardUnavailable saying why."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise CardUnavailable(f"the link {url} is not an http(s) address")
    c = _client(settings)
    budget = _Budget(settings.link_card_timeout_s)
    page = _fetch(c, url, budget, settings.link_card_max_bytes, "page")
    ctype = page.headers.get("content-type", "")
    if "html" not in ctype.lower():
        raise CardUnavailable(f"the page {url} is not HTML ({ctype or 'no content type'})")
    parser = _OpenGraph()
    charset = re.search(r"charset=\"?([\w.:-]+)", ctype, re.IGNORECASE)
    try:
        html = page.body.decode(charset.group(1) if charset else "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        html = page.body.decode("utf-8", "replace")
    parser.feed(html)
    title = _short(parser.og.get("og:title") or parser.title, TITLE_MAX)
    description = _short(parser.og.get("og:description") or parser.description, DESCRIPTION_MAX)
    if not title:
        raise CardUnavailable(f"the page {url} has no title (og:title or <title>)")
    image_url = parser.og.get("og:image") or parser.og.get("og:image:url")
    if not image_url:
        return Card(url, title, description)
    try:
        answer = _fetch(c, urljoin(url, image_url), budget, THUMB_FETCH_CAP, "image")
        if answer.truncated:
            raise CardUnavailable("the page's image is over 5,000,000 bytes")
        return Card(url, title, description, image=_fit(answer.body))
    except CardUnavailable as e:  # the card still goes, without its picture
        return Card(url, title, description, image_problem=str(e))
