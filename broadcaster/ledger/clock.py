"""The deployment's one clock: Redis `TIME`, read once and carried forward on this host's monotonic clock.

Leases, due times and sweeper deadlines are compared across hosts. With each host's
`time.time()` a worker whose clock runs 40 s fast sees every live lease as expired and
dispatches posts 40 s early; with Redis's clock every worker agrees. The monotonic clock
cannot be set back or forward, so between syncs it only drifts at the crystal's rate (a few
ppm); a resync every `RESYNC_S` keeps that below a millisecond.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Protocol

RESYNC_S = 60.0


class _TimeSource(Protocol):
    def time(self) -> tuple[int, int]: ...


class RedisClock:
    """`now()` in Unix seconds as Redis tells it. Thread-safe; one Redis round trip per resync."""

    def __init__(self, r: _TimeSource, resync_s: float = RESYNC_S):
        self._r = r
        self._resync_s = resync_s
        self._lock = threading.Lock()
        self._base: float | None = None  # Redis time at the last sync
        self._mono = 0.0  # this host's monotonic clock at the last sync

    def _sync(self) -> None:
        before = time.monotonic()
        seconds, micros = self._r.time()
        after = time.monotonic()
        # The reply was made somewhere in the round trip: take its middle.
        self._base = seconds + micros / 1e6
        self._mono = (before + after) / 2

    def now(self) -> float:
        with self._lock:
            if self._base is None or time.monotonic() - self._mono >= self._resync_s:
                self._sync()
            assert self._base is not None
            return self._base + (time.monotonic() - self._mono)

    def __call__(self) -> float:
        return self.now()


_clocks: weakref.WeakKeyDictionary[object, RedisClock] = weakref.WeakKeyDictionary()
_clocks_lock = threading.Lock()


def clock_for(r: _TimeSource) -> RedisClock:
    """The clock of this Redis connection, shared by everything in the process that uses it."""
    with _clocks_lock:
        clock = _clocks.get(r)
        if clock is None:
            clock = _clocks[r] = RedisClock(r)
        return clock
