"""What one probe of a Bluesky target concludes from its checks (no network)."""

from __future__ import annotations

from workers.health import Check, Probe


def probe(*checks: Check, error: str | None = None) -> Probe:
    return Probe("bsky.social", brand="acme", checks=list(checks), error=error)


def test_all_checks_passing_is_a_success():
    p = probe(Check("session", True, 12), Check("timeline", True, 40), Check("feed", True, 55))
    assert p.verdict is True
    assert p.record()["latency_ms"] == 107
    assert p.record()["error"] is None


def test_one_failed_check_fails_the_probe_and_names_the_error():
    p = probe(Check("session", True, 12), Check("timeline", False, 800, "no answer within 0.8 s"))
    assert p.verdict is False
    assert p.record()["error"] == "no answer within 0.8 s"
    assert [c["name"] for c in p.record()["checks"]] == ["session", "timeline"]


def test_a_rate_limited_check_cannot_tell():
    assert probe(Check("session", True, 5), Check("timeline", None, 3, "rate-limited")).verdict is None


def test_no_usable_session_cannot_tell():
    p = probe(error="acme: Bluesky rejected the app password")
    assert p.verdict is None
    assert p.record()["error"] == "acme: Bluesky rejected the app password"
    assert p.record()["source"] == "probe"
