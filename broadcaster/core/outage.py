"""What a brand says and does around a Bluesky outage: notices, mirrors, their channels. Pure.

`workers.failover` applies these when a target goes down or comes back.
"""

from __future__ import annotations

from urllib.parse import urlparse

from broadcaster.core import routing
from broadcaster.core.brands import Brand, Priority
from broadcaster.core.models import Delivery, DeliveryState, Post

OUTAGE, RECOVERY = "outage", "recovery"

_LABELS = {"mastodon": "Mastodon", "telegram": "Telegram", "sms": "SMS", "rss": "RSS"}


def notice_channels(brand: Brand) -> list[str]:
    """Where a notice goes: the failover channels a normal post would reach, and the always-on ones."""
    wanted = [*routing.failover_channels(brand, Priority.normal), *brand.routing.always_on]
    return [c for c in dict.fromkeys(wanted) if c != "bluesky" and c in brand.channels]


def channel_label(brand: Brand, channel: str, feed_url: str) -> str:
    """How the audience finds the brand on a channel, in a few words."""
    if channel == "mastodon" and brand.mastodon is not None:
        return f"Mastodon ({urlparse(brand.mastodon.instance_url).netloc})"
    if channel == "rss":
        return f"RSS ({feed_url})"
    return _LABELS.get(channel, channel)


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def render(template: str, brand_name: str, channels_text: str, page_url: str = "") -> str:
    """Fill `{brand}`, `{channels}` and `{page}`; other braces stay as written (no str.format surprises)."""
    filled = template.replace("{brand}", brand_name).replace("{channels}", channels_text)
    return filled.replace("{page}", page_url).strip()


def notice_text(brand: Brand, kind: str, feed_url: str, page_url: str | None = None) -> str | None:
    """The brand's outage or recovery notice, or None when it has none configured.

    With `page_url` (the brand's public page) the notice links to it: where the template says
    `{page}`, else at its end, so a follower always finds where the brand is right now."""
    template = brand.routing.outage_notice if kind == OUTAGE else brand.routing.recovery_notice
    if not template or not template.strip():
        return None
    labels = [channel_label(brand, c, feed_url) for c in notice_channels(brand)]
    text = render(template, brand.name, join_words(labels) or "our other channels", page_url or "")
    if page_url and "{page}" not in template:
        text = f"{text} Updates: {page_url}"
    return text


def notice_key(target: str, outage: int, kind: str) -> str:
    """The idempotency key that makes a notice exist once per outage (and per brand)."""
    return f"bluesky-{kind}-notice:{target}:{outage}"


def mirror_routes(
    brand: Brand, post: Post, deliveries: dict[str, Delivery], reason: str
) -> dict[str, routing.Route]:
    """A post Bluesky took just before an outage: add the failover channels it has not reached."""
    bsky = deliveries.get("bluesky")
    if bsky is None or bsky.state != DeliveryState.delivered or post.kind != "post":
        return {}
    return {
        ch: routing.Route(DeliveryState.pending, f"mirrored: {reason}")
        for ch in routing.failover_channels(brand, post.priority)
        if ch not in deliveries and ch != "bluesky"
    }


def lookback_start(brand: Brand, onset: float, down_since: float, margin_s: float) -> float:
    """From when posts Bluesky took are mirrored at a trip: the outage's onset (its first failed
    signal) less `margin_s` (the outage began somewhere after the last good signal), never more
    than the brand's look-back minutes. No onset (an operator declared the outage): those minutes.
    A post Bluesky took while every signal was healthy is not mirrored."""
    cap = down_since - brand.routing.lookback_minutes * 60
    return cap if onset <= 0 else max(cap, min(onset, down_since) - margin_s)
