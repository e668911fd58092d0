"""Keep the scheduler alive across Redis outages.

celery-redbeat's scheduler exits with a ConnectionError when Redis goes away (it
cannot extend its lock), and nothing brings it back: scheduled posts would stall. So
`broadcaster beat` runs the scheduler as a child process and restarts it until it is told
to stop: as soon as Redis answers again when Redis was the reason (a blind backoff made a
3 s Redis restart cost the schedule up to a minute under load: each early restart fails,
and the waits grow), with a growing backoff when it crashed while Redis was fine. Only one
scheduler is active cluster-wide either way: the redbeat lock in Redis decides.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

log = logging.getLogger("broadcaster.beat")

BACKOFF_S = (1, 2, 5, 10)
STABLE_AFTER_S = 60  # a run longer than this resets the backoff
REDIS_POLL_S = 0.5
REDIS_BACK_WAIT_S = 0.5  # Redis answers again: let it finish loading its data first


def redis_answers() -> bool:
    """Does the scheduler's Redis answer a PING now? (Never raises.)"""
    try:
        from broadcaster.core.settings import get_settings
        from broadcaster.ledger.connection import get_redis

        return bool(get_redis(get_settings()).ping())
    except Exception:
        return False


def run_beat_forever(argv: list[str]) -> int:
    """Run `celery beat` with `argv`; restart it whenever it dies, until SIGTERM/SIGINT."""
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failures = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed celery arguments
            [sys.executable, "-m", "celery", "-A", "workers.beat_app", *argv]
        )
        code = child.wait()
        if stopping:
            return 0
        if time.monotonic() - started > STABLE_AFTER_S:
            failures = 0
        if not redis_answers():
            log.warning(
                "the scheduler exited with code %s: Redis is away; restarting it when it answers", code
            )
            while not stopping and not redis_answers():
                time.sleep(REDIS_POLL_S)
            failures = 0
            wait = REDIS_BACK_WAIT_S
        else:
            wait = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            failures += 1
            log.warning("the scheduler exited with code %s; restarting it in %s s", code, wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.1)
        if stopping:
            return 0
