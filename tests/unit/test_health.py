"""The Bluesky health state machine: hysteresis, recovery, overrides (pure, no Redis)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.core.health import Health, Override, State, Thresholds, observe, set_override
from broadcaster.core.settings import Settings

DEFAULTS = Thresholds()
# The window rule alone (no run rule): what the tests of `trip_after` of `window` look at.
WINDOW_ONLY = Thresholds(confirm_after=0)


def run(signals, th=DEFAULTS, h=None):
    """Feed signals; returns the final health and (index, transition) for each transition."""
    h = h or Health()
    seen = []
    for i, ok in enumerate(signals):
        h, t = observe(h, ok, th, float(i))
        if t is not None:
            seen.append((i, t))
    return h, seen


def test_the_defaults_match_the_settings_defaults():
    assert Thresholds.from_settings(Settings(_env_file=None)) == DEFAULTS


def test_a_hard_outage_trips_after_confirm_after_failures_in_a_row():
    h, seen = run([True, False, True] + [False] * DEFAULTS.confirm_after)
    assert h.state == State.down
    assert [(i, t.after.state) for i, t in seen] == [(2 + DEFAULTS.confirm_after, State.down)]
    assert seen[0][1].reason == f"{DEFAULTS.confirm_after} signals in a row failed"
    h, seen = run([False] * (DEFAULTS.confirm_after - 1) + [True] + [False] * 2)
    assert h.state == State.up
    assert seen == []


def test_the_window_rule_trips_after_trip_after_failures_passing_through_degraded():
    h, seen = run([False] * DEFAULTS.trip_after, WINDOW_ONLY)
    assert h.state == State.down
    assert h.effective == State.down
    assert [(i, t.after.state) for i, t in seen] == [
        (DEFAULTS.degrade_after - 1, State.degraded),
        (DEFAULTS.trip_after - 1, State.down),
    ]
    assert seen[-1][1].reason == f"{DEFAULTS.trip_after} of the last {DEFAULTS.trip_after} signals failed"


def test_one_failure_short_of_the_threshold_does_not_trip():
    h, _ = run([False] * (DEFAULTS.trip_after - 1), WINDOW_ONLY)
    assert h.state == State.degraded
    assert h.effective == State.degraded  # still routed to Bluesky: only `down` reroutes


def test_it_recovers_only_after_recover_after_successes_in_a_row():
    down, _ = run([False] * DEFAULTS.trip_after, WINDOW_ONLY)
    h, seen = run(
        [True] * (DEFAULTS.recover_after - 1) + [False] + [True] * (DEFAULTS.recover_after - 1),
        WINDOW_ONLY,
        h=down,
    )
    assert h.state == State.down
    assert seen == []
    h, seen = run([True], WINDOW_ONLY, h=h)
    assert h.state == State.up
    assert seen[0][1].reason == f"{DEFAULTS.recover_after} successes in a row"


def test_a_recovered_target_starts_with_a_fresh_window():
    down, _ = run([False] * DEFAULTS.trip_after, WINDOW_ONLY)
    up, _ = run([True] * DEFAULTS.recover_after, WINDOW_ONLY, h=down)
    assert up.window == ""
    h, seen = run([False] * (DEFAULTS.degrade_after - 1), WINDOW_ONLY, h=up)
    assert h.state == State.up
    assert seen == []


def test_a_degraded_target_comes_back_up_after_successes_in_a_row():
    degraded, _ = run([False] * DEFAULTS.degrade_after, WINDOW_ONLY)
    assert degraded.state == State.degraded
    h, seen = run([True] * DEFAULTS.recover_after, WINDOW_ONLY, h=degraded)
    assert h.state == State.up
    assert len(seen) == 1


@pytest.mark.parametrize("seed", range(5))
def test_the_defaults_do_not_flip_under_a_10_percent_random_error_rate(seed):
    rng = random.Random(seed)
    h, seen = run([rng.random() >= 0.10 for _ in range(20_000)])
    assert h.failures > 0 or h.window.count("1") > 0
    assert seen == [], f"flipped at {[(i, t.after.state.value) for i, t in seen]}"


def test_a_10_percent_error_rate_still_shows_failed_signals_in_the_window():
    rng = random.Random(7)
    h, _ = run([rng.random() >= 0.10 for _ in range(200)])
    assert 0 < h.failures < DEFAULTS.degrade_after


def test_half_the_signals_failing_trips_it():
    rng = random.Random(3)
    _h, seen = run([rng.random() >= 0.5 for _ in range(2_000)])
    assert any(t.after.state == State.down for _, t in seen)


def test_an_override_wins_and_auto_hands_back_to_the_signals():
    h = Health()
    h, t = set_override(h, Override.down, "status page says so", 10.0)
    assert (h.state, h.effective, h.outage) == (State.up, State.down, 1)
    assert t is not None
    assert t.went_down
    assert t.kind == "override"
    h, _ = run([True] * 10, h=h)
    assert h.effective == State.down
    h, t = set_override(h, Override.auto, "over", 20.0)
    assert h.effective == State.up
    assert t is not None
    assert t.came_back
    assert h.effective_since == 20.0


def test_setting_the_same_override_again_is_no_transition():
    h, _ = set_override(Health(), Override.up, "ignore the noise", 1.0)
    h2, t = set_override(h, Override.up, "ignore the noise", 2.0)
    assert t is None
    assert h2 == h


def test_an_override_up_keeps_routing_on_bluesky_while_the_signals_say_down():
    h, _ = set_override(Health(), Override.up, "false alarm", 1.0)
    h, seen = run([False] * DEFAULTS.trip_after, h=h)
    assert h.state == State.down
    assert h.effective == State.up
    assert h.outage == 0
    assert not any(t.went_down for _, t in seen)


def test_thresholds_that_do_not_fit_the_window_are_refused():
    with pytest.raises(ValueError, match="trip_after"):
        Thresholds(window=10, degrade_after=5, trip_after=11)
    with pytest.raises(ValueError, match="degrade_after"):
        Thresholds(window=10, degrade_after=8, trip_after=6)


# ---- properties ---------------------------------------------------------------------------------
@st.composite
def thresholds(draw):
    window = draw(st.integers(1, 12))
    trip = draw(st.integers(1, window))
    degrade = draw(st.integers(1, trip))
    recover = draw(st.integers(1, 6))
    return Thresholds(
        window=window, degrade_after=degrade, trip_after=trip, recover_after=recover, confirm_after=0
    )


signals = st.lists(st.booleans(), max_size=200)


@given(th=thresholds(), xs=signals)
def test_it_never_trips_without_trip_after_failures_among_the_last_window_signals(th, xs):
    _, seen = run(xs, th)
    for i, t in seen:
        if t.after.state == State.down:
            recent = xs[max(0, i + 1 - th.window) : i + 1]
            assert recent.count(False) >= th.trip_after


@given(th=thresholds(), xs=signals)
def test_it_never_recovers_without_recover_after_successes_in_a_row(th, xs):
    _, seen = run(xs, th)
    for i, t in seen:
        if t.after.state == State.up:
            assert i + 1 >= th.recover_after
            assert all(xs[i + 1 - th.recover_after : i + 1])


@given(th=thresholds(), xs=signals)
def test_trip_after_failures_in_a_row_always_end_down_and_recover_after_successes_always_end_up(th, xs):
    h, _ = run(xs, th)
    down, _ = run([False] * th.trip_after, th, h)
    assert down.state == State.down
    up, _ = run([True] * th.recover_after, th, h)
    assert up.state == State.up


@given(th=thresholds(), xs=signals)
def test_sparse_failures_never_leave_up(th, xs):
    """The deterministic core of 'a 10% error rate does not flap': fewer than `degrade_after`
    failures in every stretch of `window` signals keeps the target up."""
    dense = any(
        xs[max(0, i + 1 - th.window) : i + 1].count(False) >= th.degrade_after for i in range(len(xs))
    )
    h, seen = run(xs, th)
    if not dense:
        assert seen == []
        assert h.state == State.up


@given(th=thresholds(), xs=signals)
def test_two_trips_are_at_least_a_recovery_and_a_trip_apart(th, xs):
    _, seen = run(xs, th)
    trips = [i for i, t in seen if t.after.state == State.down]
    for a, b in itertools.pairwise(trips):
        assert b - a >= th.recover_after + th.trip_after


@given(th=thresholds(), xs=signals)
def test_every_transition_changes_the_state(th, xs):
    _, seen = run(xs, th)
    for _, t in seen:
        assert t.before.state != t.after.state


@given(
    th=thresholds(),
    steps=st.lists(
        st.one_of(st.booleans(), st.sampled_from([Override.up, Override.down, Override.auto])), max_size=200
    ),
)
def test_the_outage_count_grows_once_per_effective_trip_and_the_override_always_wins(th, steps):
    h = Health()
    went_down = 0
    for i, step in enumerate(steps):
        if isinstance(step, Override):
            h, t = set_override(h, step, f"op {i}", float(i))
        else:
            h, t = observe(h, step, th, float(i))
        if t is not None and t.went_down:
            resumed = t.after.outage == t.before.outage
            if resumed:  # only back to `auto`, onto the signals' own outage that was numbered last
                assert (t.kind, t.after.override, t.after.state) == ("override", Override.auto, State.down)
                assert t.after.state_outage == t.after.outage > 0
            else:
                went_down += 1
        expected = h.state if h.override == Override.auto else State(h.override.value)
        assert h.effective == expected
    assert h.outage == went_down


def _down(th: Thresholds, h: Health | None = None) -> Health:
    h = h or Health()
    for i in range(th.trip_after):
        h, _ = observe(h, False, th, float(i))
    return h


def test_back_to_auto_during_the_signals_outage_numbers_no_new_outage():
    """The false notice: down by the signals, override `up`, then `auto` again."""
    th = Thresholds()
    h = _down(th)
    assert (h.effective, h.outage) == (State.down, 1)
    h, t = set_override(h, Override.up, "checking", 100.0)
    assert t is not None
    assert t.came_back
    h, t = set_override(h, Override.auto, "done", 110.0)
    assert t is not None
    assert t.went_down
    assert (h.effective, h.outage) == (State.down, 1)  # the same outage: its notice went out


def test_back_to_auto_onto_a_down_nobody_was_told_of_is_a_new_outage():
    th = Thresholds()
    h, _ = set_override(Health(), Override.up, "known noise", 1.0)
    h = _down(th, h)  # the signals go down under the override: no outage numbered, no notice
    assert (h.state, h.effective, h.outage) == (State.down, State.up, 0)
    h, t = set_override(h, Override.auto, "not noise after all", 50.0)
    assert t is not None
    assert t.went_down
    assert h.outage == 1


def test_a_later_outage_of_the_signals_is_numbered_anew():
    th = Thresholds()
    h = _down(th)
    for i in range(th.recover_after):
        h, _ = observe(h, True, th, 100.0 + i)
    assert (h.effective, h.state_outage) == (State.up, 0)
    h = _down(th, h)
    assert h.outage == 2


def test_the_onset_is_the_first_failure_of_the_run_that_tripped():
    th = Thresholds()
    h = Health()
    h, _ = observe(h, False, th, 5.0)  # noise...
    for i in range(th.recover_after):
        h, _ = observe(h, True, th, 10.0 + i)
    assert h.onset == 0.0  # ...healthy again: forgotten
    trips = []
    for i in range(th.trip_after):
        h, t = observe(h, False, th, 100.0 + i)
        trips += [t] if t is not None and t.went_down else []
    assert len(trips) == 1
    assert trips[0].after.onset == h.onset == 100.0
    h, _ = observe(h, True, th, 200.0)  # one success while down keeps the outage's onset
    assert h.onset == 100.0
    for i in range(th.recover_after):
        h, _ = observe(h, True, th, 300.0 + i)
    assert (h.effective, h.onset) == (State.up, 0.0)
