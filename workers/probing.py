"""One probe's checks and what they conclude: each answer classified into a reason class
(`core.probe_reasons`), and the probe's verdict. Shared by every vantage point (the brand's
session in `workers.health`, watchers and the public AppView in `workers.vantages`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from atproto import Client
from atproto.exceptions import (
    AtProtocolError,
    BadRequestError,
    InvokeTimeoutError,
    NetworkError,
    RateLimitExceededError,
    RequestErrorBase,
    UnauthorizedError,
)

from broadcaster.core.probe_reasons import Answer, Reason, classify, ok_of, stops_probe, verdict
from workers.runtime import Runtime

RELOGIN_EVERY_S = 300  # at most one password login per account per 5 minutes from the probes


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: could not tell (our problem) or left out (misconfigured)
    ms: int
    error: str | None = None
    reason: str = Reason.healthy.value  # `core.probe_reasons.Reason`
    feed: str | None = None  # the probe feed's URI, for a feed check

    @classmethod
    def of(
        cls, name: str, reason: Reason, ms: int, error: str | None = None, feed: str | None = None
    ) -> Check:
        return cls(name, ok_of(reason), ms, error, reason.value, feed)


@dataclass
class Probe:
    target: str
    brand: str | None = None
    checks: list[Check] = field(default_factory=list)
    error: str | None = None

    @property
    def verdict(self) -> bool | None:
        """True ok, False failed, None could not tell (misconfigured checks left out)."""
        if self.error is not None and not self.checks:
            return None
        return verdict(Reason(c.reason) for c in self.checks)

    def record(self) -> dict:
        return {
            "at": datetime.now(UTC).isoformat(),
            "source": "probe",
            "ok": self.verdict,
            "latency_ms": sum(c.ms for c in self.checks),
            "error": self.error or next((c.error for c in self.checks if c.error), None),
            "brand": self.brand,
            "checks": [asdict(c) for c in self.checks],
        }


def describe(e: AtProtocolError, timeout_s: float) -> str:
    if isinstance(e, InvokeTimeoutError):
        return f"no answer within {timeout_s:g} s"
    status = e.response.status_code if isinstance(e, RequestErrorBase) and e.response is not None else None
    content = getattr(getattr(e, "response", None), "content", None)
    name = getattr(content, "error", None)
    if status:
        return f"HTTP {status}" + (f" {name}" if name else "")
    return type(e).__name__


def refused_session(e: AtProtocolError) -> bool:
    if isinstance(e, UnauthorizedError):
        return True
    content = getattr(getattr(e, "response", None), "content", None)
    return isinstance(e, BadRequestError) and getattr(content, "error", None) in (
        "ExpiredToken",
        "InvalidToken",
    )


class Checker:
    """Runs checks on a client and classifies each answer (`core.probe_reasons`)."""

    def __init__(self, rt: Runtime, timeout_s: float | None = None):
        self.rt = rt
        self.timeout = timeout_s or rt.settings.health_probe_timeout_s
        self.budget = rt.settings.health_latency_budget_s

    def run_checks(
        self, client: Client, checks: list[tuple[str, str | None, Callable[[Client], object]]], probe: Probe
    ) -> None:
        """Each check in order, until one fails or cannot tell (a misconfigured feed is passed over)."""
        for name, feed, fn in checks:
            result = self.check(client, name, fn, feed)
            probe.checks.append(result)
            if stops_probe(Reason(result.reason)):
                return

    def check(
        self, client: Client, name: str, fn: Callable[[Client], object], feed: str | None = None
    ) -> Check:
        """Run one check and classify its answer. A refused session is raised, for a fresh login."""
        started = time.monotonic()
        try:
            fn(client)
        except InvokeTimeoutError as e:
            return self._of(name, Answer(transport="timeout"), started, describe(e, self.timeout), feed)
        except NetworkError as e:  # connection refused or reset; the SDK raises it for a 502 too
            status = status_of(e)
            answer = Answer(status=status, error=error_name(e)) if status else Answer(transport="connection")
            return self._of(name, answer, started, describe(e, self.timeout), feed)
        except RequestErrorBase as e:
            if name == "session" and refused_session(e):
                raise
            answer = Answer(
                status=status_of(e) or 0,
                error=error_name(e),
                budget_remaining=e.remaining if isinstance(e, RateLimitExceededError) else None,
            )
            return self._of(name, answer, started, describe(e, self.timeout), feed)
        except AtProtocolError as e:  # an answer the SDK cannot read is not a working feed
            answer = Answer(transport="unreadable")
            return self._of(name, answer, started, f"unreadable answer ({type(e).__name__})", feed)
        elapsed = time.monotonic() - started
        slow = f"slow: {elapsed * 1000:.0f} ms > budget {self.budget * 1000:.0f} ms"
        return self._of(name, Answer(status=200, elapsed_s=elapsed), started, slow, feed)

    def _of(self, name: str, a: Answer, started: float, error: str, feed: str | None) -> Check:
        reason = classify(name, a, self.budget)
        if reason == Reason.healthy:
            return Check.of(name, reason, ms_since(started), feed=feed)
        if a.status == 429:
            error = (
                f"{error} ({'our own request budget is spent' if reason == Reason.ours else 'load shedding'})"
            )
        if reason == Reason.misconfigured:
            error = f"probe feed {feed} answers {error}: misconfigured, left out of the verdict"
        elif reason == Reason.ours and a.status != 429:
            error = f"Bluesky refused the probe: {error}"
        return Check.of(name, reason, ms_since(started), error, feed)


def status_of(e: AtProtocolError) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def error_name(e: AtProtocolError) -> str | None:
    name = getattr(getattr(getattr(e, "response", None), "content", None), "error", None)
    return name if isinstance(name, str) else None


def ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
