"""What a worker process holds: settings, one Redis pool, the ledger and the brands.

Built lazily and rebuilt after fork (`worker_process_init`), so no socket is ever
shared between a Celery parent and its children. One per process, shared by the threads
of a `--pool threads` worker: it is built once under a lock, and what it holds is safe to
share (redis-py's connection pool hands each thread its own connection; the event loop
runner takes coroutines from any thread, see workers/event_loop.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from broadcaster.core.brands import Brands, load_brands
from broadcaster.core.settings import Settings, get_settings
from broadcaster.ledger.connection import get_redis, reset_redis_cache
from broadcaster.ledger.store import Store
from channels.base import ChannelContext

Enqueue = Callable[[str, str], None]


@dataclass(frozen=True)
class Handoff:
    """How worker logic hands work on to Celery: built by `workers.tasks`, so nothing below the
    tasks imports them (no cycle)."""

    deliver: Enqueue  # (post id, channel)
    backfill: Callable[[str], None]  # start a target's backfill chain


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
_pid: int | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime (made once, even when several pool threads ask at the same time)."""
    global _runtime, _pid
    rt = _runtime
    if rt is not None and _pid == os.getpid():
        return rt
    with _lock:
        if _runtime is None or _pid != os.getpid():
            from workers import event_loop

            if _pid is not None:  # forked without worker_process_init: no parent's socket
                reset_redis_cache()
            settings = get_settings()
            r = get_redis(settings)
            rt = Runtime(settings=settings, redis=r, store=Store(r, settings))
            # The process's event loop for async clients (Telegram), whatever the pool: with
            # prefork `worker_process_init` made it after fork; threads and solo make it here.
            event_loop.install(rt.extras)
            _runtime, _pid = rt, os.getpid()
        return _runtime


def reset_runtime() -> None:
    global _runtime, _pid
    with _lock:
        _runtime, _pid = None, None
        reset_redis_cache()
