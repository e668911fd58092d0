"""The benchmark harness leaves no process behind, however the benchmark ends.

A benchmark process starts a stack (redis-server, the sandbox, the API, beat, a worker) and is
then stopped three ways: SIGTERM, SIGKILL (nothing of ours runs: the kernel's parent-death
signal and the sandbox's own watch must do it), and a part failing to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.harness import ROOT

pytestmark = [pytest.mark.bench, pytest.mark.integration]

SCRIPT = """
import json, sys, time
from bench.harness import BenchBrand, BenchStack
stack = BenchStack([BenchBrand("cleanup", channels=("mastodon",))])
try:
    stack.start(concurrency=1)
    pids = [stack.redis_server.proc.pid, stack.sandbox.p.pid, stack.api.pid, stack.beat.pid]
    pids += stack.worker_pids()
    print(json.dumps(pids), flush=True)
    time.sleep(600)
finally:
    stack.close()
"""


def _descendants_and(pids: list[int]) -> set[int]:
    found = set(pids)
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            found |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    return found


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone(pids: set[int], timeout: float = 60) -> set[int]:
    """Which of `pids` are still running after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if _running(p)}
        time.sleep(0.2)
    return alive


def _run_and_stop(sig: int) -> set[int]:
    bench = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        line = bench.stdout.readline()
        assert line, "the stack did not start"
        children = _descendants_and(json.loads(line))
        assert len(children) >= 6  # redis, sandbox, api, beat (+ celery child), worker + its child
        os.kill(bench.pid, sig)
        bench.wait(60)
        return _gone(children)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()


def test_sigterm_closes_the_whole_stack():
    assert _run_and_stop(signal.SIGTERM) == set()


def test_sigkill_of_the_benchmark_still_leaves_nothing_behind():
    assert _run_and_stop(signal.SIGKILL) == set()


def test_a_stack_whose_api_cannot_start_stops_what_it_started(monkeypatch):
    from bench import harness

    before = {p.pid for p in psutil.Process().children(recursive=True)}

    def broken(*args, **kwargs):
        raise RuntimeError("the API did not come up")

    monkeypatch.setattr(harness, "ApiProcess", broken)
    stack = harness.BenchStack([harness.BenchBrand("cleanup2", channels=("mastodon",))])
    started = {stack.redis_server.proc.pid, stack.sandbox.p.pid}
    with pytest.raises(RuntimeError, match="did not come up"):
        stack.start(concurrency=1)  # the worker and beat started before the API failed
    assert _gone(started) == set()
    leftover = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert _gone(leftover) == set()
    assert os.environ.get("BROADCASTER_KEY_PREFIX") != harness.PREFIX, "the environment was restored"
