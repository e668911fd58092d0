"""One asyncio event loop per Celery pool process, for async client libraries (python-telegram-bot).

Celery's prefork tasks are synchronous. `asyncio.run()` per message would build and tear
down a loop and a connection pool each time, and a client kept across two `asyncio.run`
calls breaks ("Event loop is closed", see ../shared/notes/celery-redis.md section 5). So
each pool process makes one loop after fork (`worker_process_init`), keeps its clients
(one Bot per token, with a small HTTP pool) on it, and runs each call with
`run_until_complete`; `worker_process_shutdown` closes the pools and the loop.

Channels find the runner in `ChannelContext.extras["async_runner"]` (channels never
import workers); without one they fall back to a short-lived loop per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar

log = logging.getLogger("broadcaster.event_loop")

T = TypeVar("T")
EXTRAS_KEY = "async_runner"


class LoopRunner:
    """Runs coroutines to completion on this process's own loop; caches clients bound to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self._cache: dict[Hashable, tuple[Any, Callable[[Any], Awaitable[None]] | None]] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` with a hard `timeout` (TimeoutError after it), from synchronous code."""
        try:
            return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except BaseException:
            # A soft time limit (or Ctrl-C) lands here mid-await: cancel what is left so the
            # next call starts on a clean loop.
            self._cancel_pending()
            raise

    def cached(
        self,
        key: Hashable,
        factory: Callable[[], T],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """The client for `key`, made once per process by `factory` and closed by `close`."""
        if key not in self._cache:
            self._cache[key] = (factory(), close)
        return self._cache[key][0]

    def _cancel_pending(self) -> None:
        if self.loop.is_closed() or self.loop.is_running():
            return
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            with contextlib.suppress(BaseException):
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def close(self) -> None:
        """Close every cached client (their HTTP pools), then the loop."""
        if self.loop.is_closed():
            return
        for client, close in self._cache.values():
            if close is not None:
                try:
                    self.loop.run_until_complete(asyncio.wait_for(close(client), 5))
                except Exception:
                    log.warning("could not close a %s cleanly", type(client).__name__)
        self._cache.clear()
        self._cancel_pending()
        self.loop.close()


_runner: LoopRunner | None = None


def start() -> LoopRunner:
    """A fresh runner for this process (after fork: whatever the parent had is not ours)."""
    global _runner
    _runner = LoopRunner()
    log.info("asyncio loop ready in pool process %d", _runner.pid)
    return _runner


def get_runner() -> LoopRunner:
    """This process's runner, made on first use where no `worker_process_init` ran (solo pool, CLI)."""
    if _runner is None or _runner.pid != os.getpid() or _runner.loop.is_closed():
        return start()
    return _runner


def stop() -> None:
    global _runner
    if _runner is not None and _runner.pid == os.getpid():
        _runner.close()
    _runner = None


def install(extras: dict[str, Any]) -> None:
    """Offer this process's runner to the channels through their context's extras."""
    extras[EXTRAS_KEY] = get_runner()
