"""Probe each Bluesky target the way its audience feels it, and count what sends tell us.

A target is a PDS and the AppView behind it; brands on the same PDS share one probe.
A probe checks, in order, each with a hard timeout and a latency budget:

1. the session (`com.atproto.server.getSession`), on the brand's *shared* session from
   Redis; the SDK refreshes the access token when it is near expiry and the new one is
   saved back. `createSession` is rate-limited hard by Bluesky, so it is used only when
   no session is stored yet, or once per `RELOGIN_EVERY_S` after the PDS refused it;
2. the Home timeline (`app.bsky.feed.getTimeline`);
3. each of the brand's probe feeds (`app.bsky.feed.getFeed`, Discover by default).

It stops at the first failure, so a black-holed AppView holds a worker for one timeout,
not one per check. When a probe runs is the adaptive cadence (`core.health.next_probe_in`):
`run_probe` claims a due probe and one of the target's `max_in_flight` slots
(`ledger.health.claim_probe`); a confirmation probe's requests give up at the latency
budget. A 5xx, a timeout, a connection error or an answer slower than the budget is a
failed signal; a 429 or a 4xx about our own request (a wrong feed URI, a
revoked app password) cannot tell and is shown but not counted.

Passive signals: a Bluesky send that fails with a 5xx, timeout or connection error is
a failed signal too, so an outage noticed by a send trips the breaker early. A send
that works is *not* counted as a success: posting can work while the feeds the
audience reads do not (the 2026-04-12 shape).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from atproto import Client, models
from atproto.exceptions import (
    AtProtocolError,
    BadRequestError,
    InvokeTimeoutError,
    NetworkError,
    RateLimitExceededError,
    RequestErrorBase,
    UnauthorizedError,
)

from broadcaster.core.brands import Brand
from broadcaster.core.health import Thresholds, Transition, probe_timeout
from broadcaster.ledger import health as health_store
from broadcaster.ledger import metrics
from broadcaster.ledger.keys import Keys
from channels.base import ChannelError, PermanentError, RateLimited
from channels.bluesky import BlueskyChannel
from workers.runtime import Runtime

log = logging.getLogger("broadcaster.core.health")

RELOGIN_EVERY_S = 300  # at most one password login per brand per 5 minutes from the probes
AUTH_FAILED_PAUSE_S = 600  # a brand whose app password was refused is not tried for 10 minutes
RECENT_KEPT = 10_000  # Bluesky deliveries remembered for the look-back mirror


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: could not tell
    ms: int
    error: str | None = None


@dataclass
class Probe:
    target: str
    brand: str | None = None
    checks: list[Check] = field(default_factory=list)
    error: str | None = None

    @property
    def verdict(self) -> bool | None:
        """True ok, False failed, None could not tell."""
        if self.error is not None and not self.checks:
            return None
        if any(c.ok is False for c in self.checks):
            return False
        if any(c.ok is None for c in self.checks) or not self.checks:
            return None
        return True

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


class _Unusable(Exception):
    """This brand's session cannot be used for a probe (and it says nothing about Bluesky)."""


def brands_by_target(rt: Runtime) -> dict[str, list[Brand]]:
    out: dict[str, list[Brand]] = {}
    for brand in sorted(rt.brands(), key=lambda b: b.id):
        out.setdefault(brand.bluesky.target, []).append(brand)
    return out


def _session_key(rt: Runtime, brand: Brand) -> str:
    return Keys(rt.settings.key_prefix).bluesky_session(brand.id)


def _auth_failed_key(rt: Runtime, brand: Brand) -> str:
    return Keys(rt.settings.key_prefix).auth_failed(brand.id)


def _candidates(rt: Runtime, brands: list[Brand]) -> list[Brand]:
    """Brands whose stored session we can reuse first; then one that may log in."""
    stored = [b for b in brands if rt.redis.exists(_session_key(rt, b))]
    others = [b for b in brands if b not in stored and not rt.redis.exists(_auth_failed_key(rt, b))]
    return stored + others[:1]


