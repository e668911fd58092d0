"""Each benchmark, run tiny, runs to completion and writes the JSON the docs are built from.

No timing is asserted: the figures of a smoke run mean nothing. What is asserted is that
every stage ran (posts delivered, trials reacted, requests answered) and that the JSON
holds the fields docs/benchmarks.md reports.
"""

from __future__ import annotations

import json

import pytest

from bench.report import RESULTS
from bench.run import run_one

pytestmark = [pytest.mark.bench, pytest.mark.integration]


def saved(name: str) -> dict:
    """What the smoke run of benchmark `name` wrote."""
    return json.loads((RESULTS / f"{name}-smoke.json").read_text())


def test_it_measures_our_throughput_beside_the_raw_limit_and_apprise():
    run_one("throughput", smoke=True, overrides={})
    one = saved("throughput")["by_workers"]["1"]
    run = one["runs"][0]
    assert run["ours"]["complete"]
    assert run["ours"]["states"] == {"delivered": 50}
    assert run["raw"]["deliveries"] == 50, "every raw request answered 2xx"
    assert run["apprise"]["deliveries"] == 8, "Apprise reached both fakes for each message"
    assert set(run["load_avg_before"]) == {"ours", "raw", "apprise"}
    assert "worker1" in run["ours"]["cpu_seconds_by_process"]
    assert run["ours"]["worker_cpu_ms_per_delivery"] > 0
    assert run["ours"]["redis_commands_per_delivery"]["evalsha"] > 0, "the ledger's verbs ran"
    assert run["ours"]["queued_in_s"] > 0
    for key in ("ours_per_s", "raw_per_s", "apprise_per_s", "ours_vs_raw", "ours_vs_apprise"):
        assert one[key] > 0


def test_it_measures_api_latency_beside_a_bare_route():
    run_one("api_latency", smoke=True, overrides={})
    level = saved("api_latency")["levels"][0]
    assert level["post_errors"] == 0
    assert level["bare_errors"] == 0
    for kind in ("post", "bare"):
        assert level[kind][0]["ok"] == level[kind][0]["sent"] > 0
        assert level[f"{kind}_median"]["p99_ms"] >= level[f"{kind}_median"]["p50_ms"] > 0
    poll = saved("api_latency")["events_poll"]
    assert poll["other_events"] == 2_000
    # The brand's ids, then the page's one event by id: the other brand's 2,000 are never read.
    assert poll["xrange_per_poll"] == 2


def test_it_reroutes_a_backlog_to_the_failover_channels():
    run_one("backlog", smoke=True, overrides={})
    data = saved("backlog")
    assert data["complete"]
    (one,) = data["runs"]
    assert one["delivered_by_channel"] == {"mastodon": 40, "rss": 40}
    assert one["sample_bluesky_state"] == "held"
    assert one["seconds"] > 0
    assert data["seconds"] == one["seconds"]
    assert len(one["load_avg_before"]) == 3
    assert data["redis_server"]["version"].count(".") == 2, "the version the server itself reports"


def test_it_measures_redis_bytes_per_post_and_worker_memory():
    run_one("memory", smoke=True, overrides={})
    data = saved("memory")
    for shape in ("default_route", "all_five"):
        assert data["redis"][shape]["complete"]
        assert data["redis"][shape]["post_hash_bytes"] > 0
        assert data["redis"][shape]["events_per_post"] >= 2
    workers = data["workers"]
    assert workers["deliveries"] >= 40
    assert len(workers["checkpoints"]) == 2
    assert workers["last_mb"] > 0


def test_it_measures_cpu_per_telegram_send_for_each_path_side_by_side():
    run_one("telegram_cpu", smoke=True, overrides={})
    variants = saved("telegram_cpu")["variants"]
    assert len(variants) == 4
    for figures in variants.values():
        assert figures["cpu_ms_per_send"] > 0
        assert figures["sends_per_s"] > 0
    assert variants["before: hand-off, Bot.send_message"]["vs_before"] == 1.0
