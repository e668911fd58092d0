"""What a worker process holds: settings, one Redis pool, the ledger and the brands.

Built lazily and rebuilt after fork (`worker_process_init`), so no socket is ever
shared between a Celery parent and its children.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from broadcaster.brands import Brands, load_brands
from broadcaster.redis_conn import get_redis, reset_redis_cache
from broadcaster.settings import Settings, get_settings
from broadcaster.store import Store
from channels.base import ChannelContext


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: Store
    extras: dict = field(default_factory=dict)

    def brands(self) -> Brands:
        return load_brands(self.settings.brands_file)

    def channel_ctx(self) -> ChannelContext:
        return ChannelContext(settings=self.settings, redis=self.redis, extras=self.extras)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        settings = get_settings()
        r = get_redis(settings)
        _runtime = Runtime(settings=settings, redis=r, store=Store(r, settings))
    return _runtime


def reset_runtime() -> None:
    global _runtime
    _runtime = None
    reset_redis_cache()
