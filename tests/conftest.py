"""Fixtures shared by the suite. Unit tests need none of them; integration tests get a
running stack: Redis database of their own, sandbox services, a Celery worker and beat."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from _pytest.mark.expression import Expression
from hypothesis import settings as hypothesis_settings

from tests import channel_brands, channel_direct
from tests.harness import (
    FAST_SETTINGS,
    REDIS_URL,
    SUITE_PREFIX,
    BrandSpec,
    Proc,
    brand_entry,
    kill_together,
    redis_client,
    start_beat,
    start_worker,
    wait_for,
    write_brands,
)

# pytest rewrites each test module's asserts on import, and caches the result as bytecode unless
# bytecode is off (PYTHONDONTWRITEBYTECODE, as this machine's environment sets it): then every
# process of every run rewrote all of them again, 3 of the 6 CPU-s each xdist worker spends
# collecting. The cache goes to __pycache__ (ignored by git) next to each test module.
sys.dont_write_bytecode = False

# Property tests: Hypothesis' 100 examples each in a plain `pytest`, 300 in CI (`CI` set, as
# .ci/run sets it).
hypothesis_settings.register_profile("deep", hypothesis_settings(), max_examples=300)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("deep")

ACME = BrandSpec("acme", "fb_acme_test_key_0123456789abcdef", "acme.test", "acme-app-password")
# Globex relaxed the alt-text rule for images (acme keeps the default: required).
GLOBEX = BrandSpec(
    "globex",
    "fb_globex_test_key_0123456789abcd",
    "globex.test",
    "globex-app-password",
    extra={"require_alt_text": False},
)
# A brand whose Bluesky password is wrong: its Bluesky deliveries fail permanently.
BADPASS = BrandSpec("badpass", "fb_badpass_test_key_0123456789ab", "badpass.test", "not-the-password")
READER = ("reader.test", "reader-password")
# Brands on a Bluesky PDS of their own (a second fake), so the failover tests can break
# "Bluesky" without touching the target every other test posts to. Their failover channel
# is RSS (always-on is off), so each reroute, mirror and notice is visible in their feed.
INITECH = BrandSpec(
    "initech",
    "fb_initech_test_key_0123456789abc",
    "initech.test",
    "initech-app-password",
    extra={
        "routing": {
            "failover": ["rss"],
            "always_on": [],
            "recovery_notice": "{brand}: Bluesky is back. Thanks for following us on {channels}.",
        }
    },
)
# Same PDS, failback mode `skip`: posts due during an outage are never sent to Bluesky later.
HOOLI = BrandSpec(
    "hooli",
    "fb_hooli_test_key_0123456789abcde",
    "hooli.test",
    "hooli-app-password",
    extra={"routing": {"failover": ["rss"], "always_on": [], "failback": "skip"}},
)
# Same PDS, failing over to Mastodon (the sandbox's) with RSS always on.
UMBRELLA = BrandSpec(
    "umbrella",
    "fb_umbrella_test_key_0123456789ab",
    "umbrella.test",
    "umbrella-app-password",
    extra={
        "routing": {
            "failover": ["mastodon"],
            "always_on": ["rss"],
            "recovery_notice": "{brand}: Bluesky is back.",
        },
        # What its public page /b/umbrella links to (the browser test reads them; never opened).
        "page": {
            "mastodon_url": "https://mastodon.example/@umbrella",
            "telegram_url": "https://t.me/umbrellanews",
            "sms_keyword": "JOIN",
            "sms_number": "+15005550006",
        },
    },
)
UMBRELLA_MASTODON_TOKEN = "umbrella-mastodon-token-0123456789"
OUTAGE_BRANDS = (INITECH, HOOLI, UMBRELLA)


# How the xdist workers share the files (`--dist loadfile --no-loadscope-reorder`): a file
# stays in one worker, handed out in collection order, which `pytest_collection_modifyitems` sorts
# slowest first (as measured) so the quick files fill in behind and the workers finish together.
SLOW_FILES = (
    "integration/test_deployments.py",  # five deployments of their own, two under libfaketime
    "integration/test_failover.py",  # outages, notices, overrides and backfills
    "integration/test_outage_signals.py",  # each fault that trips the target, and noise that does not
    "integration/test_demo.py",  # two demo runs
    "integration/test_retention.py",
    "integration/test_up.py",
    "integration/test_core_path.py",
    "integration/test_channel_telegram.py",
    "integration/test_channel_sms.py",
    "integration/test_channel_check_cli.py",
    "test_channel_bluesky_session.py",  # twenty worker processes, twice
    "test_sandbox_faults.py",
    "integration/test_channel_mastodon.py",
    "unit/test_health_cadence.py",
    # `pytest -m "chaos or bench"`: the longest first.
    "bench/test_bench_smoke.py",
    "bench/test_bench_failover_smoke.py",
    "chaos/test_worker_kills.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    rank = {name: i for i, name in enumerate(SLOW_FILES)}

    def slow_first(item: pytest.Item) -> int:
        path = item.path.relative_to(here).as_posix() if item.path.is_relative_to(here) else ""
        return rank.get(path, len(SLOW_FILES))

    items.sort(key=slow_first)  # stable: a file's tests keep their order


# Each file under tests/chaos and tests/bench is marked with its directory's marker and
# `integration`. A plain run leaves them out (`-m 'not chaos and not bench'`), but pytest would
# still import and collect them before deselecting: the API fuzz test alone has schemathesis
# build a test for every operation (about 2 s of CPU in every xdist worker, a tenth of the
# start-up). When no choice of the other markers can select them, they are not collected.
MARKED_DIRS = ("chaos", "bench")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    here = Path(__file__).parent
    if collection_path.parent != here or collection_path.name not in MARKED_DIRS:
        return None
    marker, markexpr = collection_path.name, config.option.markexpr
    if not markexpr:
        return None
    try:
        expr = Expression.compile(markexpr)
        selectable = any(
            expr.evaluate(lambda name, /, others=others, **_: name in (marker, "integration") or others)
            for others in (False, True)
        )
    except Exception:  # an expression pytest itself will report: collect as usual
        return None
    return None if selectable else True


def _delete_own_keys(r: redis.Redis) -> None:
    """Delete the suite's keys only (this xdist worker's): the stack's `SUITE_PREFIX:` (Celery's
    and RedBeat's keys share it) and each test's `SUITE_PREFIX-...:` (`harness.own_prefix`).
    Whatever else lives in the database (another deployment, another worker) is left alone."""
    batch: list[str] = []
    for key in r.scan_iter(match=f"{SUITE_PREFIX}[-:]*", count=1000):  # "[:-]" would be a range
        batch.append(key)
        if len(batch) >= 1000:
            r.delete(*batch)
            batch.clear()
    if batch:
        r.delete(*batch)


@pytest.fixture
def direct_redis() -> Iterator[redis.Redis]:
    """Real Redis for tests that drive a channel directly, keys under a prefix of their own."""
    yield from channel_direct.direct_redis()


@pytest.fixture(scope="session")
def redis_available() -> redis.Redis:
    r = redis_client()
    try:
        r.ping()
    except redis.RedisError as e:
        pytest.fail(f"integration tests need Redis at {REDIS_URL}: {e} (start redis-server)")
    return r


@dataclass
class Stack:
    sandbox: object
    brands_file: Path
    env: dict[str, str]
    worker: Proc
    beat: Proc
    log_dir: Path
    redis: redis.Redis
    outage_bluesky: object = None  # the second fake PDS of OUTAGE_BRANDS

    def settings(self):
        from broadcaster.core.settings import Settings

        return Settings(_env_file=None)

    def store(self):
        from broadcaster.ledger.store import Store

        return Store(self.redis, self.settings())


@pytest.fixture(scope="session")
def sandbox():
    from broadcaster.sandbox import Sandbox

    sb = Sandbox.start()
    sb.bluesky.add_account(ACME.handle, ACME.password)
    sb.bluesky.add_account(GLOBEX.handle, GLOBEX.password)
    sb.bluesky.add_account(BADPASS.handle, "the-real-password")
    sb.bluesky.add_account(*READER)
    channel_brands.register(sb)
    yield sb
    sb.stop()


@pytest.fixture(scope="session")
def outage_bluesky(sandbox):
    """A second fake Bluesky (PDS + AppView) for the failover tests to break."""
    from broadcaster.sandbox import BlueskyFake

    fake = BlueskyFake().start()
    for spec in OUTAGE_BRANDS:
        fake.add_account(spec.handle, spec.password)
    sandbox.mastodon.add_token(UMBRELLA_MASTODON_TOKEN, "umbrella")
    yield fake
    fake.stop()


def _outage_entries(sandbox, fake, env: dict[str, str]) -> list[dict]:
    entries = []
    for spec in OUTAGE_BRANDS:
        entry = brand_entry(spec, sandbox, env)
        entry["bluesky"] = entry["bluesky"] | {"pds_url": fake.url}
        if spec is UMBRELLA:
            env["TEST_UMBRELLA_MASTODON_TOKEN"] = UMBRELLA_MASTODON_TOKEN
            entry["mastodon"] = {
                "instance_url": sandbox.mastodon.url,
                "access_token_env": "TEST_UMBRELLA_MASTODON_TOKEN",
            }
        entries.append(entry)
    return entries


def _stack_env(brands_file: Path, extra_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCASTER_")}
    env.update(FAST_SETTINGS)
    env["BROADCASTER_BRANDS_FILE"] = str(brands_file)
    env.update(extra_env)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def stack(redis_available, sandbox, outage_bluesky, tmp_path_factory) -> Iterator[Stack]:
    from broadcaster.core.settings import reset_settings_cache
    from broadcaster.ledger.connection import reset_redis_cache

    _delete_own_keys(redis_available)
    work = tmp_path_factory.mktemp("stack")
    brands_file = work / "brands.yaml"
    secrets: dict[str, str] = {}
    write_brands(
        brands_file,
        [brand_entry(b, sandbox, secrets) for b in (ACME, GLOBEX, BADPASS)]
        + channel_brands.entries(sandbox, secrets)
        + _outage_entries(sandbox, outage_bluesky, secrets),
    )
    # Images: one blob directory for the API (this process) and the worker, in the run's temp dir.
    secrets["BROADCASTER_MEDIA_DIR"] = str(work / "media")
    env = _stack_env(brands_file, secrets)
    # The API runs in this process (TestClient): same environment as the workers.
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("BROADCASTER_", "TEST_"))})
    reset_settings_cache()
    reset_redis_cache()
    worker = start_worker(env, work)
    beat = start_beat(env, work)
    s = Stack(sandbox, brands_file, env, worker, beat, work, redis_available, outage_bluesky)
    try:
        from broadcaster.common.queue import producer

        wait_for(
            lambda: producer(s.settings()).control.ping(timeout=0.5),
            timeout=30,
            what=f"the Celery worker to answer (log: {worker.log_path})",
        )
        yield s
    finally:
        kill_together(worker, beat)
        os.environ.clear()
        os.environ.update(saved)
        reset_settings_cache()
        reset_redis_cache()
        _delete_own_keys(redis_available)


@pytest.fixture
def api(stack):
    from fastapi.testclient import TestClient

    from broadcaster.api import create_app
    from broadcaster.core.settings import reset_settings_cache

    # The stack's environment, not settings cached by an earlier test in this process (a unit
    # test's defaults, or a test's own monkeypatched environment): xdist mixes their order.
    reset_settings_cache()
    with TestClient(create_app()) as client:
        yield client


def auth(spec: BrandSpec) -> dict[str, str]:
    return {"Authorization": f"Bearer {spec.key}"}
