"""What one probe of a Bluesky target concludes from its checks (no network)."""

from __future__ import annotations

from broadcaster.core.probe_reasons import Reason
from workers.health import Check, Probe

DISCOVER = "at://did:plc:x/app.bsky.feed.generator/whats-hot"


def probe(*checks: Check, error: str | None = None) -> Probe:
    return Probe("bsky.social", brand="acme", checks=list(checks), error=error)


def test_all_checks_passing_is_a_success():
    p = probe(
        Check.of("session", Reason.healthy, 12),
        Check.of("timeline", Reason.healthy, 40),
        Check.of("feed", Reason.healthy, 55, feed=DISCOVER),
    )
    assert p.verdict is True
    assert p.record()["latency_ms"] == 107
    assert p.record()["error"] is None


def test_one_failed_check_fails_the_probe_and_names_the_error():
    p = probe(
        Check.of("session", Reason.healthy, 12),
        Check.of("timeline", Reason.outage, 800, "no answer within 0.8 s"),
    )
    assert p.verdict is False
    assert p.record()["error"] == "no answer within 0.8 s"
    assert [(c["name"], c["ok"], c["reason"]) for c in p.record()["checks"]] == [
        ("session", True, "healthy"),
        ("timeline", False, "outage"),
    ]


def test_a_check_that_is_our_problem_cannot_tell():
    checks = (Check.of("session", Reason.healthy, 5), Check.of("timeline", Reason.ours, 3, "budget spent"))
    assert probe(*checks).verdict is None


def test_a_misconfigured_feed_is_left_out_of_the_verdict():
    bad_feed = Check.of("feed", Reason.misconfigured, 4, "probe feed ... UnknownFeed", feed=DISCOVER)
    ok = probe(Check.of("session", Reason.healthy, 5), Check.of("timeline", Reason.healthy, 9), bad_feed)
    assert ok.verdict is True  # recovery never waits on it
    failed = probe(Check.of("session", Reason.healthy, 5), Check.of("timeline", Reason.outage, 9), bad_feed)
    assert failed.verdict is False
    assert probe(bad_feed).verdict is None  # nothing but a check that cannot succeed


def test_no_usable_session_cannot_tell():
    p = probe(error="acme: Bluesky rejected the app password")
    assert p.verdict is None
    assert p.record()["error"] == "acme: Bluesky rejected the app password"
    assert p.record()["source"] == "probe"
