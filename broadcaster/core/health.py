"""Bluesky health as a pure state machine: signals in, `up` / `degraded` / `down` out.

A signal is one observation of a target (a PDS and the AppView behind it): a probe of
the session and the feeds, or a Bluesky send that failed with a 5xx or a timeout.
Hysteresis keeps a flaky-but-working Bluesky from flapping:

* `up` -> `degraded` when `degrade_after` of the last `window` signals failed: worth
  a look, posts still go to Bluesky;
* `up` / `degraded` -> `down` when the last `confirm_after` signals all failed (a hard
  outage), or when `trip_after` of the last `window` signals failed (a partial one):
  posts are rerouted;
* `degraded` / `down` -> `up` after `recover_after` successes in a row; the window
  starts afresh, so failures from before cannot trip it again at once.

Adaptive probing. `next_probe_in` says when the next probe is due: every `probe_every_s`
(steady) while nothing is in doubt; every `confirm_every_s` (fast) as soon as the last
signal failed (a run that could trip), while `degraded`, and while `down` once a success
starts a recovery. A probe with no answer after `confirm_every_s` does not hold up the
next one: up to `max_in_flight` probes of a target run at once, each bounded by the
latency budget, so a hang yields one failed signal every `confirm_every_s`, not one per
timeout, and never piles up more than `max_in_flight` requests.

False trips (the defaults: steady 7 s, fast 0.4 s, 7 in a row, 12 of 20, 5 to recover).
With independent probe errors at rate p = 0.1, whatever the cadence, a given signal
ends a run of 7 failures with probability at most p^7 = 1e-7 and ends a window of 20
holding 12 or more failures with probability P(Bin(20, 0.1) >= 12) = 5.8e-8; by the union
bound a signal trips with probability at most 1.58e-7. The cadence only sets how many
signals a year there are: after a success the next one comes 7 s later (plus the probe's
own time and beat's tick), after a failure 0.4 s later, so a signal takes on average at
least 0.9 * 7 + 0.1 * 0.4 = 6.34 s: at most 4.97 million signals a year, at most 0.79
false trips a year (the simulation measures 6.56 s a signal: 0.76; the union bound counts
overlapping windows more than once, so the real figure is lower). `degraded` (10 of 20)
comes about once in 140,000 signals (35 times a year at 10%: worth a look, nothing
reroutes). Detection: a hard outage is first seen by the next steady probe (within 7 s),
then 6 fast probes confirm it (2.4 s; in a hang 5.4 s, each bounded by the 3 s budget);
recovery needs the next probe (within 7 s, 10 s if a hung one was in flight) and 4 fast
ones. `tests/unit/test_health_cadence.py` simulates both.

An operator's override (`up` / `down`) wins over what the signals say; `auto` hands back
to them. Routing reads only `effective`.

No I/O here: `broadcaster.ledger.health` keeps a `Health` in Redis and applies these
functions atomically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broadcaster.core.settings import Settings


class State(StrEnum):
    up = "up"
    degraded = "degraded"
    partial = "partial"  # some vantages fail, the others do not: each brand's `on_partial` decides
    down = "down"


OUT = (State.partial, State.down)  # an outage: numbered, noticed, recovered from


class Override(StrEnum):
    auto = "auto"  # the signals decide
    up = "up"
    down = "down"


OK, FAILED, PARTIAL = "1", "0", "p"  # a signal: every vantage fine, a quorum failed, some failed


class Signal(StrEnum):
    ok = "ok"
    failed = "failed"
    partial = "partial"


def quorum_signal(verdicts: Iterable[bool | None], quorum: int = 0) -> Signal | None:
    """One signal from the vantages' verdicts (None: could not tell, left out): `failed` when at
    least `quorum` of those that could tell failed (0: a majority of them; never more than
    there are), `partial` when some but fewer failed, `ok` when none did; None when none could
    tell. With a single vantage this is its verdict."""
    said = [v for v in verdicts if v is not None]
    if not said:
        return None
    failed = said.count(False)
    k = min(quorum or len(said) // 2 + 1, len(said))
    if failed >= k:
        return Signal.failed
    return Signal.partial if failed else Signal.ok


def down_for(h: Health, on_partial: str) -> bool:
    """Whether routing treats the target as down for a brand: `down`, or `partial` and the brand's
    policy for it is `failover` (`notice_only`: the outage notice goes out, posts stay on Bluesky)."""
    return h.effective == State.down or (h.effective == State.partial and on_partial == "failover")


@dataclass(frozen=True)
class Thresholds:
    window: int = 20
    degrade_after: int = 10
    trip_after: int = 12
    recover_after: int = 5
    confirm_after: int = 7  # failed signals in a row that trip (a hard outage); 0: no such rule
    probe_every_s: float = 7.0  # steady cadence: nothing in doubt
    confirm_every_s: float = 0.4  # fast cadence: a failure (or a recovery) being confirmed
    latency_budget_s: float = 3.0  # a probe request slower than this failed (bounds a fast probe)

    def __post_init__(self) -> None:
        if not 1 <= self.degrade_after <= self.trip_after <= self.window:
            raise ValueError("need 1 <= degrade_after <= trip_after <= window")
        if self.recover_after < 1:
            raise ValueError("recover_after must be at least 1")
        if self.confirm_after < 0:  # above `window` it never fires: the window rule trips first
            raise ValueError("confirm_after must be at least 0")
        if min(self.confirm_every_s, self.probe_every_s, self.latency_budget_s) <= 0:
            raise ValueError("probe intervals and the latency budget must be positive")

    @property
    def fast_s(self) -> float:
        """The fast cadence, never slower than the steady one."""
        return min(self.confirm_every_s, self.probe_every_s)

    @property
    def max_in_flight(self) -> int:
        """Probes of one target at once: enough for one signal per fast interval in a hang."""
        return math.ceil(self.latency_budget_s / self.fast_s) + 1

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            window=settings.health_window,
            degrade_after=settings.health_degrade_after,
            trip_after=settings.health_trip_after,
            recover_after=settings.health_recover_after,
            confirm_after=settings.health_confirm_after,
            probe_every_s=settings.health_probe_interval_s,
            confirm_every_s=settings.health_confirm_interval_s,
            latency_budget_s=settings.health_latency_budget_s,
        )


@dataclass(frozen=True)
class Health:
    """One target's health. `window` holds the recent signals, oldest first ('1' ok, '0' failed)."""

    state: State = State.up
    since: float = 0.0
    window: str = ""
    streak: int = 0  # successes in a row
    override: Override = Override.auto
    override_reason: str = ""
    override_at: float = 0.0
    effective: State = State.up  # what routing uses: the override, else the state
    effective_since: float = 0.0
    outage: int = 0  # how many times `effective` went down: numbers outages for "once per outage"
    # The outage number the signals' current `down` already has (0: none yet, e.g. it went down
    # under an override `up`): handing back to `auto` resumes that outage, it numbers no new one.
    state_outage: int = 0
    # When the first failed signal since the target last looked healthy came (0: none): the
    # outage's onset. Posts Bluesky took after it may never have been seen (look-back mirror).
    onset: float = 0.0
    # When the next probe is due (`next_probe_in` after the last signal; 0: now).
    due: float = 0.0

    @property
    def failures(self) -> int:
        return self.window.count(FAILED)

    @property
    def failed_run(self) -> int:
        """Failed signals in a row at the end of the window."""
        return len(self.window) - len(self.window.rstrip(FAILED))

    @property
    def troubled(self) -> int:
        """Failed or partial signals in the window."""
        return self.failures + self.window.count(PARTIAL)

    @property
    def troubled_run(self) -> int:
        """Failed or partial signals in a row at the end of the window."""
        return len(self.window) - len(self.window.rstrip(FAILED + PARTIAL))


