"""Prometheus metrics kept in Redis, so the API and every worker report the same numbers.

Counters and histogram buckets are fields of two Redis hashes (`metrics:c`, `metrics:h`)
incremented where the change happens (the ledger's delivery updates, the probes, the
webhook sender); gauges are read from the ledger at scrape time. `/metrics` renders
them with prometheus_client, so any Prometheus (or `prometheus_client.parser`) reads it.

Field layout: `<metric>|<label>=<value>,<label>=<value>` for counters, and the same plus
`|<le>`, `|sum`, `|count` for histograms (buckets stored non-cumulative).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import cast

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.core import (
    Metric as MetricFamily,  # the base of the families (this module has a Metric of its own)
)

from broadcaster.core.models import ACTIVE_STATES, Delivery, DeliveryState, Post
from broadcaster.core.settings import Settings
from broadcaster.ledger.keys import Keys

log = logging.getLogger("broadcaster.ledger.metrics")

LATENCY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)
PROBE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
HEALTH_STATES = ("up", "degraded", "partial", "down")


@dataclass(frozen=True)
class Metric:
    name: str
    doc: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


DELIVERIES = Metric(
    "broadcaster_deliveries",
    "Delivery state changes, by brand, channel and the state entered.",
    ("brand", "channel", "state"),
)
FAILOVERS = Metric(
    "broadcaster_failovers", "Posts rerouted to the failover channels because Bluesky was down.", ("brand",)
)
BACKFILLS = Metric(
    "broadcaster_backfills", "Held Bluesky deliveries released for backfill after recovery.", ("brand",)
)
WEBHOOKS = Metric(
    "broadcaster_webhook_deliveries", "Brand webhook deliveries by outcome.", ("brand", "event", "state")
)
PROBES = Metric(
    "broadcaster_probes", "Bluesky health probes by target, check and outcome.", ("target", "check", "ok")
)
LATENCY = Metric(
    "broadcaster_delivery_latency_seconds",
    "Time from a post being due (queued, or its scheduled time) to delivered, per channel.",
    ("channel",),
    LATENCY_BUCKETS,
)
PROBE_LATENCY = Metric(
    "broadcaster_probe_latency_seconds",
    "Duration of each Bluesky health probe check, per target and check.",
    ("target", "check"),
    PROBE_BUCKETS,
)
COUNTERS = (DELIVERIES, FAILOVERS, BACKFILLS, WEBHOOKS, PROBES)
HISTOGRAMS = (LATENCY, PROBE_LATENCY)


def _clean(value: str) -> str:
    return str(value).replace("|", "_").replace(",", "_").replace("=", "_")


def _field(metric: Metric, labels: dict[str, str]) -> str:
    missing = set(metric.labels) - set(labels)
    if missing:
        raise ValueError(f"{metric.name} needs labels {sorted(missing)}")
    return metric.name + "|" + ",".join(f"{k}={_clean(labels[k])}" for k in metric.labels)


def _parse_labels(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if pair)


def counter_field(metric: Metric, **labels: str) -> str:
    """The hash field of one counter series (for writers that increment it themselves)."""
    return _field(metric, labels)


def count(r: redis.Redis, settings: Settings, metric: Metric, n: int = 1, **labels: str) -> None:
    r.hincrby(Keys(settings.key_prefix).counters, _field(metric, labels), n)


def observe(r: redis.Redis, settings: Settings, metric: Metric, value: float, **labels: str) -> None:
    """Add one observation to a histogram (one pipeline round trip)."""
    buckets, sums = _observation(metric, value, **labels)
    key = Keys(settings.key_prefix).histograms
    pipe = r.pipeline(transaction=False)
    for f, n in buckets.items():
        pipe.hincrby(key, f, n)
    for f, v in sums.items():
        pipe.hincrbyfloat(key, f, v)
    pipe.execute()


@dataclass
class Increments:
    """Counter and histogram increments, applied by whoever writes the change (one round trip)."""

    counters: dict[str, int]
    buckets: dict[str, int]
    sums: dict[str, float]

    def add(self, other: Increments) -> None:
        for mine, theirs in ((self.counters, other.counters), (self.buckets, other.buckets)):
            for f, n in theirs.items():
                mine[f] = mine.get(f, 0) + n
        for f, v in other.sums.items():
            self.sums[f] = self.sums.get(f, 0.0) + v

    def as_json_dict(self) -> dict[str, dict[str, str]]:
        """For a Lua script: numbers as strings, so Lua's number formatting never rounds them."""
        return {
            "c": {f: str(n) for f, n in self.counters.items()},
            "h": {f: str(n) for f, n in self.buckets.items()},
            "hf": {f: repr(float(v)) for f, v in self.sums.items()},
        }


