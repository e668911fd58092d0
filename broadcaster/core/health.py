"""Bluesky health as a pure state machine: signals in, `up` / `degraded` / `down` out.

A signal is one observation of a target (a PDS and the AppView behind it): a probe of
the session and the feeds, or a Bluesky send that failed with a 5xx or a timeout.
Hysteresis keeps a flaky-but-working Bluesky from flapping:

* `up` -> `degraded` when `degrade_after` of the last `window` signals failed: worth
  a look, posts still go to Bluesky;
* `up` / `degraded` -> `down` when `trip_after` of the last `window` signals failed:
  posts are rerouted;
* `degraded` / `down` -> `up` after `recover_after` successes in a row; the window
  starts afresh, so failures from before cannot trip it again at once.

The defaults (20 / 10 / 12 / 5) make a 10% random error rate cross `degraded` about
once in 300,000 signals and `down` about once in 30 million, while a real outage
trips in 12 signals. An operator's override (`up` / `down`) wins over what the
signals say; `auto` hands back to them. Routing reads only `effective`.

No I/O here: `broadcaster.ledger.health` keeps a `Health` in Redis and applies these
functions atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broadcaster.core.settings import Settings


class State(StrEnum):
    up = "up"
    degraded = "degraded"
    down = "down"


class Override(StrEnum):
    auto = "auto"  # the signals decide
    up = "up"
    down = "down"


OK, FAILED = "1", "0"


@dataclass(frozen=True)
class Thresholds:
    window: int = 20
    degrade_after: int = 10
    trip_after: int = 12
    recover_after: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.degrade_after <= self.trip_after <= self.window:
            raise ValueError("need 1 <= degrade_after <= trip_after <= window")
        if self.recover_after < 1:
            raise ValueError("recover_after must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            window=settings.health_window,
            degrade_after=settings.health_degrade_after,
            trip_after=settings.health_trip_after,
            recover_after=settings.health_recover_after,
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

    @property
    def failures(self) -> int:
        return self.window.count(FAILED)


@dataclass(frozen=True)
class Transition:
    """A change worth an event: the observed state moved, or an operator set an override."""

    kind: str  # "state" or "override"
    before: Health
    after: Health
    reason: str

    @property
    def went_down(self) -> bool:
        return self.before.effective != State.down and self.after.effective == State.down

    @property
    def came_back(self) -> bool:
        return self.before.effective == State.down and self.after.effective != State.down


def effective_state(state: State, override: Override) -> State:
    return state if override == Override.auto else State(override.value)


def _settle(h: Health, now: float) -> Health:
    """Recompute `effective`, and number a new outage when it goes down.

    Back to `auto` onto a `down` the signals already reported (and that outage is the last one
    numbered, so it had its notice): the same outage resumes, no new number, no second notice.
    """
    if h.state != State.down:
        h = replace(h, state_outage=0)
    elif h.state_outage == 0 and h.effective == State.down:
        h = replace(h, state_outage=h.outage)  # the signals confirm an outage an override declared
    eff = effective_state(h.state, h.override)
    if eff == h.effective:
        return h
    if eff != State.down:
        return replace(h, effective=eff, effective_since=now)
    if h.override == Override.auto and 0 < h.state_outage == h.outage:
        return replace(h, effective=eff, effective_since=now)
    outage = h.outage + 1
    state_outage = outage if h.override == Override.auto else h.state_outage
    return replace(h, effective=eff, effective_since=now, outage=outage, state_outage=state_outage)


def _next_state(h: Health, th: Thresholds) -> tuple[State, str] | None:
    failures, seen = h.failures, len(h.window)
    if h.state != State.down and failures >= th.trip_after:
        return State.down, f"{failures} of the last {seen} signals failed"
    if h.state == State.up and failures >= th.degrade_after:
        return State.degraded, f"{failures} of the last {seen} signals failed"
    if h.state != State.up and h.streak >= th.recover_after:
        return State.up, f"{h.streak} successes in a row"
    return None


def observe(h: Health, ok: bool, th: Thresholds, now: float) -> tuple[Health, Transition | None]:
    """Add one signal; returns the new health and the transition it caused, if any."""
    streak = h.streak + 1 if ok else 0
    onset = h.onset
    if not ok:
        onset = onset or now
    elif h.state == State.up and streak >= th.recover_after:
        onset = 0.0  # healthy again before anything tripped: that run of failures was noise
    seen = replace(h, window=(h.window + (OK if ok else FAILED))[-th.window :], streak=streak, onset=onset)
    step = _next_state(seen, th)
    if step is None:
        return seen, None
    state, reason = step
    # `up` and `down` start a fresh window: recovery counts successes, and old failures
    # must not trip a target that has just recovered.
    window = seen.window if state == State.degraded else ""
    onset = 0.0 if state == State.up else seen.onset
    after = _settle(replace(seen, state=state, since=now, window=window, onset=onset), now)
    return after, Transition("state", h, after, reason)


def set_override(h: Health, mode: Override, reason: str, now: float) -> tuple[Health, Transition | None]:
    """An operator's decision; `auto` hands routing back to the signals."""
    if mode == h.override and (mode == Override.auto or reason == h.override_reason):
        return h, None
    after = _settle(replace(h, override=mode, override_reason=reason, override_at=now), now)
    return after, Transition("override", h, after, reason)
