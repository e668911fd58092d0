"""One Redis connection pool per process and URL, with explicit timeouts.

redis-py (like kombu) waits forever by default; a half-open connection would hang
a worker or the API, so every connection here has socket and connect timeouts.
`sentinel://host:26379;sentinel://host2:26379/0` URLs go through Redis Sentinel.
"""

from __future__ import annotations

import functools
from urllib.parse import urlparse

import redis
from redis.sentinel import Sentinel

from broadcaster.core.settings import Settings

SOCKET_TIMEOUT_S = 5.0


def _sentinel_client(url: str, master: str) -> redis.Redis:
    hosts = []
    db = 0
    password = None
    for part in url.split(";"):
        parsed = urlparse(part)
        hosts.append((parsed.hostname or "127.0.0.1", parsed.port or 26379))
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
        password = parsed.password or password
    # redis-py before 8.2 has no annotations on Sentinel (its constructor and master_for());
    # 8.2 has them, so the ignores may be unused there.
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        hosts, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        master,
        db=db,
        password=password,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
    )
    return client


@functools.lru_cache(maxsize=8)
def _client(url: str, master: str) -> redis.Redis:
    if url.startswith("sentinel://"):
        return _sentinel_client(url, master)
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=15,
        retry_on_timeout=True,
    )


def get_redis(settings: Settings) -> redis.Redis:
    return _client(settings.redis_url, settings.redis_sentinel_master)


def reset_redis_cache() -> None:
    """Drop pooled connections (after fork, or when tests switch URLs)."""
    _client.cache_clear()
