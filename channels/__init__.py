"""Outbound channels, one module each, behind `channels.base.Channel`.

The registry is explicit: a channel name maps to the class that serves it.
"""

from __future__ import annotations

import functools
import importlib

from broadcaster.core.brands import Brand
from channels.base import Channel, ChannelContext

REGISTRY: dict[str, str] = {
    "bluesky": "channels.bluesky:BlueskyChannel",
    "rss": "channels.rss:RssChannel",
    "mastodon": "channels.mastodon:MastodonChannel",
    "telegram": "channels.telegram:TelegramChannel",
    "sms": "channels.sms:SmsChannel",
}


@functools.cache  # a lookup per delivery; the registry does not change while a process runs
def channel_class(name: str) -> type:
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_channel(name: str, brand: Brand, ctx: ChannelContext) -> Channel:
    """The channel `name` for `brand`; raises KeyError for an unknown name."""
    return channel_class(name)(brand, ctx)
