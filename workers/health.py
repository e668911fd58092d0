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
budget. Each check's answer gets a reason class (`core.probe_reasons`): an outage signal
(a 5xx, a timeout, a connection error, an answer slower than the budget, a 429 while our
own budget is ample) is a failed signal; our problem (a revoked app password, a 4xx about
our request, our own budget spent) cannot tell and is shown but not counted; a probe feed
that answers 4xx is misconfigured: passed over, left out of the verdict, and reported
(`ledger.health.note_checks`: the health API, `/readyz`, a `bluesky.misconfigured` event).

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
from broadcaster.core.probe_reasons import FEED, Answer, Reason, classify, ok_of, stops_probe, verdict
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


def _checks(brand: Brand) -> list[tuple[str, str | None, Callable[[Client], object]]]:
    def session(c: Client) -> object:
        return c.com.atproto.server.get_session()

    def timeline(c: Client) -> object:
        return c.app.bsky.feed.get_timeline(models.AppBskyFeedGetTimeline.Params(limit=1))

    def feed(uri: str) -> Callable[[Client], object]:
        return lambda c: c.app.bsky.feed.get_feed(models.AppBskyFeedGetFeed.Params(feed=uri, limit=1))

    return [("session", None, session), ("timeline", None, timeline)] + [
        (FEED, u, feed(u)) for u in brand.bluesky.probe_feeds
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

    def check(
        self, client: Client, name: str, fn: Callable[[Client], object], feed: str | None = None
    ) -> Check:
        """Run one check and classify its answer. A refused session is raised, for a fresh login."""
        started = time.monotonic()
        try:
            fn(client)
        except InvokeTimeoutError as e:
            return self._of(name, Answer(transport="timeout"), started, _describe(e, self.timeout), feed)
        except NetworkError as e:  # connection refused or reset; the SDK raises it for a 502 too
            status = _status_of(e)
            answer = Answer(status=status, error=_error_name(e)) if status else Answer(transport="connection")
            return self._of(name, answer, started, _describe(e, self.timeout), feed)
        except RequestErrorBase as e:
            if name == "session" and _refused_session(e):
                raise
            answer = Answer(
                status=_status_of(e) or 0,
                error=_error_name(e),
                budget_remaining=e.remaining if isinstance(e, RateLimitExceededError) else None,
            )
            return self._of(name, answer, started, _describe(e, self.timeout), feed)
        except AtProtocolError as e:  # an answer the SDK cannot read is not a working feed
            answer = Answer(transport="unreadable")
            return self._of(name, answer, started, f"unreadable answer ({type(e).__name__})", feed)
        elapsed = time.monotonic() - started
        slow = f"slow: {elapsed * 1000:.0f} ms > budget {self.budget * 1000:.0f} ms"
        return self._of(name, Answer(status=200, elapsed_s=elapsed), started, slow, feed)

    def _of(self, name: str, a: Answer, started: float, error: str, feed: str | None) -> Check:
        reason = classify(name, a, self.budget)
        if reason == Reason.healthy:
            return Check.of(name, reason, _ms(started), feed=feed)
        if a.status == 429:
            error = (
                f"{error} ({'our own request budget is spent' if reason == Reason.ours else 'load shedding'})"
            )
        if reason == Reason.misconfigured:
            error = f"probe feed {feed} answers {error}: misconfigured, left out of the verdict"
        elif reason == Reason.ours and a.status != 429:
            error = f"Bluesky refused the probe: {error}"
        return Check.of(name, reason, _ms(started), error, feed)

    def run(self, probe: Probe) -> None:
        client = self.client()
        try:
            for name, feed, fn in _checks(self.brand):
                try:
                    result = self.check(client, name, fn, feed)
                except RequestErrorBase:  # the stored session was refused: log in afresh once
                    client.request.close()
                    client = self.client(fresh=True)
                    try:
                        result = self.check(client, name, fn, feed)
                    except RequestErrorBase as e:
                        answer = Answer(status=_status_of(e) or 401, error=_error_name(e))
                        result = self._of(name, answer, time.monotonic(), _describe(e, self.timeout), feed)
                probe.checks.append(result)
                _observe_metric(self.rt, probe.target, result)
                if stops_probe(Reason(result.reason)):
                    return
        finally:
            client.request.close()


def _status_of(e: AtProtocolError) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


def _error_name(e: AtProtocolError) -> str | None:
    name = getattr(getattr(getattr(e, "response", None), "content", None), "error", None)
    return name if isinstance(name, str) else None


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _observe_metric(rt: Runtime, target: str, c: Check) -> None:
    if c.ok is None:
        return
    try:
        from broadcaster.ledger import metrics

        metrics.observe_probe(rt.redis, rt.settings, target, c.name, c.ms / 1000, bool(c.ok))
    except Exception:  # metrics never break a probe
        log.debug("could not record probe metrics", exc_info=True)


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
    for check in result.checks:
        if check.ok is not None:
            metrics.observe_probe(rt.redis, rt.settings, target, check.name, check.ms / 1000, check.ok)
    _note_feeds(rt, target, result, [b.id for b in brands])
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


def _note_feeds(rt: Runtime, target: str, result: Probe, brands: list[str]) -> None:
    """Report the probe feeds that cannot succeed; forget those that answered again."""
    feeds = [c for c in result.checks if c.feed is not None]
    bad = {c.feed: c.error or c.reason for c in feeds if c.feed and c.reason == Reason.misconfigured}
    working = [c.feed for c in feeds if c.feed and c.reason == Reason.healthy]
    if bad or working:
        health_store.note_checks(rt.redis, rt.settings, target, bad, working, brands)


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
