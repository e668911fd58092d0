"""The HTTP client webhook sends use: one per process, never shared across a fork."""

from __future__ import annotations

import functools

import httpx

from broadcaster.ledger import safe_http


@functools.lru_cache(maxsize=2)
def client(timeout_s: float, allow_private: bool = False) -> httpx.Client:
    # Connects only to the address it checked (DNS rebinding); no redirects, no proxies.
    return safe_http.client(timeout_s, allow_private)


def reset_clients() -> None:
    """After fork: no HTTP connection shared between processes."""
    client.cache_clear()
