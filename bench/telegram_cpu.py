"""CPU per Telegram send: the channel's path now beside the one it replaced, in one run.

`sends` text messages go through `TelegramChannel._call` (the channel's Bot, timeouts and
runner) from a pool of `threads` threads, as a `broadcaster worker --pool threads -c 32`
process runs them, to the sandbox Telegram fake in a process of its own
(`bench.sandbox_proc`), which answers at once. The clock is this process's CPU time
(`time.process_time`, every thread), so the figure is the client side only: the fake's CPU
is not in it. Variants, each with its pool threads kept across rounds (as Celery keeps them),
measured in alternation, `rounds` times, median reported:

* **before**: the previous design, kept below as `HandoffRunner`: one loop in a thread of its
  own per process, one Bot shared by every thread, each call handed over with
  `asyncio.run_coroutine_threadsafe` and waited for on a future; `Bot.send_message`;
* **own loop**: `workers.event_loop.LoopRunner` as the workers use it now: each thread runs
  its call on its own loop (`run_until_complete`), with its own Bot and connection; still
  `Bot.send_message` (the step in between);
* **after**: own loop and `channels.telegram.send_text`, what the channel sends with now:
  `sendMessage` through the Bot's request object, no `Message` built from the answer;
* **asyncio.run** (`fallback=True`): no runner, the channel's fallback for plain scripts: a
  new loop, Bot and connection per send (a tenth of `sends`: it is slow).

Pool size: the hand-off shares one Bot, so its pool gets `threads` connections (as the
benchmarks set `telegram_pool_size`); a thread's own Bot uses one at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import redis
from telegram import Bot
from telegram.constants import ParseMode
from telegram.error import TelegramError

from bench import report
from bench.harness import BenchBrand, SandboxProcess, brand_entries
from broadcaster.core.brands import Brand
from broadcaster.core.settings import Settings
from channels.base import ChannelContext
from channels.telegram import Sent, TelegramChannel, send_text
from workers.event_loop import EXTRAS_KEY, LoopRunner

T = TypeVar("T")
COLUMNS = ["variant", "CPU ms/send", "sends/s", "vs before", "errors"]
Use = Callable[[Bot, str, str], Awaitable[Sent]]


async def bot_send_message(bot: Bot, chat: str, text: str) -> Sent:
    """The channel's text send before: `Bot.send_message`, a `Message` built from the answer."""
    return Sent.of(await bot.send_message(chat_id=chat, text=text, parse_mode=ParseMode.HTML))


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class HandoffRunner:
    """The previous `workers/event_loop.py` (before the per-thread loops), for comparison only:
    one loop in its own thread; callers hand it coroutines and wait on a future."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._cache: dict[Hashable, tuple[Any, Callable[[Any], Awaitable[None]] | None]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.loop.run_forever, name="asyncio-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        try:
            return future.result(timeout + 2.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("no result from the event loop") from None
        except BaseException:
            future.cancel()
            raise

    def cached(
        self, key: Hashable, factory: Callable[[], T], close: Callable[[T], Awaitable[None]] | None = None
    ) -> T:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = (factory(), close)
            return self._cache[key][0]

    def close(self) -> None:
        for client, close in self._cache.values():
            if close is not None:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(_awaited(close(client)), self.loop).result(6)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Variant:
    def __init__(self, name: str, channel: TelegramChannel, threads: int, runner: Any, use: Use) -> None:
        self.name = name
        self.channel = channel
        self.use = use
        self.runner = runner
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=name.replace(" ", "-"))
        self.cpu_ms: list[float] = []
        self.per_s: list[float] = []
        self.errors: list[str] = []

    def send(self, i: int) -> int:
        chat = str(self.channel.cfg.chat_ids[0])
        try:
            return self.channel._call(lambda bot: self.use(bot, chat, f"cpu bench {i}")).message_id
        except (TelegramError, TimeoutError) as e:  # counted, not fatal: a loaded host times out
            self.errors.append(type(e).__name__)
            return -1

    def measure(self, sends: int) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        ids = list(self.pool.map(self.send, range(sends)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if len(ids) != sends:
            raise RuntimeError(f"{self.name}: {len(ids)} of {sends} sends ran")
        self.cpu_ms.append(cpu * 1000 / sends)
        self.per_s.append(sends / wall)

    def close(self) -> None:
        self.pool.shutdown()
        if self.runner is not None:
            self.runner.close()


def _channel(urls: dict[str, Any], threads: int, runner: Any) -> TelegramChannel:
    bench = BenchBrand("tgcpu", channels=("telegram",))
    secrets: dict[str, str] = {}
    brand = Brand.model_validate(brand_entries([bench], urls, secrets)[0])
    os.environ.update(secrets)
    settings = Settings(  # generous timeouts: this measures CPU, and a loaded host is slow to answer
        _env_file=None,
        telegram_pool_size=min(64, threads),
        http_connect_timeout_s=10.0,
        http_read_timeout_s=10.0,
    )
    # `_call` never touches Redis: a client that is never used opens no connection
    ctx = ChannelContext(settings=settings, redis=redis.Redis(), extras={})
    if runner is not None:
        ctx.extras[EXTRAS_KEY] = runner
    return TelegramChannel(brand, ctx)


def run(
    sends: int = 3000, threads: int = 32, rounds: int = 3, fallback: bool = True, warmup: int = 200
) -> dict[str, Any]:
    bench = BenchBrand("tgcpu", channels=("telegram",))
    spec = {"telegram_bots": [[bench.bot, "tgcpu_bot"]], "telegram_chats": [bench.chat], "latency_ms": 0}
    with tempfile.TemporaryDirectory(prefix="bench-tgcpu-") as tmp:
        sandbox = SandboxProcess(spec, Path(tmp))
        variants: list[Variant] = []
        try:
            chosen: list[tuple[str, Any, Use]] = [
                ("before: hand-off, Bot.send_message", HandoffRunner(), bot_send_message),
                ("own loop, Bot.send_message", LoopRunner(), bot_send_message),
                ("after: own loop, send_text", LoopRunner(), send_text),
            ]
            if fallback:
                chosen.append(("asyncio.run per send, send_text", None, send_text))
            for name, runner, use in chosen:
                variants.append(Variant(name, _channel(sandbox.urls, threads, runner), threads, runner, use))
            for v in variants:  # every pool thread made, Bots built, connections open
                list(v.pool.map(v.send, range(max(warmup, threads))))
            for _ in range(rounds):
                for v in variants:  # a new connection per send is slow: a tenth as many of those
                    v.measure(sends if v.runner is not None else max(threads, sends // 10))
                sandbox.reset()  # the fake keeps no growing list between rounds
        finally:
            for v in variants:
                v.close()
            sandbox.stop()
    base = statistics.median(variants[0].cpu_ms)
    results: dict[str, Any] = {
        "sends": sends,
        "threads": threads,
        "rounds": rounds,
        "variants": {
            v.name: {
                "cpu_ms_per_send": statistics.median(v.cpu_ms),
                "cpu_ms_per_send_by_round": v.cpu_ms,
                "sends_per_s": statistics.median(v.per_s),
                "vs_before": statistics.median(v.cpu_ms) / base,
                "errors": len(v.errors),
                "error_types": sorted(set(v.errors)),
            }
            for v in variants
        },
    }
    report.table(
        f"Telegram sends through TelegramChannel._call, {threads} threads, CPU of this process "
        f"(median of {rounds} rounds of {sends})",
        COLUMNS,
        [
            (
                name,
                round(r["cpu_ms_per_send"], 3),
                round(r["sends_per_s"]),
                f"{r['vs_before']:.2f}x",
                r["errors"],
            )
            for name, r in results["variants"].items()
        ],
    )
    return results
