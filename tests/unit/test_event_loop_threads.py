"""The per-process event loop under a threads pool: many callers, one loop, calls overlap."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from workers import event_loop
from workers.event_loop import LoopRunner


class Gauge:
    """Counts coroutines in flight on the loop; remembers the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.loops: set[int] = set()

    async def call(self, hold: float) -> str:
        self.loops.add(id(asyncio.get_running_loop()))
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(hold)
        finally:
            self.now -= 1
        return threading.current_thread().name


def test_many_threads_share_one_loop_and_their_calls_overlap():
    runner = LoopRunner()
    try:
        gauge = Gauge()
        made = []
        barrier = threading.Barrier(16)

        def task(_: int) -> str:
            client = runner.cached("bot", lambda: made.append(object()) or made[-1])
            assert client is made[0]
            barrier.wait(5)
            return runner.run(gauge.call(0.3), timeout=10)

        with ThreadPoolExecutor(16) as pool:
            ran_on = list(pool.map(task, range(16)))
        assert len(made) == 1, "one client per process, however many threads ask at once"
        assert gauge.loops == {id(runner.loop)}
        assert set(ran_on) == {f"asyncio-loop-{runner.pid}"}, "every coroutine ran on the loop's thread"
        assert gauge.most > 1, "calls from different threads were in flight at the same time"
    finally:
        runner.close()
    assert runner.loop.is_closed()


def test_an_interrupted_caller_cancels_only_its_own_call():
    runner = LoopRunner()
    try:
        cancelled = threading.Event()

        async def long_call() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        # a caller whose wait is interrupted (soft time limit, Ctrl-C) ...
        with pytest.raises(TimeoutError):
            runner.run(long_call(), timeout=0.05)
        assert cancelled.wait(5), "its coroutine was cancelled on the loop"
        # ... leaves the loop serving everyone else
        assert runner.run(asyncio.sleep(0, result="still here"), timeout=1) == "still here"
    finally:
        runner.close()


def test_run_from_the_loop_thread_itself_is_refused():
    runner = LoopRunner()
    try:

        async def nested() -> None:
            runner.run(asyncio.sleep(0), timeout=1)

        with pytest.raises(RuntimeError, match="its own loop"):
            runner.run(nested(), timeout=1)
    finally:
        runner.close()


def test_get_runner_gives_every_thread_the_same_runner():
    event_loop.stop()
    try:
        barrier = threading.Barrier(8)

        def ask(_: int) -> LoopRunner:
            barrier.wait(5)
            return event_loop.get_runner()

        with ThreadPoolExecutor(8) as pool:
            runners = set(map(id, pool.map(ask, range(8))))
        assert len(runners) == 1
    finally:
        event_loop.stop()


def test_a_closed_runner_refuses_work_instead_of_hanging():
    runner = LoopRunner()
    runner.close()
    with pytest.raises(RuntimeError, match="closed"):
        runner.run(asyncio.sleep(0), timeout=1)


def test_the_runtime_is_built_once_for_all_pool_threads_and_offers_the_loop():
    from workers import runtime as rt_mod

    rt_mod.reset_runtime()
    try:
        barrier = threading.Barrier(8)

        def ask(_: int) -> rt_mod.Runtime:
            barrier.wait(5)
            return rt_mod.runtime()

        with ThreadPoolExecutor(8) as pool:
            built = list(pool.map(ask, range(8)))
        assert len(set(map(id, built))) == 1
        assert built[0].extras[event_loop.EXTRAS_KEY] is event_loop.get_runner()
    finally:
        rt_mod.reset_runtime()
        event_loop.stop()
