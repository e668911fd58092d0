"""Drive one channel's `send` directly against the sandbox fakes, with real Redis.

For the tests of how a channel classifies what its real client library raises: no Celery, no
API. A product retry is `send` again with the next `attempt` (what `workers/delivery.py` does).
Redis is the suite's database (`BROADCASTER_TEST_REDIS_DB`) under a key prefix of these tests'
own; `DirectRedis.clean` deletes only that prefix.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from broadcaster.core.brands import Brand, Priority, hash_api_key
from broadcaster.core.models import MediaRef
from broadcaster.core.settings import Settings
from channels.base import ChannelContext, Outbound
from tests.harness import REDIS_URL, free_port, own_prefix

PREFIX = own_prefix("direct")


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "key_prefix": PREFIX,
        "http_connect_timeout_s": 2.0,
        "http_read_timeout_s": 2.0,
        "max_attempts": 4,
        "public_base_url": "http://testserver",
        # never from the environment (the stack fixture turns cards off there): off unless a test
        # of link cards asks, so no post's link is fetched from the internet
        "link_cards": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def clean(r: redis.Redis) -> None:
    keys = list(r.scan_iter(match=f"{PREFIX}*", count=500))
    if keys:
        r.delete(*keys)


def direct_redis() -> Iterator[redis.Redis]:
    """The `direct_redis` fixture (tests/conftest.py): the suite's database, this prefix cleaned."""
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=5)
    try:
        r.ping()
    except redis.RedisError as e:
        pytest.fail(f"these tests need Redis at {REDIS_URL}: {e}")
    clean(r)
    yield r
    clean(r)
    r.close()


def context(r: redis.Redis, **overrides: Any) -> ChannelContext:
    return ChannelContext(settings=settings(**overrides), redis=r)


def brand(brand_id: str, pds_url: str, password_env: str, **channels: Any) -> Brand:
    return Brand.model_validate(
        {
            "id": brand_id,
            "name": brand_id.title(),
            "api_keys": [hash_api_key(f"fb_{brand_id}_key_0123456789abcdef")],
            "bluesky": {"handle": f"{brand_id}.test", "app_password_env": password_env, "pds_url": pds_url},
            "rss": {"title": "t", "link": "https://x.example/", "description": "d"},
            **channels,
        }
    )


def outbound(
    b: Brand,
    text: str,
    attempt: int,
    post_id: str,
    created_at_us: int,
    media: tuple[MediaRef, ...] = (),
    link: str | None = None,
) -> Outbound:
    return Outbound(
        post_id=post_id,
        brand=b,
        text=text,
        link=link,
        priority=int(Priority.high),
        created_at_us=created_at_us,
        attempt=attempt,
        media=media,
    )


def new_post() -> tuple[str, int]:
    return f"p-{uuid.uuid4().hex[:12]}", int(time.time() * 1_000_000)


def dead_url() -> str:
    """A base URL nothing listens on: connection refused, the request never leaves."""
    return f"http://127.0.0.1:{free_port()}"
