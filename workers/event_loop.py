"""An asyncio event loop per delivering thread, for async client libraries (python-telegram-bot).

Celery's tasks are synchronous. `asyncio.run()` per message would build and tear down a
loop and a connection pool each time, and a client kept across two `asyncio.run` calls
breaks ("Event loop is closed", see ../shared/notes/celery-redis.md section 5). So each
thread that sends keeps one loop of its own, with its clients (one Bot per token, with its
HTTP pool) bound to it, and runs each call to completion on it with
`loop.run_until_complete`, in the calling thread: no hand-off to another thread and back.

* prefork: a child's tasks run in its main thread, so one loop per child (the runner is
  made after fork in `worker_process_init`; `get_runner()` also rebuilds when the pid
  changed, so a child never drives a loop or a socket of its parent's);
* threads (`broadcaster worker --pool threads -c 32`): one loop and one Bot per pool
  thread. A thread sends one request at a time, so it uses one connection, kept alive
  from one send to the next;
* solo and plain scripts: the main thread's loop, made on first use.

Loops are made lazily, on a thread's first call: a process that never sends has none.
A caller interrupted while its call runs (a soft time limit, Ctrl-C) has its coroutine
cancelled before the exception goes on; if the cancellation cannot finish, that thread's
loop and clients are dropped and the next call builds new ones. `stop()` (at
`worker_process_shutdown` / `worker_shutdown`) closes every thread's clients and loop.

Channels find the runner in `ChannelContext.extras["async_runner"]` (channels never
import workers); without one they fall back to a short-lived loop per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar

log = logging.getLogger("broadcaster.event_loop")

T = TypeVar("T")
EXTRAS_KEY = "async_runner"
_CANCEL_GRACE_S = 2.0  # how long an interrupted call may take to unwind its cancellation
_CLOSE_S = 5.0  # per client, when the runner closes


class ThreadLoop:
    """One thread's loop and the clients bound to it. Only its thread runs it, except `close`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.current_thread()
        self.clients: dict[Hashable, tuple[Any, Callable[[Any], Awaitable[None]] | None]] = {}
        self.busy = threading.Lock()  # held while a call runs, so `close` never races one

    def close(self) -> None:
        """Close the clients (their HTTP pools) on the loop, then the loop. The loop must be idle."""
        clients = list(self.clients.values())
        self.clients.clear()
        for client, close in clients:
            if close is None:
                continue
            try:
                self.loop.run_until_complete(asyncio.wait_for(close(client), _CLOSE_S))
            except Exception:
                log.warning("could not close a %s cleanly", type(client).__name__)
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


async def _bounded(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    async with asyncio.timeout(timeout):  # raises TimeoutError, like the clients' own timeouts
        return await coro


class LoopRunner:
    """Runs coroutines on the calling thread's own loop; caches the clients bound to that loop."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._local = threading.local()
        self._loops: list[ThreadLoop] = []  # every thread's, for `close`
        self._lock = threading.Lock()
        self._closed = False

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The calling thread's loop (made on first use; after `close`, the closed one)."""
        mine: ThreadLoop | None = getattr(self._local, "loop", None)
        return mine.loop if mine is not None and self._closed else self._mine().loop

    def _mine(self) -> ThreadLoop:
        mine: ThreadLoop | None = getattr(self._local, "loop", None)
        if mine is not None and not mine.loop.is_closed():
            return mine
        with self._lock:
            if self._closed:
                raise RuntimeError("the asyncio loops of this process are closed")
            mine = ThreadLoop()
            gone = [t for t in self._loops if not t.thread.is_alive()]
            self._loops = [t for t in self._loops if t.thread.is_alive()] + [mine]
        self._local.loop = mine
        for old in gone:  # threads that ended since (idle for good): close what they left
            with contextlib.suppress(Exception):
                old.close()
        return mine

    def _drop(self, mine: ThreadLoop) -> None:
        """Forget this thread's loop after a failed cancellation: the next call starts afresh."""
        with self._lock:
            if mine in self._loops:
                self._loops.remove(mine)
        self._local.loop = None
        with contextlib.suppress(BaseException):
            mine.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` to completion on this thread's loop, TimeoutError after `timeout` seconds."""
        if asyncio._get_running_loop() is not None:
            coro.close()
            raise RuntimeError("LoopRunner.run() called from a running loop: await the coroutine instead")
        try:
            mine = self._mine()
        except RuntimeError:
            coro.close()
            raise
        with mine.busy:
            task = mine.loop.create_task(_bounded(coro, timeout))
            try:
                return mine.loop.run_until_complete(task)
            except BaseException:
                if not task.done():  # interrupted mid-call (soft time limit, Ctrl-C)
                    self._cancel(mine, task)
                raise

    def _cancel(self, mine: ThreadLoop, task: asyncio.Task[Any]) -> None:
        task.cancel()
        # a second interruption here must not hide the first, which the caller re-raises
        with contextlib.suppress(BaseException):
            mine.loop.run_until_complete(asyncio.wait([task], timeout=_CANCEL_GRACE_S))
        if not task.done():
            log.warning("an interrupted call did not unwind; this thread gets a new event loop")
            self._drop(mine)

    def cached(
        self,
        key: Hashable,
        factory: Callable[[], T],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """The client for `key` on the calling thread's loop, made once by `factory`, closed by `close`.

        Use it only from this thread, in `run` calls: it is bound to this thread's loop."""
        clients = self._mine().clients
        if key not in clients:
            clients[key] = (factory(), close)
        return clients[key][0]

    def close(self) -> None:
        """Close every thread's clients (their HTTP pools) and loop; later calls are refused."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loops, self._loops = self._loops, []
        for mine in loops:
            if not mine.busy.acquire(timeout=_CLOSE_S):  # still sending: leave it to the exit
                log.warning("an event loop was still busy at shutdown; not closed")
                continue
            try:
                mine.close()
            finally:
                mine.busy.release()


_runner: LoopRunner | None = None
_runner_lock = threading.Lock()


def _ours(runner: LoopRunner | None) -> bool:
    return runner is not None and runner.pid == os.getpid() and runner.alive


def _start_locked() -> LoopRunner:
    global _runner
    _runner = LoopRunner()
    log.info("asyncio loop ready in pool process %d (one per delivering thread)", _runner.pid)
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
