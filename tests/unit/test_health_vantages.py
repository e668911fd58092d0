"""Several vantage points: a quorum decides, `partial` when only some fail (pure, no Redis)."""

from __future__ import annotations

import pytest

from broadcaster.core.health import (
    Health,
    Signal,
    State,
    Thresholds,
    down_for,
    observe,
    quorum_signal,
)

TH = Thresholds()


@pytest.mark.parametrize(
    ("verdicts", "quorum", "signal"),
    [
        ([True], 0, Signal.ok),
        ([False], 0, Signal.failed),  # one vantage: its verdict
        ([False, True], 0, Signal.partial),  # a majority of 2 is 2
        ([False, False], 0, Signal.failed),
        ([False, False, True], 0, Signal.failed),  # 2 of 3
        ([False, True, True], 0, Signal.partial),
        ([False, None, True], 0, Signal.partial),  # could not tell: left out
        ([False, None, None], 0, Signal.failed),
        ([False, True, True], 1, Signal.failed),  # k = 1: any vantage failing is an outage
        ([False, False, True], 3, Signal.partial),  # k = 3: all three must fail
        ([False, False], 3, Signal.failed),  # k never exceeds the vantages that could tell
        ([None, None], 0, None),
        ([], 0, None),
    ],
)
def test_a_quorum_of_vantages_decides(verdicts, quorum, signal):
    assert quorum_signal(verdicts, quorum) == signal


def feed(h: Health, signals: str, start: float = 0.0) -> tuple[Health, list]:
    """'1' ok, '0' failed, 'p' partial, one a second."""
    transitions = []
    for i, c in enumerate(signals):
        h, t = observe(h, c == "1", TH, start + i, partial=c == "p")
        if t:
            transitions.append(t)
    return h, transitions


def test_partial_signals_in_a_row_make_partial_an_outage_once_then_up():
    h, ts = feed(Health(), "1" * 5 + "p" * TH.confirm_after)
    assert h.state == h.effective == State.partial
    assert [t.after.state for t in ts] == [State.partial]
    assert ts[0].went_down
    assert h.outage == 1
    assert h.onset == 5  # the first partial signal
    h, ts = feed(h, "1" * TH.recover_after, start=100)
    assert h.state == State.up
    assert ts[-1].came_back
    assert h.outage == 1


def test_partial_that_becomes_a_full_outage_is_the_same_outage():
    h, _ = feed(Health(), "p" * TH.confirm_after)
    h, ts = feed(h, "0" * TH.confirm_after, start=50)
    assert h.state == State.down
    assert [t.after.state for t in ts] == [State.down]
    assert not ts[0].went_down  # already out: no second notice
    assert h.outage == 1


def test_a_run_of_failures_still_trips_down_directly():
    h, ts = feed(Health(), "0" * TH.confirm_after)
    assert h.state == State.down
    assert [t.after.state for t in ts] == [State.down]


def test_each_brand_policy_reads_partial_its_own_way():
    h, _ = feed(Health(), "p" * TH.confirm_after)
    assert down_for(h, "failover")
    assert not down_for(h, "notice_only")
    down, _ = feed(Health(), "0" * TH.confirm_after)
    assert down_for(down, "notice_only")
    assert not down_for(Health(), "failover")


def test_partial_is_probed_at_the_steady_cadence_until_something_changes():
    h, _ = feed(Health(), "p" * TH.confirm_after)
    assert h.due - (TH.confirm_after - 1) == pytest.approx(TH.probe_every_s)
    h, _ = feed(h, "1", start=100)
    assert h.due - 100 == pytest.approx(TH.fast_s)  # a recovery under way


def test_a_partial_signal_asks_for_fast_confirmation_like_a_failure():
    h, _ = feed(Health(), "1p")
    assert h.due - 1 == pytest.approx(TH.fast_s)
