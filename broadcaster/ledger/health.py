"""Bluesky health as every process sees it, kept in Redis so the API and all workers agree.

Each signal is applied with WATCH/MULTI on the target's hash: two workers that see the
same failure at the same moment both count, but the second one reads the state the
first one wrote, so a threshold crossed once makes exactly one transition, one event
in the stream and one history entry.

Keys (under the settings' prefix):
  health:<target>           hash  the `broadcaster.core.health.Health` fields (`due`: next probe)
  health:<target>:probing:<n> string  a probe in flight (slot n < max_in_flight), its token
  health:<target>:probes    list  the last probes and failed sends, newest first (JSON)
  health:<target>:history   list  transitions and overrides, newest first (JSON)
  health:<target>:vantages  hash  vantage point -> its last probe record (JSON, verdict in `ok`)
  health:<target>:misconfigured hash probe feed URI -> why it cannot succeed (JSON), while it does
  health:targets            set   every target ever observed
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from broadcaster.core.health import (
    Health,
    Override,
    State,
    Thresholds,
    Transition,
    observe,
    set_override,
    start_probe,
)
from broadcaster.core.settings import Settings
from broadcaster.ledger.clock import clock_for
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.store import ADD_EVENT, EVENTS_MAXLEN

log = logging.getLogger("broadcaster.core.health")

# The connections decode replies (decode_responses=True, see connection.py): they are str, where
# redis-py's types say bytes | str; the casts below say so.

PROBES_KEPT = 20
HISTORY_KEPT = 200


def _key(settings: Settings, target: str, *more: str) -> str:
    return Keys(settings.key_prefix).health(target, *more)


def _to_hash(h: Health) -> dict[str, str]:
    return {k: str(v.value if isinstance(v, State | Override) else v) for k, v in asdict(h).items()}


def _from_hash(raw: dict[str, str]) -> Health:
    """The stored fields, each parsed as the type of its default (str, int, float or enum)."""
    values: dict[str, Any] = {}
    for name, default in asdict(Health()).items():
        if name in raw:
            values[name] = type(default)(raw[name])
    return Health(**values)


def load(r: redis.Redis, settings: Settings, target: str) -> Health:
    return _from_hash(cast("dict[str, str]", r.hgetall(_key(settings, target))))


def is_down(r: redis.Redis, settings: Settings, target: str) -> bool:
    """True when routing must treat the target as down (its state, or an operator's override)."""
    return r.hget(_key(settings, target), "effective") == State.down.value


def known_targets(r: redis.Redis, settings: Settings) -> set[str]:
    return set(cast("set[str]", r.smembers(Keys(settings.key_prefix).health_targets)))


def last_probes(
    r: redis.Redis, settings: Settings, target: str, limit: int = PROBES_KEPT
) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange(_key(settings, target, "probes"), 0, limit - 1)]


def history(r: redis.Redis, settings: Settings, target: str, limit: int = 50) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange(_key(settings, target, "history"), 0, limit - 1)]


def _transition_body(target: str, t: Transition, now: float) -> dict[str, str]:
    return {
        "target": target,
        "kind": t.kind,
        "from": t.before.state.value,
        "to": t.after.state.value,
        "effective_from": t.before.effective.value,
        "effective": t.after.effective.value,
        "override": t.after.override.value,
        "reason": t.reason,
        "outage": str(t.after.outage),
        "onset_epoch": f"{t.after.onset:.3f}" if t.after.onset else "",
        "at_epoch": f"{now:.3f}",
    }


def _event_type(t: Transition) -> str:
    return "bluesky.override" if t.kind == "override" else f"bluesky.{t.after.state.value}"


