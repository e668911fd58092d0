"""One Bluesky probe is counted once in `/metrics` (issue 16: it used to be counted twice).

`run_probe` against a fake PDS of this test's own (a target nothing else probes) under the
direct tests' key prefix (no beat there): the counters and the histogram move by exactly the
number of checks the one probe made.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from broadcaster.core.brands import hash_api_key
from broadcaster.ledger import health as health_store
from broadcaster.ledger import metrics
from broadcaster.ledger.store import Store
from tests.channel_direct import settings
from workers.health import run_probe
from workers.runtime import Runtime

HANDLE, PASSWORD = "prober.test", "prober-app-password"


@pytest.fixture
def pds() -> Iterator[object]:
    from broadcaster.sandbox import BlueskyFake

    fake = BlueskyFake().start()
    fake.add_account(HANDLE, PASSWORD)
    yield fake
    fake.stop()


def series(r: redis.Redis, rt: Runtime, target: str) -> dict[tuple[str, str], float]:
    """The probe counter and the probe histogram's count, by (sample, check), for `target`."""
    text = metrics.render(r, rt.settings, [target]).decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            wanted = s.name in ("broadcaster_probes_total", "broadcaster_probe_latency_seconds_count")
            if wanted and s.labels.get("target") == target:
                key = (s.name, s.labels["check"])
                found[key] = found.get(key, 0) + s.value
    return found


def test_one_probe_adds_exactly_one_count_and_one_observation_per_check(
    pds, direct_redis, tmp_path, monkeypatch
):
    monkeypatch.setenv("TEST_PROBER_BSKY", PASSWORD)
    brands_file = tmp_path / "brands.yaml"
    entry = {
        "id": "prober",
        "name": "Prober",
        "api_keys": [hash_api_key("fb_prober_key_0123456789abcdef")],
        "bluesky": {"handle": HANDLE, "app_password_env": "TEST_PROBER_BSKY", "pds_url": pds.url},
        "rss": {"title": "t", "link": "https://x.example/", "description": "d"},
    }
    brands_file.write_text(yaml.safe_dump({"brands": [entry]}), encoding="utf-8")
    # (generous budgets: a busy machine may take its time)
    s = settings(brands_file=brands_file, health_latency_budget_s=30, health_probe_timeout_s=30)
    rt = Runtime(settings=s, redis=direct_redis, store=Store(direct_redis, s))
    target = rt.brands().require("prober").bluesky.target
    assert series(direct_redis, rt, target) == {}

    outcome, _ = run_probe(rt, target)

    assert outcome in ("ok", "failed")  # a probe ran (a check slower than the budget fails it)
    checks = [c["name"] for c in the_only_probe(rt, target)["checks"]]
    assert checks[0] == "session"
    expected = {}
    for name in checks:
        for sample in ("broadcaster_probes_total", "broadcaster_probe_latency_seconds_count"):
            expected[(sample, name)] = expected.get((sample, name), 0) + 1.0
    assert series(direct_redis, rt, target) == expected


def the_only_probe(rt: Runtime, target: str) -> dict:
    records = health_store.last_probes(rt.redis, rt.settings, target)
    assert len(records) == 1, records
    return records[0]
