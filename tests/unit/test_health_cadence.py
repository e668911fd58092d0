"""Adaptive probing (pure): when the next probe is due, and what the default settings give.

`Sim` replays what the workers do, on a simulated clock: beat ticks every fast interval,
`probe_target` starts a probe when `start_probe` says one is due and fewer than
`max_in_flight` are running (`run_probe`'s slots), each probe's requests bounded by
`probe_timeout`, and its verdict goes through `observe`.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from broadcaster.core.health import (
    Health,
    State,
    Thresholds,
    next_probe_in,
    observe,
    probe_timeout,
    start_probe,
)

TH = Thresholds()
HARD_TIMEOUT_S = 5.0  # the settings' default health_probe_timeout_s
HEALTHY_S = 0.3  # a healthy probe (session, timeline, feed)
YEAR_S = 365 * 24 * 3600.0
# How long a failed probe takes, by the kind of outage (None: the request hangs to its timeout).
OUTAGES: dict[str, float | None] = {"5xx": 0.1, "refused": 0.01, "reset": 0.05, "hang": None}


# ---- next_probe_in / start_probe / probe_timeout -----------------------------------------------
def feed(signals, h=None, th=TH):
    h = h or Health()
    for i, ok in enumerate(signals):
        h, _ = observe(h, ok, th, float(i))
    return h


def test_a_healthy_target_is_probed_at_the_steady_interval():
    h = feed([True] * 3)
    assert next_probe_in(h, TH) == TH.probe_every_s
    assert h.due == 2.0 + TH.probe_every_s
    assert next_probe_in(Health(), TH) == TH.probe_every_s


def test_one_failure_switches_to_the_fast_interval_and_one_success_back():
    h = feed([True, False])
    assert next_probe_in(h, TH) == TH.confirm_every_s
    assert h.due == 1.0 + TH.confirm_every_s
    assert next_probe_in(feed([True], h), TH) == TH.probe_every_s


def test_degraded_is_probed_fast():
    th = Thresholds(confirm_after=0)
    h = feed([False, True] * 10, th=th)
    assert h.state == State.degraded
    assert h.failed_run == 0
    assert next_probe_in(h, th) == th.confirm_every_s


def test_down_is_probed_steadily_until_a_success_starts_the_recovery():
    down = feed([False] * TH.confirm_after)
    assert down.state == State.down
    assert next_probe_in(down, TH) == TH.probe_every_s
    recovering = feed([True], down)
    assert recovering.state == State.down
    assert next_probe_in(recovering, TH) == TH.confirm_every_s
    assert next_probe_in(feed([False], recovering), TH) == TH.probe_every_s


def test_the_fast_interval_is_never_slower_than_the_steady_one():
    th = Thresholds(probe_every_s=0.25, confirm_every_s=0.4)
    assert next_probe_in(feed([False], th=th), th) == 0.25
    assert th.max_in_flight == math.ceil(th.latency_budget_s / 0.25) + 1


def test_start_probe_waits_for_the_due_time_and_then_allows_another_after_the_fast_interval():
    h = feed([True])
    assert start_probe(h, TH, h.due - TH.fast_s * 0.6) is None
    assert start_probe(h, TH, h.due - TH.fast_s * 0.4) is not None  # beat's jitter
    started = start_probe(h, TH, h.due)
    assert started is not None
    assert started.due == h.due + TH.confirm_every_s  # no answer by then: another may start
    down = feed([False] * TH.confirm_after)
    started = start_probe(down, TH, down.due)
    assert started is not None
    assert started.due == down.due + TH.probe_every_s


def test_only_a_lone_steady_probe_of_a_healthy_target_gets_the_hard_timeout():
    healthy, failing = feed([True]), feed([True, False])
    assert probe_timeout(healthy, TH, HARD_TIMEOUT_S, alone=True) == HARD_TIMEOUT_S
    assert probe_timeout(healthy, TH, HARD_TIMEOUT_S, alone=False) == TH.latency_budget_s
    assert probe_timeout(failing, TH, HARD_TIMEOUT_S, alone=True) == TH.latency_budget_s
    assert probe_timeout(feed([False] * 7), TH, HARD_TIMEOUT_S, alone=True) == TH.latency_budget_s
    assert probe_timeout(healthy, TH, 1.0, alone=False) == 1.0  # never longer than the hard one


def test_a_run_rule_longer_than_the_window_leaves_it_to_the_window_rule():
    th = Thresholds(window=6, degrade_after=3, trip_after=4, confirm_after=7)  # the demo's
    h = feed([False] * 4, th=th)
    assert h.state == State.down


def test_settings_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="confirm_after"):
        Thresholds(confirm_after=-1)
    with pytest.raises(ValueError, match="positive"):
        Thresholds(confirm_every_s=0)


# ---- the workers' schedule on a simulated clock -------------------------------------------------
@dataclass
class Sim:
    """`world(start) -> (ok, seconds)`: a probe's verdict and duration (None: hangs to its timeout)."""

    world: Callable[[float], tuple[bool, float | None]]
    tick_offset: float = 0.0
    th: Thresholds = TH
    h: Health = field(default_factory=Health)
    t: float = 0.0
    in_flight: list[tuple[float, bool]] = field(default_factory=list)
    most_in_flight: int = 0
    signals: int = 0
    trips: int = 0

    def run_until(self, end: float, stop: Callable[[Health], bool] = lambda h: False) -> float | None:
        """Advance to `end`; the time `stop` first held after a signal, if it did."""
        tick = self.th.fast_s
        k = math.ceil((self.t - self.tick_offset) / tick)
        while True:
            at = self.tick_offset + k * tick
            if at > end:
                self.t = end
                return None
            for done in sorted(x for x in self.in_flight if x[0] <= at):
                self.in_flight.remove(done)
                before = self.h
                self.h, transition = observe(self.h, done[1], self.th, done[0])
                self.signals += 1
                if transition is not None and transition.went_down:
                    self.trips += 1
                if before is not self.h and stop(self.h):
                    self.t = done[0]
                    return done[0]
            self.t = at
            if len(self.in_flight) < self.th.max_in_flight:
                started = start_probe(self.h, self.th, at)
                if started is not None:
                    timeout = probe_timeout(self.h, self.th, HARD_TIMEOUT_S, alone=not self.in_flight)
                    self.h = started
                    ok, seconds = self.world(at)
                    self.in_flight.append((at + (timeout if seconds is None else seconds), ok))
                    self.most_in_flight = max(self.most_in_flight, len(self.in_flight))
            # Skip the ticks where nothing can happen: no probe answers and none is due (the
            # same ticks run as one by one, a healthy hour takes 30 steps, not 1,800).
            events = [x[0] for x in self.in_flight]
            if len(self.in_flight) < self.th.max_in_flight:
                events.append(self.h.due - tick / 2)
            k = max(k + 1, math.ceil((min(events, default=end) - self.tick_offset) / tick))


