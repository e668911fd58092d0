"""How a run of work reads Bluesky health: a dispatch run once per target, a batch of deliveries
once per target and again once its read is a second old (`workers.failover.HealthReads`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from broadcaster.core.brands import Brand, hash_api_key
from broadcaster.core.health import Override, State
from broadcaster.core.settings import Settings
from broadcaster.ledger import health as health_store
from broadcaster.ledger.store import Store
from tests.harness import own_prefix, redis_client
from workers.failover import HealthReads
from workers.runtime import Runtime

pytestmark = pytest.mark.integration

TARGET = "bsky.reads.test"


@pytest.fixture
def rt() -> Iterator[Runtime]:
    prefix = own_prefix(f"reads{uuid.uuid4().hex[:6]}")
    settings = Settings(_env_file=None, key_prefix=prefix)
    r = redis_client()
    yield Runtime(settings=settings, redis=r, store=Store(r, settings))
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)


def _brand() -> Brand:
    return Brand.model_validate(
        {
            "id": "acme",
            "name": "Acme",
            "api_keys": [hash_api_key("fb_reads_key_0123456789abcdef")],
            "bluesky": {"handle": "acme.test", "app_password_env": "UNUSED", "pds_url": f"https://{TARGET}"},
            "rss": {"title": "Acme", "link": "https://acme.example/", "description": "Acme"},
        }
    )


def _set(rt: Runtime, mode: Override) -> None:
    health_store.override(rt.redis, rt.settings, TARGET, mode, "the health reads test")


def test_a_batch_reads_a_targets_health_once_then_again_when_the_read_is_old(rt):
    brand = _brand()
    _set(rt, Override.down)
    reads = HealthReads(rt, fresh_s=0.3)
    assert reads(brand).effective == State.down
    _set(rt, Override.up)
    assert reads(brand).effective == State.down  # the batch's read, a moment old
    time.sleep(0.35)
    assert reads(brand).effective == State.up  # read again: never older than `fresh_s`


def test_a_dispatch_run_reads_each_target_once(rt):
    brand = _brand()
    _set(rt, Override.down)
    reads = HealthReads(rt)
    assert reads(brand).effective == State.down
    _set(rt, Override.up)
    time.sleep(0.05)
    assert reads(brand).effective == State.down
    assert HealthReads(rt)(brand).effective == State.up  # the next run reads afresh
