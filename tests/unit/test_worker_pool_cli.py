"""`broadcaster worker --pool`: the pool reaches Celery's argv; BROADCASTER_WORKER_POOL is the default."""

from __future__ import annotations

import pytest

from broadcaster.core.settings import reset_settings_cache
from broadcaster.ops.cli import _celery_argv, build_parser


def _pool_of(argv: list[str]) -> tuple[str, str]:
    celery = _celery_argv("worker", build_parser().parse_args(argv))
    return celery[celery.index("-P") + 1], celery[celery.index("-c") + 1]


def test_the_pool_and_its_concurrency_reach_celery():
    assert _pool_of(["worker", "--pool", "threads", "-c", "32"]) == ("threads", "32")
    assert _pool_of(["worker", "-P", "solo"]) == ("solo", "4")


def test_the_default_pool_comes_from_the_settings(monkeypatch):
    monkeypatch.setenv("BROADCASTER_WORKER_POOL", "threads")
    reset_settings_cache()
    try:
        assert _pool_of(["worker"]) == ("threads", "4")
        assert _pool_of(["worker", "--pool", "prefork"]) == ("prefork", "4")
    finally:
        monkeypatch.delenv("BROADCASTER_WORKER_POOL")
        reset_settings_cache()
    assert _pool_of(["worker"])[0] == "prefork"


def test_an_unknown_pool_is_refused():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--pool", "gevent"])


def test_a_probe_worker_serves_only_the_probes_on_threads():
    celery = _celery_argv("worker", build_parser().parse_args(["worker", "--probes"]))
    assert celery[celery.index("-Q") + 1] == "broadcaster.probe"
    assert _pool_of(["worker", "--probes"]) == ("threads", "16")
    assert celery[celery.index("-n") + 1] == "probes@%h"


def test_a_plain_worker_serves_every_queue_probes_included():
    celery = _celery_argv("worker", build_parser().parse_args(["worker"]))
    queues = celery[celery.index("-Q") + 1].split(",")
    assert queues == ["broadcaster", "broadcaster.control", "broadcaster.probe"]