def _observation(metric: Metric, value: float, **labels: str) -> tuple[dict[str, int], dict[str, float]]:
    base = _field(metric, labels)
    bucket = next((b for b in metric.buckets if value <= b), math.inf)
    return {f"{base}|{bucket}": 1, f"{base}|count": 1}, {f"{base}|sum": max(value, 0.0)}


def delivery_change_increments(post: Post, old: Delivery | None, new: Delivery) -> Increments:
    """Count a delivery entering a state; time it when delivered; count a backfill's release."""
    labels = {"brand": post.brand, "channel": new.channel, "state": new.state.value}
    counters = {_field(DELIVERIES, labels): 1}
    buckets: dict[str, int] = {}
    sums: dict[str, float] = {}
    if new.state == DeliveryState.delivered:
        due = max(post.created_at, post.scheduled_at)
        done = new.delivered_at or new.updated_at
        buckets, sums = _observation(LATENCY, (done - due).total_seconds(), channel=new.channel)
    if old is not None and old.state == DeliveryState.held and new.state in ACTIVE_STATES:
        counters[_field(BACKFILLS, {"brand": post.brand})] = 1
    return Increments(counters, buckets, sums)


def observe_probe(
    r: redis.Redis, settings: Settings, target: str, check: str, seconds: float, ok: bool
) -> None:
    """For the health watcher: one probe check's duration and outcome."""
    observe(r, settings, PROBE_LATENCY, seconds, target=target, check=check)
    count(r, settings, PROBES, target=target, check=check, ok="true" if ok else "false")


# ---- exposition ----------------------------------------------------------------------------------
def _counter_families(raw: dict[str, str], brands: bool = True) -> Iterator[CounterMetricFamily]:
    """The counters; without `brands`, summed over the brands (no `brand` label at all)."""
    by_name: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
    for f, v in raw.items():
        name, _, labels = f.partition("|")
        metric = next((m for m in COUNTERS if m.name == name), None)
        if metric is None:
            continue
        parsed = _parse_labels(labels)
        by_name[name][tuple(parsed.get(k, "") for k in _shown_labels(metric, brands))] += float(v)
    for metric in COUNTERS:
        fam = CounterMetricFamily(metric.name, metric.doc, labels=_shown_labels(metric, brands))
        for series, value in sorted(by_name.get(metric.name, {}).items()):
            fam.add_metric(list(series), value)
        yield fam


def _shown_labels(metric: Metric, brands: bool) -> tuple[str, ...]:
    return metric.labels if brands else tuple(k for k in metric.labels if k != "brand")


def _histogram_families(raw: dict[str, str]) -> Iterator[HistogramMetricFamily]:
    series: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for f, v in raw.items():
        name, labels, part = f.split("|", 2)
        series[(name, labels)][part] = float(v)
    for metric in HISTOGRAMS:
        fam = HistogramMetricFamily(metric.name, metric.doc, labels=metric.labels)
        for (name, labels), parts in sorted(series.items()):
            if name != metric.name:
                continue
            running = 0.0
            buckets = []
            for b in (*metric.buckets, math.inf):
                running += parts.get(str(b), 0.0)
                buckets.append(("+Inf" if b == math.inf else str(b), running))
            lab = _parse_labels(labels)
            fam.add_metric([lab.get(k, "") for k in metric.labels], buckets, parts.get("sum", 0.0))
        yield fam


