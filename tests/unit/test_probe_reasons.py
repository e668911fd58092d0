"""Each probe check's answer gets a reason class (pure: no Redis, no network)."""

from __future__ import annotations

import pytest

from broadcaster.core.probe_reasons import FEED, Answer, Reason, classify, stops_probe, verdict

BUDGET = 3.0


@pytest.mark.parametrize(
    ("check", "answer", "reason"),
    [
        ("timeline", Answer(status=200, elapsed_s=0.2), Reason.healthy),
        ("timeline", Answer(status=200, elapsed_s=3.5), Reason.outage),  # over the latency budget
        ("timeline", Answer(status=502, error="UpstreamFailure"), Reason.outage),
        ("timeline", Answer(status=503), Reason.outage),
        ("timeline", Answer(transport="timeout"), Reason.outage),
        ("timeline", Answer(transport="connection"), Reason.outage),  # refused, reset
        (FEED, Answer(transport="unreadable"), Reason.outage),
        # 429: load shedding while our own budget is ample (or not said), ours when it is spent.
        (FEED, Answer(status=429, error="RateLimitExceeded"), Reason.outage),
        (FEED, Answer(status=429, budget_remaining=2400), Reason.outage),
        (FEED, Answer(status=429, budget_remaining=0), Reason.ours),
        ("session", Answer(status=401, error="AuthenticationRequired"), Reason.ours),
        ("timeline", Answer(status=400, error="ExpiredToken"), Reason.ours),
        (FEED, Answer(status=400, error="ExpiredToken"), Reason.ours),  # auth, even on a feed
        (FEED, Answer(status=403), Reason.ours),
        ("timeline", Answer(status=400, error="InvalidRequest"), Reason.ours),  # about our request
        # A probe feed answering 4xx: it does not exist on this network.
        (FEED, Answer(status=400, error="UnknownFeed"), Reason.misconfigured),
        (FEED, Answer(status=404), Reason.misconfigured),
    ],
)
def test_each_answer_has_its_reason_class(check, answer, reason):
    assert classify(check, answer, BUDGET) is reason


def test_the_verdict_counts_outages_and_leaves_misconfigured_checks_out():
    h, o, u, m = Reason.healthy, Reason.outage, Reason.ours, Reason.misconfigured
    assert verdict([h, h, m]) is True
    assert verdict([h, o, m]) is False
    assert verdict([h, u]) is None
    assert verdict([m]) is None
    assert verdict([]) is None
    assert verdict([u, o]) is False


def test_a_probe_passes_over_a_misconfigured_feed_and_stops_at_a_failure():
    assert not stops_probe(Reason.misconfigured)
    assert not stops_probe(Reason.healthy)
    assert stops_probe(Reason.outage)
    assert stops_probe(Reason.ours)
