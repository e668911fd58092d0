"""Why a probe check failed, as one of three reason classes, and what the probe then says.

A probe of a target runs checks (the session, the Home timeline, each probe feed). Each
answer is classified, because only some failures say anything about Bluesky:

* `outage`: a signal that the target is failing its audience: a 5xx, a timeout, a refused
  or reset connection, an answer slower than the latency budget, an unreadable answer, or
  a 429 while our own request budget is ample (the service is shedding load: in April 2026
  users saw "Rate Limit Exceeded" on Discover as a symptom of the outage itself);
* `ours`: our problem, saying nothing about Bluesky: a refused session or app password, a
  4xx about our request, a 429 that says our own budget is spent (`ratelimit-remaining: 0`);
* `misconfigured`: a probe feed that answers 4xx (not auth, not 429): the feed does not
  exist on this network (a PDS whose AppView has no Discover feed generator). It answers
  so every time, so it is left out of the verdict: recovery never waits on a check that
  cannot succeed. It is reported instead (`broadcaster channels check`, `/readyz`, an event).

Pure: the worker turns what the client library raised into an `Answer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

FEED = "feed"  # the name of a probe-feed check; its 4xx is misconfiguration, not our request
AUTH_ERRORS = frozenset({"ExpiredToken", "InvalidToken", "AuthenticationRequired", "AuthMissing"})


class Reason(StrEnum):
    healthy = "healthy"
    outage = "outage"
    ours = "ours"
    misconfigured = "misconfigured"


@dataclass(frozen=True)
class Answer:
    """What one check's request got, as plain facts."""

    status: int | None = None  # the HTTP status, when there was an answer
    transport: str | None = None  # no answer: "timeout", "connection" (refused, reset), "unreadable"
    elapsed_s: float = 0.0
    error: str | None = None  # the XRPC error name in a 4xx/5xx body
    budget_remaining: int | None = None  # `ratelimit-remaining` on a 429 (None: not said)


def classify(check: str, a: Answer, latency_budget_s: float) -> Reason:
    """The reason class of one check's answer (`healthy` when it worked in time)."""
    if a.transport is not None:
        return Reason.outage
    status = a.status or 200
    if status >= 500:
        return Reason.outage
    if status == 429:  # our own budget spent: ours; the service shedding load: an outage signal
        return Reason.ours if a.budget_remaining == 0 else Reason.outage
    if status >= 400:
        if status in (401, 403) or a.error in AUTH_ERRORS:
            return Reason.ours
        return Reason.misconfigured if check == FEED else Reason.ours
    return Reason.outage if a.elapsed_s > latency_budget_s else Reason.healthy


def ok_of(reason: Reason) -> bool | None:
    """A check's contribution: True worked, False failed, None says nothing (ours, misconfigured)."""
    return {Reason.healthy: True, Reason.outage: False}.get(reason)


def verdict(reasons: Iterable[Reason]) -> bool | None:
    """A probe's signal from its checks' reasons: False if any saw an outage; None (not counted)
    if one was our problem or nothing but misconfigured checks ran; else True. Misconfigured
    checks are left out."""
    counted = [r for r in reasons if r != Reason.misconfigured]
    if Reason.outage in counted:
        return False
    if Reason.ours in counted or not counted:
        return None
    return True


def stops_probe(reason: Reason) -> bool:
    """A probe stops at the first check that failed or could not tell (a black-holed AppView then
    holds a worker for one timeout); a misconfigured feed is passed over to the next check."""
    return reason in (Reason.outage, Reason.ours)