class LedgerCollector:
    """Reads the counters, histograms and live gauges from Redis at scrape time."""

    def __init__(
        self, r: redis.Redis, settings: Settings, health_targets: Iterable[str], brands: bool = True
    ):
        self.r, self.settings, self.targets = r, settings, sorted(set(health_targets))
        self.brands = brands

    def collect(self) -> Iterator[MetricFamily]:
        keys = Keys(self.settings.key_prefix)
        now = time.time()
        # Targets of the configured brands, and any the health watcher has observed (the
        # connection decodes replies: str, where redis-py's types say bytes | str).
        observed = cast("set[str]", self.r.smembers(keys.health_targets))
        targets = sorted(set(self.targets) | observed)
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.counters)
        pipe.hgetall(keys.histograms)
        pipe.zcard(keys.sched)
        pipe.zcount(keys.sched, "-inf", now - self.settings.ready_overdue_margin_s)
        pipe.zcard(keys.inflight)
        pipe.hgetall(keys.worker_heartbeats)
        for target in targets:
            pipe.hgetall(keys.health(target))
            pipe.lrange(keys.health(target, "probes"), 0, 19)
        counters, hists, scheduled, overdue, inflight, workers, *per_target = pipe.execute()
        health, probes = per_target[0::2], per_target[1::2]
        yield from _counter_families(counters, self.brands)
        yield from _histogram_families(hists)
        yield GaugeMetricFamily("broadcaster_scheduled_posts", "Posts waiting for their time.", scheduled)
        yield GaugeMetricFamily(
            "broadcaster_overdue_posts", "Posts due longer ago than the readiness margin.", overdue
        )
        yield GaugeMetricFamily(
            "broadcaster_inflight_deliveries", "Deliveries handed to workers, not yet final.", inflight
        )
        alive = sum(1 for ts in workers.values() if now - float(ts) < self.settings.ready_worker_max_age_s)
        yield GaugeMetricFamily("broadcaster_workers_alive", "Workers with a fresh heartbeat.", alive)
        fam = GaugeMetricFamily(
            "broadcaster_bluesky_health_state",
            "1 for the Bluesky target's current effective state (up, degraded, partial, down).",
            labels=("target", "state"),
        )
        for target, h in zip(targets, health, strict=True):
            current = h.get("effective") or h.get("state") or "up"
            for state in HEALTH_STATES:
                fam.add_metric([target, state], 1.0 if current == state else 0.0)
        yield fam
        yield _last_probe_family(targets, probes)


def _last_probe_family(targets: list[str], probes: list[list[str]]) -> GaugeMetricFamily:
    """The latest probe of each target, per check (from the health watcher's probe log)."""
    fam = GaugeMetricFamily(
        "broadcaster_probe_last_latency_seconds",
        "Duration of each check of the latest Bluesky probe, per target ('total' = whole probe).",
        labels=("target", "check"),
    )
    for target, records in zip(targets, probes, strict=True):
        for raw in records:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if record.get("source") != "probe" or not record.get("checks"):
                continue
            for c in record["checks"]:
                fam.add_metric([target, str(c.get("name"))], float(c.get("ms") or 0) / 1000)
            fam.add_metric([target, "total"], float(record.get("latency_ms") or 0) / 1000)
            break
    return fam


def render(r: redis.Redis, settings: Settings, health_targets: Iterable[str], brands: bool = True) -> bytes:
    """The Prometheus text exposition of everything above; without `brands`, no series names a
    brand (the counters are summed over the brands)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(r, settings, health_targets, brands))
    return generate_latest(registry)