def _apply(
    r: redis.Redis,
    settings: Settings,
    target: str,
    change: Callable[[Health, float], tuple[Health, Transition | None]],
    probe: dict[str, Any] | None = None,
    brands: Iterable[str] = (),
) -> tuple[Health, Transition | None]:
    """Read, change and write the target's health atomically (optimistic, retried on a race).

    A transition's `bluesky.*` event also goes to each of `brands`' own streams (the brands on
    the target): their `/v1/events` and webhooks see it."""
    key = _key(settings, target)
    keys = Keys(settings.key_prefix)
    emit = r.register_script(ADD_EVENT)
    now = clock_for(r).now()
    with r.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py's Pipeline.watch is unannotated
                before = _from_hash(cast("dict[str, str]", pipe.hgetall(key)))
                after, transition = change(before, now)
                pipe.multi()
                # redis-py types field mappings with an invariant key (FieldT), which refuses a
                # dict[str, str] though that is what it takes.
                pipe.hset(key, mapping=cast("dict[FieldT, EncodableT]", _to_hash(after)))
                pipe.sadd(Keys(settings.key_prefix).health_targets, target)
                if probe is not None:
                    pipe.lpush(_key(settings, target, "probes"), json.dumps(probe))
                    pipe.ltrim(_key(settings, target, "probes"), 0, PROBES_KEPT - 1)
                if transition is not None:
                    body = _transition_body(target, transition, now)
                    event = {"type": _event_type(transition), "at": _iso(now)} | body
                    emit(
                        keys=[keys.events, *(keys.brand_events(b) for b in brands)],
                        args=[EVENTS_MAXLEN, *(x for kv in event.items() for x in kv)],
                        client=pipe,
                    )
                    pipe.lpush(_key(settings, target, "history"), json.dumps(event))
                    pipe.ltrim(_key(settings, target, "history"), 0, HISTORY_KEPT - 1)
                pipe.execute()
                break
            except redis.WatchError:
                continue
    if transition is not None:
        _log_transition(target, transition)
    return after, transition


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


def _log_transition(target: str, t: Transition) -> None:
    fields_ = _transition_body(target, t, time.time())  # a log line: this host's clock
    level = logging.WARNING if t.after.effective != State.up or t.kind == "override" else logging.INFO
    log.log(
        level,
        "bluesky health %s target=%s state=%s->%s effective=%s->%s override=%s outage=%s reason=%r",
        _event_type(t),
        target,
        fields_["from"],
        fields_["to"],
        fields_["effective_from"],
        fields_["effective"],
        fields_["override"],
        fields_["outage"],
        t.reason,
        extra={"event": _event_type(t), "target": target} | {f"health_{k}": v for k, v in fields_.items()},
    )


def record_signal(
    r: redis.Redis,
    settings: Settings,
    target: str,
    ok: bool,
    probe: dict[str, Any] | None = None,
    brands: Iterable[str] = (),
    partial: bool = False,
) -> tuple[Health, Transition | None]:
    """Count one probe or failed send for `target` (`partial`: some vantages failed, fewer than
    the quorum); returns the new health and any transition."""
    th = Thresholds.from_settings(settings)
    return _apply(r, settings, target, lambda h, now: observe(h, ok, th, now, partial), probe, brands)


def record_vantages(r: redis.Redis, settings: Settings, target: str, seen: dict[str, dict[str, Any]]) -> None:
    """Each vantage point's last probe record (its verdict in `ok`), for the health API."""
    mapping = {name: json.dumps(record) for name, record in seen.items()}
    r.hset(_key(settings, target, "vantages"), mapping=cast("dict[FieldT, EncodableT]", mapping))


def vantage_verdicts(r: redis.Redis, settings: Settings, target: str) -> dict[str, dict[str, Any]]:
    raw = cast("dict[str, str]", r.hgetall(_key(settings, target, "vantages")))
    return {name: json.loads(v) for name, v in sorted(raw.items())}


@dataclass(frozen=True)
class ProbeClaim:
    """A probe this process may run now: its slot (release it when done) and the health it saw."""

    slot: str
    token: str
    health: Health
    alone: bool  # no other probe of the target in flight


def claim_probe(r: redis.Redis, settings: Settings, target: str, hold_s: float) -> ProbeClaim | str:
    """Start a probe of `target` if one is due (on the Redis clock) and a slot is free: the claim,
    or why not (`"not due"`, `"busy"`). Moves the due time on (`core.health.start_probe`), so the
    next beat tick starts another beside this one only if it has not answered by then."""
    th = Thresholds.from_settings(settings)
    key = _key(settings, target)
    now = clock_for(r).now()
    slots = [_key(settings, target, "probing", str(i)) for i in range(th.max_in_flight)]
    token = uuid.uuid4().hex
    with r.pipeline() as pipe:
        pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py's Pipeline.watch is unannotated
        before = _from_hash(cast("dict[str, str]", pipe.hgetall(key)))
        started = start_probe(before, th, now)
        if started is None:
            return "not due"
        slot = next((k for k in slots if r.set(k, token, nx=True, px=max(1, int(hold_s * 1000)))), None)
        if slot is None:
            return "busy"
        pipe.multi()
        pipe.hset(key, "due", str(started.due))
        try:
            pipe.execute()
        except redis.WatchError:  # a signal or another claim came first: the next tick tries again
            release_probe(r, ProbeClaim(slot, token, before, False))
            return "busy"
    alone = not r.exists(*(k for k in slots if k != slot))
    return ProbeClaim(slot, token, before, alone)


