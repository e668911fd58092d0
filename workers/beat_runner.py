"""Keep the scheduler alive across Redis outages.

celery-redbeat's scheduler exits with a ConnectionError when Redis goes away (it
cannot extend its lock), and nothing brings it back: scheduled posts would stall. So
`broadcaster beat` runs the scheduler as a child process and restarts it with backoff
until it is told to stop. Only one scheduler is active cluster-wide either way: the
redbeat lock in Redis decides.
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
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", *argv]
        )
        code = child.wait()
        if stopping:
            return 0
        if time.monotonic() - started > STABLE_AFTER_S:
            failures = 0
        wait = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
        failures += 1
        log.warning("the scheduler exited with code %s; restarting it in %s s", code, wait)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not stopping:
            time.sleep(0.1)
        if stopping:
            return 0
