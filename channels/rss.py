"""RSS/Atom: the brand's own always-on channel, stored in Redis and served by the API.

No remote service: a delivery adds an entry (id = post id, so a replay adds nothing)
to the brand's capped list; `GET /feeds/<brand>.rss|.atom` builds the feed with feedgen.
A post's images go with the entry: an enclosure and `media:content` with the alt text as
`media:description` each, pointing at `GET /media/{id}` (`broadcaster.core.feeds`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from broadcaster.core import shaping
from broadcaster.core.brands import Brand
from broadcaster.ledger.store import Store
from channels.base import ChannelContext, Outbound, Receipt


class RssChannel:
    name: ClassVar[str] = "rss"
    idempotent: ClassVar[bool] = True
    resend_horizon_s: float | None = None

    def __init__(self, brand: Brand, ctx: ChannelContext):
        self.brand = brand
        self.ctx = ctx
        self.store = ctx.store or Store(ctx.redis, ctx.settings)

    def feed_url(self) -> str:
        return f"{self.ctx.settings.public_base_url.rstrip('/')}/feeds/{self.brand.id}.rss"

    def send(self, message: Outbound) -> Receipt:
        entry: dict[str, Any] = {
            "title": shaping.rss_title(message.text),
            "text": message.text,
            "link": message.link,
            "kind": message.kind,
            "published": datetime.now(UTC).isoformat(),
        }
        if message.media:  # ids, not URLs: the feed builds them from the public base URL it serves
            entry["media"] = [m.model_dump() for m in message.media]
        self.store.add_rss_entry(
            self.brand.id, message.post_id, entry, keep=self.ctx.settings.rss_max_entries
        )
        return Receipt(remote_id=message.post_id, url=f"{self.feed_url()}#{message.post_id}")

    def check(self) -> str:
        self.ctx.redis.ping()
        return f"feed at {self.feed_url()}"