def outage(kind: str, broke: float, fixed: float) -> Callable[[float], tuple[bool, float | None]]:
    def world(start: float) -> tuple[bool, float | None]:
        if broke <= start < fixed:
            return False, OUTAGES[kind]
        return True, HEALTHY_S

    return world


def detection_and_recovery(kind: str, phase: float) -> tuple[float, float, int]:
    """An outage breaking at `phase` of the steady cycle and fixed 60 s into `down`."""
    broke, fixed = 100.0 + phase * TH.probe_every_s, math.inf
    state = {"fixed": fixed}
    sim = Sim(
        lambda start: outage(kind, broke, state["fixed"])(start),
        tick_offset=(phase * 7.31) % TH.fast_s,
    )
    sim.run_until(broke)
    down_at = sim.run_until(broke + 120, lambda h: h.effective == State.down)
    assert down_at is not None, f"{kind} at phase {phase}: never down"
    state["fixed"] = down_at + 60 + phase * TH.probe_every_s
    sim.run_until(state["fixed"])
    up_at = sim.run_until(state["fixed"] + 120, lambda h: h.effective == State.up)
    assert up_at is not None, f"{kind} at phase {phase}: never up again"
    return down_at - broke, up_at - state["fixed"], sim.most_in_flight


@pytest.mark.parametrize("kind", sorted(OUTAGES))
def test_an_outage_is_down_within_15_s_median_10_and_up_within_15_s_of_the_fix(kind):
    phases = [i / 200 for i in range(200)]
    runs = [detection_and_recovery(kind, p) for p in phases]
    detect = [d for d, _, _ in runs]
    recover = [r for _, r, _ in runs]
    print(
        f"{kind}: down p50 {statistics.median(detect):.1f} s max {max(detect):.1f} s; "
        f"up p50 {statistics.median(recover):.1f} s max {max(recover):.1f} s"
    )
    assert max(detect) <= 15.0
    assert statistics.median(detect) <= 10.0
    assert max(recover) <= 15.0
    assert max(n for _, _, n in runs) <= TH.max_in_flight  # a hang does not pile probes up


def test_the_default_probe_load_stays_steady_while_healthy():
    sim = Sim(lambda start: (True, HEALTHY_S))
    sim.run_until(3600)
    assert sim.most_in_flight == 1
    assert sim.signals <= 3600 / TH.probe_every_s + 1


# ---- false trips at a 10% random probe-error rate -------------------------------------------------
P_ERROR = 0.10


def _binomial_tail(n: int, k: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_false_trips_at_a_10_percent_error_rate_are_below_one_a_year():
    """Analytic bound, checked against a simulation of the schedule.

    Whatever the cadence, signals are independent with P(failed) = p, so a given signal
    trips at most with probability p^confirm_after (it ends such a run) plus
    P(Bin(window, p) >= trip_after) (its window holds that many failures): a union bound.
    The cadence sets how many signals a year there are; the simulation measures the mean
    time between probe starts under 10% random errors (most come after the steady interval).
    """
    per_signal = P_ERROR**TH.confirm_after + _binomial_tail(TH.window, TH.trip_after, P_ERROR)
    assert per_signal < 1.6e-7
    rng = random.Random(2026)
    sim = Sim(lambda start: (rng.random() >= P_ERROR, HEALTHY_S))
    hours = 150
    sim.run_until(hours * 3600)
    mean_gap = hours * 3600 / sim.signals
    # Without the fast probes after failures it would be 8.3 s: 0.9 of the gaps are steady.
    assert mean_gap > 0.85 * TH.probe_every_s
    per_year = per_signal * YEAR_S / mean_gap
    print(f"signal every {mean_gap:.2f} s; at most {per_year:.2f} false trips a year")
    assert per_year < 1.0
    assert sim.trips == 0


def test_a_seeded_random_walk_of_the_state_machine_at_10_percent_never_trips():
    rng = random.Random(13)
    h = Health()
    trips = 0
    for i in range(300_000):
        h, t = observe(h, rng.random() >= P_ERROR, TH, float(i))
        trips += t is not None and t.went_down  # one assert after the loop: pytest's rewriting is slow
    assert trips == 0