def release_probe(r: redis.Redis, claim: ProbeClaim) -> None:
    if r.get(claim.slot) == claim.token:
        r.delete(claim.slot)


def probe_due(r: redis.Redis, settings: Settings, target: str) -> bool:
    """Whether a probe of `target` may be due (a cheap look for beat; `claim_probe` decides)."""
    th = Thresholds.from_settings(settings)
    due = r.hget(_key(settings, target), "due")
    return due is None or clock_for(r).now() >= float(cast("str", due)) - th.fast_s / 2


def record_inconclusive(r: redis.Redis, settings: Settings, target: str, probe: dict[str, Any]) -> None:
    """Show a probe that could not tell (no usable session, rate-limited) without counting it; the
    next one waits the steady interval (a rate-limited target is not probed at the fast one)."""
    due = clock_for(r).now() + Thresholds.from_settings(settings).probe_every_s
    pipe = r.pipeline()
    pipe.hset(_key(settings, target), "due", str(due))
    pipe.lpush(_key(settings, target, "probes"), json.dumps(probe))
    pipe.ltrim(_key(settings, target, "probes"), 0, PROBES_KEPT - 1)
    pipe.sadd(Keys(settings.key_prefix).health_targets, target)
    pipe.execute()


def override(
    r: redis.Redis,
    settings: Settings,
    target: str,
    mode: Override,
    reason: str,
    brands: Iterable[str] = (),
) -> tuple[Health, Transition | None]:
    """An operator's override (`down` / `up`), or `auto` to let the signals decide again."""
    return _apply(r, settings, target, lambda h, now: set_override(h, mode, reason, now), brands=brands)


# ---- what the failover already did for an outage (so a crash between steps is caught up) ----
def acted(r: redis.Redis, settings: Settings, target: str, what: str) -> int:
    return int(r.hget(_key(settings, target, "acted"), what) or 0)


def mark_acted(r: redis.Redis, settings: Settings, target: str, what: str, outage: int) -> None:
    r.hset(_key(settings, target, "acted"), what, outage)


# ---- probe checks that cannot succeed (misconfiguration) -------------------------------------
def note_checks(
    r: redis.Redis,
    settings: Settings,
    target: str,
    misconfigured: dict[str, str],
    working: Iterable[str],
    brands: Iterable[str] = (),
) -> list[str]:
    """Remember the probe feeds that answered as misconfigured (uri -> what they said) and forget
    those that worked again. A feed newly misconfigured gets a `bluesky.misconfigured` event (the
    operators' feed and the brands on the target); returns those feeds."""
    key = _key(settings, target, "misconfigured")
    keys = Keys(settings.key_prefix)
    now = clock_for(r).now()
    new: list[str] = []
    for feed, detail in misconfigured.items():
        body = json.dumps({"detail": detail, "since": _iso(now)})
        if r.hsetnx(key, feed, body):
            new.append(feed)
            event = {
                "type": "bluesky.misconfigured",
                "at": _iso(now),
                "target": target,
                "feed": feed,
                "reason": detail,
            }
            r.register_script(ADD_EVENT)(
                keys=[keys.events, *(keys.brand_events(b) for b in brands)],
                args=[EVENTS_MAXLEN, *(x for kv in event.items() for x in kv)],
            )
            log.warning("bluesky probe feed misconfigured target=%s feed=%s: %s", target, feed, detail)
    if fixed := [f for f in working if f not in misconfigured]:
        r.hdel(key, *fixed)
    return new


def misconfigured_checks(r: redis.Redis, settings: Settings, target: str) -> dict[str, dict[str, str]]:
    """The target's probe feeds that cannot succeed: uri -> {detail, since}."""
    raw = cast("dict[str, str]", r.hgetall(_key(settings, target, "misconfigured")))
    return {feed: json.loads(v) for feed, v in raw.items()}
