"""What a worker process holds: settings, one Redis pool, the ledger and the brands.

Built lazily and rebuilt after fork (`worker_process_init`), so no socket is ever
shared between a Celery parent and its children. One per process, shared by the threads
of a `--pool threads` worker: it is built once under a lock, and what it holds is safe to
share (redis-py's connection pool hands each thread its own connection; the event loop
runner takes coroutines from any thread, see workers/event_loop.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from broadcaster.core.brands import Brands, BrandsFileError, BrandsFileReport, load_brands
from broadcaster.core.settings import Settings, get_settings
from broadcaster.ledger.connection import get_redis, reset_redis_cache
from broadcaster.ledger.store import Store
from channels.base import ChannelContext

Enqueue = Callable[[str, str], None]

log = logging.getLogger("broadcaster.worker")


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
    brands_report: BrandsFileReport = field(default_factory=BrandsFileReport)

    def brands(self) -> Brands:
        """The brands file, re-read when it changes. A broken file raises `BrandsFileError`
        (the tasks end quietly on it, see `workers.celery_app.QuietTask`) and is logged here in
        one line per change of the file, not a traceback per task."""
        path = self.settings.brands_file
        try:
            brands = load_brands(path)
        except BrandsFileError as e:
            try:
                mtime: float | None = path.stat().st_mtime
            except OSError:
                mtime = None
            line = self.brands_report.line(str(e), mtime)
            if line:
                log.error("%s", line)
            raise
        if self.brands_report.last is not None:
            line = self.brands_report.line(None, None)
            if line:
                log.warning("%s: %s", line, path)
        return brands

    def channel_ctx(self) -> ChannelContext:
        return ChannelContext(settings=self.settings, redis=self.redis, extras=self.extras, store=self.store)


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
