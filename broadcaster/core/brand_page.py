"""What a brand's public page (`/b/<brand>`) says, in plain words. Pure: no I/O, no HTML.

A follower who cannot reach the brand on Bluesky lands here (the outage notices link to it):
the page says whether Bluesky works for the brand now and since when, and where to read the
brand meanwhile. `broadcaster.api.routes.pages` loads the health and the posts and renders it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from broadcaster.core.brands import Brand
from broadcaster.core.health import State
from broadcaster.core.models import Delivery, Post

PAGE_PATH = "/b/{brand}"


def page_url(public_base_url: str, brand_id: str) -> str:
    return public_base_url.rstrip("/") + PAGE_PATH.format(brand=brand_id)


@dataclass(frozen=True)
class Link:
    label: str  # the channel, e.g. "Mastodon"
    text: str  # what the link reads, e.g. "@acme@mastodon.social"
    href: str


@dataclass(frozen=True)
class Status:
    working: bool  # False while Bluesky is down for the brand (posts go elsewhere)
    headline: str
    detail: str
    since: float  # epoch seconds; 0: no change seen yet


def status(brand: Brand, effective: State, since: float) -> Status:
    """Whether Bluesky works for the brand now, as a follower would want it said."""
    name = brand.name
    if effective == State.down:
        later = (
            "They will reach Bluesky too once it is back."
            if brand.routing.failback == "backfill"
            else "Posts made meanwhile stay on the channels below."
        )
        return Status(
            False,
            "Bluesky is having trouble",
            f"{name}'s posts are not reaching Bluesky right now. Read them on the channels below. {later}",
            since,
        )
    if effective == State.degraded:
        return Status(
            True,
            "Bluesky is working, with hiccups",
            f"Some requests to Bluesky fail; {name}'s posts still go there, and to the channels below.",
            since,
        )
    return Status(True, "Bluesky is working", f"{name}'s posts are reaching Bluesky as usual.", since)


def where_to_find(brand: Brand, feed_path: str) -> list[Link]:
    """Links to every place the brand also posts; `feed_path` is the brand's RSS feed (relative)."""
    page = brand.page
    links: list[Link] = []
    mastodon = page.mastodon_url or (brand.mastodon.instance_url if brand.mastodon else None)
    if mastodon:
        links.append(Link("Mastodon", _short(mastodon), mastodon))
    telegram = page.telegram_url or _telegram_channel(brand)
    if telegram:
        links.append(Link("Telegram", _short(telegram), telegram))
    atom = feed_path.removesuffix(".rss") + ".atom"
    links.append(Link("RSS feed", feed_path.lstrip("/"), feed_path))
    links.append(Link("Atom feed", atom.lstrip("/"), atom))
    number = page.sms_number or (brand.sms.from_number if brand.sms else None)
    if page.sms_keyword and number:
        links.append(Link("SMS", f"Text {page.sms_keyword} to {number}", f"sms:{number}"))
    if page.website:
        links.append(Link("Website", _short(page.website), page.website))
    return links


def _telegram_channel(brand: Brand) -> str | None:
    if brand.telegram is None:
        return None
    for ref in brand.telegram.chat_ids:
        if isinstance(ref, str) and ref.startswith("@"):
            return f"https://t.me/{ref[1:]}"
    return None


def _short(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def when(epoch: float) -> str:
    """A time a person reads at a glance: "3 Dec 2026, 14:05 UTC"."""
    t = datetime.fromtimestamp(epoch, UTC)
    return f"{t.day} {t:%b %Y, %H:%M} UTC"


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def published_at(post: Post, deliveries: dict[str, Delivery]) -> float | None:
    """When a post first reached its audience on any channel (None: a notice, or not out yet).

    Notices are left out: the status at the top of the page says the same, and better."""
    if post.kind != "post" or post.canceled_at is not None:
        return None
    times = [d.delivered_at.timestamp() for d in deliveries.values() if d.delivered_at is not None]
    return min(times) if times else None
