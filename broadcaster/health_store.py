"""Bluesky health as every process sees it, kept in Redis (the watcher writes it)."""

from __future__ import annotations

import redis

from broadcaster.settings import Settings


def is_down(r: redis.Redis, settings: Settings, target: str) -> bool:
    """True when routing must treat the target as down (its state, or an operator's override)."""
    return r.hget(settings.key("health", target), "effective") == "down"
