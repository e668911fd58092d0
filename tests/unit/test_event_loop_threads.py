"""The event loops under a threads pool: each delivering thread runs its own calls on its own loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from workers import event_loop
from workers.event_loop import LoopRunner


class Gauge:
    """Counts calls in flight across threads; remembers the most at once and where each ran."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.loops: set[int] = set()
        self.lock = threading.Lock()

    async def call(self, hold: float) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        with self.lock:
            self.loops.add(id(loop))
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(hold)
        finally:
            with self.lock:
                self.now -= 1
        return threading.current_thread().name, id(loop)


def test_each_thread_runs_its_calls_on_its_own_loop_with_its_own_client_and_calls_overlap():
    runner = LoopRunner()
    try:
        gauge = Gauge()
        made: list[object] = []
        barrier = threading.Barrier(16)

        def task(_: int) -> tuple[str, str, int, object, object]:
            client = runner.cached("bot", lambda: made.append(object()) or made[-1])
            barrier.wait(5)
            name, loop_id = runner.run(gauge.call(0.3), timeout=10)
            again = runner.cached("bot", lambda: made.append(object()) or made[-1])
            return threading.current_thread().name, name, loop_id, client, again

        with ThreadPoolExecutor(16) as pool:
            ran = list(pool.map(task, range(16)))
        for caller, ran_in, _, client, again in ran:
            assert ran_in == caller, "the call ran in the calling thread: no hand-off"
            assert again is client, "a thread keeps its client from one call to the next"
        assert len(made) == 16, "one client per thread"
        assert len(gauge.loops) == 16, "one loop per thread"
        assert gauge.most > 1, "calls from different threads were in flight at the same time"
    finally:
        runner.close()


def test_a_timed_out_call_is_cancelled_and_the_threads_loop_stays_usable():
    runner = LoopRunner()
    try:
        cancelled = threading.Event()

        async def long_call() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        with pytest.raises(TimeoutError):
            runner.run(long_call(), timeout=0.05)
        assert cancelled.is_set(), "its coroutine was cancelled on the loop"
        assert runner.run(asyncio.sleep(0, result="still here"), timeout=1) == "still here"
    finally:
        runner.close()


def test_an_interrupted_caller_cancels_its_call_before_the_interruption_goes_on():
    runner = LoopRunner()
    try:
        unwound = threading.Event()

        async def long_call() -> None:
            try:
                await asyncio.sleep(30)
            finally:
                unwound.set()

        def interrupt() -> None:  # what a soft time limit or Ctrl-C does: raise mid-wait
            raise KeyboardInterrupt

        runner.loop.call_later(0.05, interrupt)
        with pytest.raises(KeyboardInterrupt):
            runner.run(long_call(), timeout=10)
        assert unwound.is_set(), "the call was cancelled, not left to finish during the next one"
        assert runner.run(asyncio.sleep(0, result="still here"), timeout=1) == "still here"
    finally:
        runner.close()


def test_run_from_inside_a_running_loop_is_refused():
    runner = LoopRunner()
    try:

        async def nested() -> None:
            runner.run(asyncio.sleep(0), timeout=1)

        with pytest.raises(RuntimeError, match="running loop"):
            runner.run(nested(), timeout=1)
    finally:
        runner.close()


def test_close_closes_every_threads_clients_and_loops_and_threads_that_ended_are_tidied():
    runner = LoopRunner()
    closed: list[str] = []

    async def close_client(name: str) -> None:
        closed.append(name)

    def use(name: str) -> asyncio.AbstractEventLoop:
        runner.cached("bot", lambda: name, close_client)
        runner.run(asyncio.sleep(0), timeout=1)
        return runner.loop

    ended = threading.Thread(target=use, args=("ended",))
    ended.start()
    ended.join()
    use("main")  # a new thread's loop: the ended thread's client is closed now
    assert closed == ["ended"]
    loop = runner.loop
    runner.close()
    assert closed == ["ended", "main"]
    assert loop.is_closed()


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


def test_the_runtime_is_built_once_for_all_pool_threads_and_offers_the_runner():
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