def _with(h: Health, **changes: object) -> Health:
    """`dataclasses.replace` for `Health`, without its per-field `__init__`: the state machine
    makes two or three per signal, and the probe workers and the cadence simulations make
    millions (replace was 80 % of `observe`). `Health` has no `__post_init__` to skip."""
    new = object.__new__(Health)
    new.__dict__.update(h.__dict__, **changes)
    return new


@dataclass(frozen=True)
class Transition:
    """A change worth an event: the observed state moved, or an operator set an override."""

    kind: str  # "state" or "override"
    before: Health
    after: Health
    reason: str

    @property
    def went_down(self) -> bool:
        return self.before.effective not in OUT and self.after.effective in OUT

    @property
    def came_back(self) -> bool:
        return self.before.effective in OUT and self.after.effective not in OUT


def effective_state(state: State, override: Override) -> State:
    return state if override == Override.auto else State(override.value)


def _settle(h: Health, now: float) -> Health:
    """Recompute `effective`, and number a new outage when it goes down.

    Back to `auto` onto a `down` the signals already reported (and that outage is the last one
    numbered, so it had its notice): the same outage resumes, no new number, no second notice.
    """
    if h.state not in OUT:
        h = _with(h, state_outage=0)
    elif h.state_outage == 0 and h.effective in OUT:
        h = _with(h, state_outage=h.outage)  # the signals confirm an outage an override declared
    eff = effective_state(h.state, h.override)
    if eff == h.effective:
        return h
    if eff not in OUT or h.effective in OUT:  # not out, or still the same outage (partial <-> down)
        return _with(h, effective=eff, effective_since=now)
    if h.override == Override.auto and 0 < h.state_outage == h.outage:
        return _with(h, effective=eff, effective_since=now)
    outage = h.outage + 1
    state_outage = outage if h.override == Override.auto else h.state_outage
    return _with(h, effective=eff, effective_since=now, outage=outage, state_outage=state_outage)


