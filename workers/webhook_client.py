"""The HTTP client webhook sends use: one per process, never shared across a fork."""

from __future__ import annotations

import functools

import httpx


@functools.lru_cache(maxsize=1)
def client(timeout_s: float) -> httpx.Client:
    # No redirects: a redirect could point the signed body at another (private) host.
    return httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)


def reset_clients() -> None:
    """After fork: no HTTP connection shared between processes."""
    client.cache_clear()
