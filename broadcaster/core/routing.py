"""Routing policy: which channels a post goes to, given the brand's policy and Bluesky's health.

Pure functions over brands and ledger records; the dispatcher applies what they decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from broadcaster.core.brands import Brand, Priority
from broadcaster.core.models import Delivery, DeliveryState, Post


@dataclass(frozen=True)
class Route:
    state: DeliveryState
    reason: str | None = None


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def channels_at_queue(brand: Brand, requested: Sequence[str] | None) -> list[str]:
    """The deliveries a post starts with: what was asked for, else primary + always-on."""
    if requested:
        return _unique(requested)
    policy = brand.routing
    return [c for c in _unique([*policy.primary, *policy.always_on]) if c in brand.channels]


def reachable_channels(brand: Brand, requested: Sequence[str] | None, priority: int) -> list[str]:
    """Every channel a post may reach: those it starts with and, when one is Bluesky, the
    failover and always-on channels a reroute (`reroute`) or the look-back mirror would add,
    also when `channels` was given. A queue-time check must hold for all of them."""
    start = channels_at_queue(brand, requested)
    if "bluesky" not in start:
        return start
    added = [*failover_channels(brand, priority), *brand.routing.always_on]
    return _unique([*start, *(c for c in added if c in brand.channels)])


def unknown_channels(brand: Brand, requested: Iterable[str]) -> list[str]:
    return [c for c in requested if c not in brand.channels]


def failover_channels(brand: Brand, priority: int) -> list[str]:
    """The brand's failover channels for a post of this priority (SMS costs money per recipient)."""
    sms_floor = Priority[brand.routing.sms_min_priority]
    return [
        c
        for c in _unique(brand.routing.failover)
        if c in brand.channels and (c != "sms" or priority >= sms_floor)
    ]


def reroute(brand: Brand, post: Post, deliveries: dict[str, Delivery], reason: str) -> dict[str, Route]:
    """Bluesky cannot take this post: hold (or skip) it there, send it to the failover channels."""
    changes: dict[str, Route] = {}
    bsky = deliveries.get("bluesky")
    if bsky is not None and bsky.state in (DeliveryState.pending, DeliveryState.sending):
        held = brand.routing.failback == "backfill"
        changes["bluesky"] = Route(DeliveryState.held if held else DeliveryState.skipped, reason)
    targets = [*failover_channels(brand, post.priority), *brand.routing.always_on]
    for ch in _unique(targets):
        if ch in brand.channels and ch not in deliveries:
            changes[ch] = Route(DeliveryState.pending, f"rerouted: {reason}")
    return changes


def plan_dispatch(
    brand: Brand, post: Post, deliveries: dict[str, Delivery], bluesky_down: bool
) -> dict[str, Route]:
    """Changes to make when a due post is handed to the workers."""
    if bluesky_down and "bluesky" in deliveries:
        return reroute(brand, post, deliveries, "Bluesky is down")
    return {}