def _next_state(h: Health, th: Thresholds) -> tuple[State, str] | None:
    failures, seen = h.failures, len(h.window)
    if h.state != State.down and 0 < th.confirm_after <= h.failed_run:
        return State.down, f"{h.failed_run} signals in a row failed"
    if h.state != State.down and failures >= th.trip_after:
        return State.down, f"{failures} of the last {seen} signals failed"
    if h.state == State.up and failures >= th.degrade_after:
        return State.degraded, f"{failures} of the last {seen} signals failed"
    if h.state not in OUT and 0 < th.confirm_after <= h.troubled_run:
        return State.partial, f"{h.troubled_run} signals in a row failed at some vantages"
    if h.state not in OUT and h.troubled >= th.trip_after:
        return State.partial, f"{h.troubled} of the last {seen} signals failed at some vantages"
    if h.state != State.up and h.streak >= th.recover_after:
        return State.up, f"{h.streak} successes in a row"
    return None


def observe(
    h: Health, ok: bool, th: Thresholds, now: float, partial: bool = False
) -> tuple[Health, Transition | None]:
    """Add one signal (`partial`: failed at some vantages only, see `quorum_signal`); returns the
    new health and the transition it caused, if any."""
    ok = ok and not partial
    streak = h.streak + 1 if ok else 0
    onset = h.onset
    if not ok:
        onset = onset or now
    elif h.state == State.up and streak >= th.recover_after:
        onset = 0.0  # healthy again before anything tripped: that run of failures was noise
    mark = OK if ok else PARTIAL if partial else FAILED
    seen = _with(h, window=(h.window + mark)[-th.window :], streak=streak, onset=onset)
    step = _next_state(seen, th)
    if step is None:
        return _with(seen, due=now + next_probe_in(seen, th)), None
    state, reason = step
    # `up` and `down` start a fresh window: recovery counts successes, and old failures
    # must not trip a target that has just recovered.
    window = seen.window if state in (State.degraded, State.partial) else ""
    onset = 0.0 if state == State.up else seen.onset
    after = _settle(_with(seen, state=state, since=now, window=window, onset=onset), now)
    after = _with(after, due=now + next_probe_in(after, th))
    return after, Transition("state", h, after, reason)


def next_probe_in(h: Health, th: Thresholds) -> float:
    """Seconds from the last signal to the next probe.

    Fast while something is being confirmed: the last signal failed (a run that could
    trip), the target is `degraded`, or it is `down` and the last signal succeeded (a
    recovery under way). Steady otherwise, `down` included: a long outage is not probed
    at the fast cadence, the first success after the fix is.
    """
    if h.state == State.degraded:
        return th.fast_s
    if h.state == State.partial:  # fast while it recovers or may become `down`
        return th.fast_s if h.streak > 0 or h.failed_run > 0 else th.probe_every_s
    if h.state == State.down:
        return th.fast_s if h.streak > 0 else th.probe_every_s
    return th.fast_s if h.troubled_run > 0 else th.probe_every_s


def start_probe(h: Health, th: Thresholds, now: float) -> Health | None:
    """A probe of the target may start at `now` if one is due: the health with the due time
    moved on to when another may start beside it should this one not have answered by then
    (None: not due). Fast, so a hang yields a signal every fast interval; steady while `down`
    with no recovery under way, so a long outage does not keep `max_in_flight` probes busy.

    Half a fast interval early counts as due: beat ticks every fast interval, and a tick that
    comes a hair before the due time must not wait a whole tick more."""
    if now < h.due - th.fast_s / 2:
        return None
    quiet = h.state == State.down or (h.state == State.partial and h.failed_run == 0)
    again = th.probe_every_s if quiet and h.streak == 0 else th.fast_s
    return _with(h, due=now + again)


def probe_timeout(h: Health, th: Thresholds, hard_timeout_s: float, alone: bool) -> float:
    """A probe's per-request timeout: the hard one for a steady probe of a healthy target with
    no other probe in flight; else the latency budget (a slower answer fails anyway), which
    bounds how long a hang holds each confirmation probe."""
    if alone and h.state == State.up and h.failed_run == 0:
        return hard_timeout_s
    return min(hard_timeout_s, th.latency_budget_s)


def set_override(h: Health, mode: Override, reason: str, now: float) -> tuple[Health, Transition | None]:
    """An operator's decision; `auto` hands routing back to the signals."""
    if mode == h.override and (mode == Override.auto or reason == h.override_reason):
        return h, None
    after = _settle(_with(h, override=mode, override_reason=reason, override_at=now), now)
    return after, Transition("override", h, after, reason)