def _describe(e: AtProtocolError, timeout_s: float) -> str:
    if isinstance(e, InvokeTimeoutError):
        return f"no answer within {timeout_s:g} s"
    status = e.response.status_code if isinstance(e, RequestErrorBase) and e.response is not None else None
    content = getattr(getattr(e, "response", None), "content", None)
    name = getattr(content, "error", None)
    if status:
        return f"HTTP {status}" + (f" {name}" if name else "")
    return type(e).__name__


def _refused_session(e: AtProtocolError) -> bool:
    if isinstance(e, UnauthorizedError):
        return True
    content = getattr(getattr(e, "response", None), "content", None)
    return isinstance(e, BadRequestError) and getattr(content, "error", None) in (
        "ExpiredToken",
        "InvalidToken",
    )


def _checks(brand: Brand) -> list[tuple[str, Callable[[Client], object]]]:
    def session(c: Client) -> object:
        return c.com.atproto.server.get_session()

    def timeline(c: Client) -> object:
        return c.app.bsky.feed.get_timeline(models.AppBskyFeedGetTimeline.Params(limit=1))

    def feed(uri: str) -> Callable[[Client], object]:
        return lambda c: c.app.bsky.feed.get_feed(models.AppBskyFeedGetFeed.Params(feed=uri, limit=1))

    return [("session", session), ("timeline", timeline)] + [
        ("feed", feed(u)) for u in brand.bluesky.probe_feeds
    ]


class _Prober:
    """One probe of one target through one brand's session."""

    def __init__(self, rt: Runtime, brand: Brand, timeout_s: float | None = None):
        self.rt, self.brand = rt, brand
        self.channel = BlueskyChannel(brand, rt.channel_ctx())
        self.timeout = timeout_s or rt.settings.health_probe_timeout_s
        self.budget = rt.settings.health_latency_budget_s

    def client(self, fresh: bool = False) -> Client:
        if fresh and not self.rt.redis.set(
            Keys(self.rt.settings.key_prefix).relogin(self.brand.id), "1", nx=True, ex=RELOGIN_EVERY_S
        ):
            raise _Unusable("the stored session was refused and a new login was made recently")
        try:
            return self.channel.probe_client(self.timeout, fresh=fresh)
        except PermanentError as e:
            self.rt.redis.set(_auth_failed_key(self.rt, self.brand), "1", ex=AUTH_FAILED_PAUSE_S)
            raise _Unusable(e.message) from None
        except RateLimited as e:
            raise _Unusable(e.message) from None

    def check(self, client: Client, name: str, fn: Callable[[Client], object]) -> Check:
        started = time.monotonic()
        try:
            fn(client)
        except RateLimitExceededError:
            return Check(name, None, _ms(started), "rate-limited by Bluesky (says nothing about health)")
        except NetworkError as e:  # timeouts, connection errors, 502
            return Check(name, False, _ms(started), _describe(e, self.timeout))
        except RequestErrorBase as e:
            status = e.response.status_code if e.response is not None else 0
            if status >= 500:
                return Check(name, False, _ms(started), _describe(e, self.timeout))
            raise
        except AtProtocolError as e:  # an answer the SDK cannot read is not a working feed
            return Check(name, False, _ms(started), f"unreadable answer ({type(e).__name__})")
        elapsed = time.monotonic() - started
        if elapsed > self.budget:
            return Check(
                name,
                False,
                _ms(started),
                f"slow: {elapsed * 1000:.0f} ms > budget {self.budget * 1000:.0f} ms",
            )
        return Check(name, True, _ms(started))

    def run(self, probe: Probe) -> None:
        client = self.client()
        try:
            for name, fn in _checks(self.brand):
                try:
                    result = self.check(client, name, fn)
                except RequestErrorBase as e:
                    if name == "session" and _refused_session(e):
                        client.request.close()
                        client = self.client(fresh=True)
                        result = self.check(client, name, fn)
                    else:
                        result = Check(
                            name, None, 0, f"Bluesky refused the probe: {_describe(e, self.timeout)}"
                        )
                probe.checks.append(result)
                if result.ok is not True:
                    return
        finally:
            client.request.close()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def probe(rt: Runtime, target: str, brands: list[Brand], timeout_s: float | None = None) -> Probe:
    """Probe a target through the first brand whose session is usable."""
    result = Probe(target)
    for brand in _candidates(rt, brands):
        result.brand = brand.id
        try:
            _Prober(rt, brand, timeout_s).run(result)
            return result
        except _Unusable as e:
            result.error = f"{brand.id}: {e}"
            continue
        except ChannelError as e:  # logging in failed on a 5xx or a timeout: Bluesky's trouble
            result.checks.append(Check("session", False, 0, e.message))
            return result
    result.error = result.error or "no brand on this target has a usable Bluesky session"
    return result


