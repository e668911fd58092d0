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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from atproto import Client, models
from atproto.exceptions import RequestErrorBase

from broadcaster.core.brands import Brand
from broadcaster.core.health import Signal, Thresholds, Transition, probe_timeout, quorum_signal
from broadcaster.core.probe_reasons import FEED, Answer, Reason, stops_probe
from broadcaster.ledger import health as health_store
from broadcaster.ledger import metrics
from broadcaster.ledger.keys import Keys
from channels.base import ChannelError, PermanentError, RateLimited
from channels.bluesky import BlueskyChannel
from workers import vantages
from workers.probing import (
    RELOGIN_EVERY_S,
    Check,
    Checker,
    Probe,
    describe,
    error_name,
    status_of,
)
from workers.runtime import Runtime

log = logging.getLogger("broadcaster.core.health")

AUTH_FAILED_PAUSE_S = 600  # a brand whose app password was refused is not tried for 10 minutes


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
    """Brands whose stored session we can reuse first; then one that may log in. One round trip
    for all of them (a big PDS hosts many brands: one EXISTS each was most of a probe's waits)."""
    pipe = rt.redis.pipeline(transaction=False)
    for b in brands:
        pipe.exists(_session_key(rt, b))
        pipe.exists(_auth_failed_key(rt, b))
    found = pipe.execute()
    stored = [b for i, b in enumerate(brands) if found[2 * i]]
    others = [b for i, b in enumerate(brands) if not found[2 * i] and not found[2 * i + 1]]
    return stored + others[:1]


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


class _Prober(Checker):
    """One probe of one target through one brand's session."""

    def __init__(self, rt: Runtime, brand: Brand, timeout_s: float | None = None):
        super().__init__(rt, timeout_s)
        self.brand = brand
        self.channel = BlueskyChannel(brand, rt.channel_ctx())

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
                        answer = Answer(status=status_of(e) or 401, error=error_name(e))
                        result = self._of(name, answer, time.monotonic(), describe(e, self.timeout), feed)
                probe.checks.append(result)
                if stops_probe(Reason(result.reason)):
                    return
        finally:
            client.request.close()


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
            result.checks.append(Check.of("session", Reason.outage, 0, e.message))
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
    extra = vantages.extra_vantages(rt, target, brands)
    try:
        if extra:  # every vantage at once: a hang holds this probe one timeout, not one per vantage
            with ThreadPoolExecutor(max_workers=len(extra) + 1) as pool:
                own = pool.submit(probe, rt, target, brands, timeout)
                others = [
                    (name, pool.submit(vantages.safely, fn, target, name, timeout)) for name, fn in extra
                ]
                result = own.result()
                seen = [("brand", result)] + [(name, f.result()) for name, f in others]
        else:
            result = probe(rt, target, brands, timeout)
            seen = [("brand", result)]
    finally:
        health_store.release_probe(rt.redis, claim)
    _observe_checks(rt, target, result)
    _note_feeds(rt, target, seen, [b.id for b in brands])
    signal = quorum_signal((p.verdict for _, p in seen), rt.settings.health_quorum)
    record = _record(seen, signal)
    health_store.record_vantages(
        rt.redis, rt.settings, target, {name: p.record() | {"ok": p.verdict} for name, p in seen}
    )
    if signal is None:
        health_store.record_inconclusive(rt.redis, rt.settings, target, record)
        log.warning("bluesky probe of %s could not tell: %s", target, record["error"])
        transition = None
    else:
        _, transition = health_store.record_signal(
            rt.redis,
            rt.settings,
            target,
            signal == Signal.ok,
            record,
            [b.id for b in brands],
            partial=signal == Signal.partial,
        )
    return {Signal.ok: "ok", Signal.failed: "failed", Signal.partial: "partial", None: "inconclusive"}[
        signal
    ], transition


def _record(seen: list[tuple[str, Probe]], signal: Signal | None) -> dict:
    """The brand vantage's probe record; with more vantages, each one's verdict and the quorum's."""
    record = seen[0][1].record()
    if len(seen) > 1:
        record["ok"] = None if signal is None else signal == Signal.ok
        record["signal"] = signal.value if signal else None
        record["vantages"] = [{"vantage": n, "ok": p.verdict, "error": p.record()["error"]} for n, p in seen]
        if record["ok"] is False and not record["error"]:
            record["error"] = next((v["error"] for v in record["vantages"] if v["ok"] is False), None)
    return record


def _note_feeds(rt: Runtime, target: str, seen: list[tuple[str, Probe]], brands: list[str]) -> None:
    """Report the probe feeds that cannot succeed from some vantage; forget those that answered
    again. A feed is named with its vantage unless it is the brand's own (a feed generator may
    exist on the brand's network and not on a watcher's)."""
    bad: dict[str, str] = {}
    working: list[str] = []
    for vantage, probe_ in seen:
        for c in probe_.checks:
            if not c.feed:
                continue
            name = c.feed if vantage == "brand" else f"{c.feed} (via {vantage})"
            if c.reason == Reason.misconfigured:
                bad[name] = c.error or c.reason
            elif c.reason == Reason.healthy:
                working.append(name)
    if bad or working:
        health_store.note_checks(rt.redis, rt.settings, target, bad, working, brands)


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
