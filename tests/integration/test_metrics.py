"""/metrics (Prometheus text, read with prometheus_client's own parser) and /readyz, on the real stack."""

from __future__ import annotations

import os
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broadcaster.api.deps import settings_dep
from broadcaster.core.settings import Settings
from broadcaster.ledger.keys import Keys
from tests.conftest import ACME, auth
from tests.harness import FAST_SETTINGS, own_prefix, wait_for, wait_quiet

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {FAST_SETTINGS['BROADCASTER_ADMIN_API_KEY']}"}


def scrape(api, headers: dict[str, str] | None = None) -> dict[str, list]:
    r = api.get("/metrics", headers=ADMIN if headers is None else headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def value(families: dict[str, list], family: str, sample: str, **labels: str) -> float:
    for s in families.get(family, []):
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def test_it_counts_deliveries_and_times_them_per_channel(api, stack):
    """Exactly once each: nothing else moves acme's counters while the deployment is quiet."""
    wait_quiet(stack.store())
    before = scrape(api)
    r = api.post("/v1/posts", json={"text": f"Metrics {uuid.uuid4().hex[:8]}"}, headers=auth(ACME))
    assert r.status_code == 202, r.text
    post_id = r.json()["id"]
    wait_for(
        lambda: api.get(f"/v1/posts/{post_id}", headers=auth(ACME)).json()["state"] == "delivered",
        timeout=30,
        what="the post to be delivered",
    )
    wait_quiet(stack.store(), posts=[post_id])
    after = scrape(api)

    for channel in ("bluesky", "rss"):
        labels = {"brand": "acme", "channel": channel, "state": "delivered"}
        moved = value(after, "broadcaster_deliveries", "broadcaster_deliveries_total", **labels) - value(
            before, "broadcaster_deliveries", "broadcaster_deliveries_total", **labels
        )
        assert moved == 1, channel
        count = "broadcaster_delivery_latency_seconds_count"
        timed = value(after, "broadcaster_delivery_latency_seconds", count, channel=channel) - value(
            before, "broadcaster_delivery_latency_seconds", count, channel=channel
        )
        assert timed == 1, channel
        inf = value(
            after,
            "broadcaster_delivery_latency_seconds",
            "broadcaster_delivery_latency_seconds_bucket",
            channel=channel,
            le="+Inf",
        )
        assert inf == value(after, "broadcaster_delivery_latency_seconds", count, channel=channel)

    target = stack.sandbox.bluesky.url.split("://", 1)[1].replace("/", "_")
    states = {
        s.labels["state"]: s.value
        for s in after["broadcaster_bluesky_health_state"]
        if s.labels["target"] == target
    }
    assert set(states) == {"up", "degraded", "partial", "down"}
    assert sum(states.values()) == 1
    assert value(after, "broadcaster_workers_alive", "broadcaster_workers_alive") >= 1
    for name in ("broadcaster_failovers", "broadcaster_backfills", "broadcaster_webhook_deliveries"):
        assert name in after  # declared even before the first one happens


def test_series_per_brand_need_the_admin_key(api, stack):
    r = api.post("/v1/posts", json={"text": f"Private {uuid.uuid4().hex[:8]}"}, headers=auth(ACME))
    assert r.status_code == 202, r.text
    wait_for(
        lambda: value(scrape(api), "broadcaster_deliveries", "broadcaster_deliveries_total", brand="acme"),
        timeout=30,
        what="a delivery counted for acme",
    )
    for headers in ({}, auth(ACME), {"Authorization": "Bearer wrong"}):
        public = scrape(api, headers)
        named = [s for samples in public.values() for s in samples if "brand" in s.labels]
        assert named == [], headers
        # The same families, summed over the brands.
        assert value(public, "broadcaster_deliveries", "broadcaster_deliveries_total", channel="bluesky") >= 1
        assert "broadcaster_failovers" in public
        assert value(public, "broadcaster_workers_alive", "broadcaster_workers_alive") >= 1
    full = scrape(api)
    assert value(full, "broadcaster_deliveries", "broadcaster_deliveries_total", brand="acme") >= 1


def test_it_is_ready_when_a_worker_and_the_scheduler_are_alive(api, stack):
    def ready():
        r = api.get("/readyz")
        return r.json() if r.status_code == 200 else None

    body = wait_for(ready, timeout=20, what="/readyz to answer 200")
    assert body["status"] == "ready"
    assert all(c["ok"] for c in body["checks"].values())
    assert api.get("/healthz").status_code == 200


def test_a_process_that_publishes_nothing_is_not_ready(api, stack):
    """Same Redis, but a deployment prefix no worker or scheduler serves, and a post long overdue."""
    idle = Settings(_env_file=None, key_prefix=own_prefix(f"idle-{uuid.uuid4().hex[:6]}"))
    api.app.dependency_overrides[settings_dep] = lambda: idle
    try:
        stack.redis.zadd(Keys(idle.key_prefix).sched, {"p_forgotten": time.time() - 3600})
        r = api.get("/readyz")
        assert r.status_code == 503
        checks = r.json()["checks"]
        assert checks["redis"]["ok"] is True
        assert checks["worker"]["ok"] is False
        assert checks["scheduler"]["ok"] is False
        assert checks["schedule"]["ok"] is False
        assert "1 posts overdue" in checks["schedule"]["detail"]
        assert api.get("/healthz").status_code == 200  # the process itself is fine
    finally:
        api.app.dependency_overrides.clear()
        stack.redis.delete(Keys(idle.key_prefix).sched)


def test_a_broken_brands_file_is_not_ready_and_says_which_file_and_why(api, stack):
    """Every route but the health ones answers 503 then: /readyz must not say ready."""
    saved = stack.brands_file.read_bytes()
    try:
        stack.brands_file.write_text("brands: [\n  - id: acme\n   api_key: x\n", encoding="utf-8")
        os.utime(stack.brands_file, (1_000_000, 1_000_000))  # surely not the cached file's time
        assert api.get("/v1/posts", headers=auth(ACME)).status_code == 503
        r = api.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "not ready"
        assert body["checks"]["brands"]["ok"] is False
        assert str(stack.brands_file) in body["reason"]
        assert "not valid YAML" in body["reason"]
        assert "\n" not in body["reason"]
    finally:
        stack.brands_file.write_bytes(saved)
        os.utime(stack.brands_file)  # a new modification time: every process re-reads it
    assert api.get("/readyz").json()["checks"]["brands"]["ok"] is True


def test_bluesky_probes_fill_the_probe_latency_histogram(api, stack):
    family, sample = "broadcaster_probe_latency_seconds", "broadcaster_probe_latency_seconds_count"
    before = value(scrape(api), family, sample, check="timeline")
    wait_for(
        lambda: value(scrape(api), family, sample, check="timeline") >= before + 2,
        timeout=30,
        what="two more timeline probes to be timed",
    )
