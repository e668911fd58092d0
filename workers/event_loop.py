"""One asyncio event loop per worker process, for async client libraries (python-telegram-bot).

Celery's tasks are synchronous. `asyncio.run()` per message would build and tear down a
loop and a connection pool each time, and a client kept across two `asyncio.run` calls
breaks ("Event loop is closed", see ../shared/notes/celery-redis.md section 5). So each
process keeps one loop, with its clients (one Bot per token, with a small HTTP pool) on it.

The loop runs forever in a thread of its own, and callers hand it coroutines with
`asyncio.run_coroutine_threadsafe`, so the same runner serves every pool:

* prefork: one runner per child (made after fork in `worker_process_init`; a thread does
  not survive a fork, so `get_runner()` also rebuilds when the pid changed);
* threads (`broadcaster worker --pool threads -c 32`): the tasks' threads share the
  process's one loop and its clients. Many sends are in flight on it at once, which is
  what an async client is for; a `run_until_complete` per caller would not be thread-safe
  (two threads cannot drive one loop);
* solo and plain scripts: made on first use.

A caller that is interrupted while it waits (a soft time limit, Ctrl-C) cancels its own
coroutine on the loop; other callers' coroutines go on. `stop()` (at
`worker_process_shutdown` / `worker_shutdown`) closes the clients' pools and the loop.

Channels find the runner in `ChannelContext.extras["async_runner"]` (channels never
import workers); without one they fall back to a short-lived loop per call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar

log = logging.getLogger("broadcaster.event_loop")

T = TypeVar("T")
EXTRAS_KEY = "async_runner"
_GRACE_S = 2.0  # beyond the coroutine's own timeout, how long a caller waits for its result


class LoopRunner:
    """Runs coroutines on this process's own loop (in its own thread); caches clients bound to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self._cache: dict[Hashable, tuple[Any, Callable[[Any], Awaitable[None]] | None]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=f"asyncio-loop-{self.pid}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # close() stopped us: cancel what is left, then let the loop close in this thread
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                with contextlib.suppress(BaseException):
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            with contextlib.suppress(BaseException):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` with a hard `timeout` (TimeoutError after it), from any thread but the loop's."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopRunner.run() called from its own loop: await the coroutine instead")
        if not self.alive:
            coro.close()
            raise RuntimeError("the asyncio loop of this process is closed")
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        try:
            return future.result(timeout + _GRACE_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result from the event loop within {timeout + _GRACE_S:.0f} s") from None
        except BaseException:
            # A soft time limit (or Ctrl-C) lands here mid-wait: cancel our coroutine only, so
            # the loop and every other caller's work go on.
            future.cancel()
            raise

    def cached(
        self,
        key: Hashable,
        factory: Callable[[], T],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """The client for `key`, made once per process by `factory` and closed by `close`."""
        with self._lock:
            if key not in self._cache:
                self._cache[key] = (factory(), close)
            return self._cache[key][0]

    def close(self) -> None:
        """Close every cached client (their HTTP pools), then the loop and its thread."""
        if not self.alive:
            return
        with self._lock:
            cached = list(self._cache.values())
            self._cache.clear()
        for client, close in cached:
            if close is not None:
                try:
                    asyncio.run_coroutine_threadsafe(asyncio.wait_for(close(client), 5), self.loop).result(6)
                except Exception:
                    log.warning("could not close a %s cleanly", type(client).__name__)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


_runner: LoopRunner | None = None
_runner_lock = threading.Lock()


def _ours(runner: LoopRunner | None) -> bool:
    return runner is not None and runner.pid == os.getpid() and runner.alive


def _start_locked() -> LoopRunner:
    global _runner
    _runner = LoopRunner()
    log.info("asyncio loop ready in pool process %d", _runner.pid)
    return _runner


def start() -> LoopRunner:
    """A fresh runner for this process (after fork: whatever the parent had is not ours)."""
    with _runner_lock:
        return _start_locked()


def get_runner() -> LoopRunner:
    """This process's runner, made on first use where no `worker_process_init` ran (threads, solo, CLI)."""
    runner = _runner
    if _ours(runner):
        return runner  # type: ignore[return-value]
    with _runner_lock:  # two threads asking at once get the same new runner
        return _runner if _ours(_runner) else _start_locked()  # type: ignore[return-value]


def stop() -> None:
    global _runner
    with _runner_lock:
        runner, _runner = _runner, None
    if runner is not None and runner.pid == os.getpid():
        runner.close()


def install(extras: dict[str, Any]) -> None:
    """Offer this process's runner to the channels through their context's extras."""
    extras[EXTRAS_KEY] = get_runner()