def run_probe(rt: Runtime, target: str) -> tuple[str, Transition | None]:
    """Probe once if a probe of this target is due (`ledger.health.claim_probe`: the adaptive
    cadence, at most `max_in_flight` at once) and count it; the result and the transition it
    caused, for the failover to act on. `"not due"` / `"busy"`: nothing was probed."""
    brands = brands_by_target(rt).get(target)
    if not brands:
        return "unknown target", None
    hard = rt.settings.health_probe_timeout_s
    hold_s = hard * (len(_checks(brands[0])) + 2) + 2
    claim = health_store.claim_probe(rt.redis, rt.settings, target, hold_s)
    if isinstance(claim, str):
        return claim, None
    timeout = probe_timeout(claim.health, Thresholds.from_settings(rt.settings), hard, claim.alone)
    try:
        result = probe(rt, target, brands, timeout)
    finally:
        health_store.release_probe(rt.redis, claim)
    _observe_checks(rt, target, result)
    verdict = result.verdict
    if verdict is None:
        health_store.record_inconclusive(rt.redis, rt.settings, target, result.record())
        log.warning("bluesky probe of %s could not tell: %s", target, result.record()["error"])
        transition = None
    else:
        _, transition = health_store.record_signal(
            rt.redis, rt.settings, target, verdict, result.record(), [b.id for b in brands]
        )
    return {True: "ok", False: "failed", None: "inconclusive"}[verdict], transition


def _observe_checks(rt: Runtime, target: str, result: Probe) -> None:
    """Count and time each conclusive check of the probe, once (here only: `_Prober` does not)."""
    for check in result.checks:
        if check.ok is not None:
            metrics.observe_probe(rt.redis, rt.settings, target, check.name, check.ms / 1000, check.ok)


# ---- passive signals --------------------------------------------------------------------------
def send_failed(rt: Runtime, brand: Brand, error: str) -> Transition | None:
    """A Bluesky send failed with a 5xx, timeout or connection error: a failed signal."""
    record = {
        "at": datetime.now(UTC).isoformat(),
        "source": "send",
        "ok": False,
        "latency_ms": None,
        "error": error,
        "brand": brand.id,
        "checks": [],
    }
    target = brand.bluesky.target
    on_target = [b.id for b in brands_by_target(rt).get(target, [brand])]
    _, transition = health_store.record_signal(rt.redis, rt.settings, target, False, record, on_target)
    return transition


def sent(rt: Runtime, brand: Brand, post_id: str) -> None:
    """Bluesky took a post: remember when, for the look-back mirror if it trips soon after."""
    key = Keys(rt.settings.key_prefix).bluesky_recent(brand.bluesky.target)
    pipe = rt.redis.pipeline(transaction=False)
    pipe.zadd(key, {post_id: rt.store.now()})
    pipe.zremrangebyrank(key, 0, -RECENT_KEPT - 1)
    pipe.execute()
