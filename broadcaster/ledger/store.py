"""The ledger: posts and their per-channel deliveries, changed only through named verbs.

The ledger, not the Celery message, is the source of truth. Each verb (`create_post`,
`dispatch`, `route`, `reroute`, `release_held`, `claim`, `delivered`, `retry`, `fail`,
`decided`, `cancel`, ...) reads what it needs, decides with the pure rules of
`broadcaster.core`, and writes everything that goes with the change in one Lua script,
only if nothing it read has changed meanwhile: the record, its event (with `brand` and
`post`), the metrics, the retention, and the index that leads a sweeper to it (`delivered`
also: a Bluesky post's entry in its target's recent posts, a fan-out run's per-recipient
outcomes, see `broadcaster.ledger.recipients`). So every
non-final delivery is, at every moment, in exactly one of the schedule (`sched`, the
post), `dispatching` (the post), `held:<target>` or `inflight`: a worker killed between
two verbs strands nothing (tests/integration/test_ledger_stranding.py).

Keys: see `broadcaster.ledger.keys`.

Retention: once every delivery of a post is final, its hash gets an EXPIRE of
`settings.retention_seconds` (a delivery added later, say by the look-back mirror,
takes it off again). `retire_expired` then drops expired posts from their brand's
list and events older than the retention from the stream (the sweeper calls it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, cast

import redis

from broadcaster.core import routing
from broadcaster.core.delivery_rules import Claim, claim, delivered, failed, rate_limited_retry, retry_later
from broadcaster.core.models import ACTIVE_STATES, FINAL_STATES, Delivery, DeliveryState, Post, now_utc
from broadcaster.core.settings import Settings
from broadcaster.ledger import metrics
from broadcaster.ledger.clock import clock_for
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.recipients import RECORD_FN, Outcomes

log = logging.getLogger("broadcaster.ledger.store")

# The connections decode replies (decode_responses=True, see connection.py): they are str, where
# redis-py's types say bytes | str; the casts below say so.

EVENTS_MAXLEN = 200_000
RECENT_KEPT = 10_000  # posts remembered per Bluesky target for the look-back mirror
IDEMPOTENCY_TTL_S = 7 * 24 * 3600
SEEN_MAX = 2_000  # posts whose fields a Store remembers as compare-and-set guesses

# An event goes to the deployment's stream and, with the same id, to its brand's own stream:
# a brand's `/v1/events` then pages only its events, and a cursor means the same in both. The
# brand's entry is only that id (`POINTER`, a few bytes in the stream's listpack, where a
# second copy of the body cost about 90 bytes an event: docs/benchmarks.md §5); `_BRAND_PAGE`
# reads the bodies from the deployment's stream by id.
POINTER = ("@", "")
_EMIT_FN = f"""
local function point(brand_stream, maxlen, id)
  redis.call('XADD', brand_stream, 'MAXLEN', '~', maxlen, id, '{POINTER[0]}', '{POINTER[1]}')
end
local function emit(stream, brand_stream, maxlen, ...)
  local id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', ...)
  if brand_stream ~= '' then point(brand_stream, maxlen, id) end
  return id
end
"""

_CREATE = (
    _EMIT_FN
    + """
-- KEYS: post, brand list, sched, idem (or ''), events, dispatcher kick marker (or ''), brand events
-- ARGV: post id, fields json, created score, due score, idem ttl, events maxlen,
--       kick marker ttl ms, the post.queued event's fields (name, value, ...)
-- Returns {existing post key or '', 1 if this call set the kick marker else 0}.
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing and redis.call('EXISTS', existing) == 1 then return {existing, 0} end
end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], KEYS[1], 'EX', ARGV[5]) end
emit(KEYS[5], KEYS[7], ARGV[6], unpack(ARGV, 8))
local kicked = 0
if KEYS[6] ~= '' and redis.call('SET', KEYS[6], '1', 'NX', 'PX', ARGV[7]) then kicked = 1 end
return {'', kicked}
"""
)

# An event outside a post's scripts (SMS sign-ups, Bluesky health): the deployment's stream and,
# with the same id, a pointer in every brand stream in KEYS[2..] (none, one, or each brand on a
# target).
ADD_EVENT = (
    _EMIT_FN
    + """
-- KEYS: events, then brand event streams ; ARGV: maxlen, the event's fields (name, value, ...)
local id = emit(KEYS[1], '', ARGV[1], unpack(ARGV, 2))
for i = 2, #KEYS do point(KEYS[i], ARGV[1], id) end
return id
"""
)

# A page of one brand's events in one round trip: its stream's ids, each body read by id from
# the deployment's stream (an id whose body the deployment's MAXLEN trimmed is skipped).
_BRAND_PAGE = """
-- KEYS: the brand's events, events ; ARGV: start, count
-- Returns {the last id read or '', how many were read, {{id, {name, value, ...}}, ...}}.
local ids = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local out = {}
for _, row in ipairs(ids) do
  local e = redis.call('XRANGE', KEYS[2], row[1], row[1])
  if e[1] then out[#out + 1] = e[1] end
end
local last = ''
if #ids > 0 then last = ids[#ids][1] end
return {last, #ids, out}
"""

_CLAIM_DUE = """
-- KEYS: sched, dispatching ; ARGV: now, limit, lease deadline
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[3], id)
end
return ids
"""

_CLAIM_ONE = """
-- KEYS: sched, dispatching ; ARGV: post id, lease deadline
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

_EDIT_SCHEDULED = (
    _EMIT_FN
    + """
-- KEYS: sched, post, events, brand events ; ARGV: post json, due score, delivery fields json, post id,
--   events maxlen, the post.edited event's fields (name, value, ...)
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) then return 0 end
redis.call('HSET', KEYS[2], 'post', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
local fields = cjson.decode(ARGV[3])
if next(fields) ~= nil then
  for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
    if string.sub(f, 1, 2) == 'd:' then redis.call('HDEL', KEYS[2], f) end
  end
  for k, v in pairs(fields) do redis.call('HSET', KEYS[2], k, v) end
end
emit(KEYS[3], KEYS[4], ARGV[5], unpack(ARGV, 6))
return 1
"""
)

# Every delivery final: expire the post hash after the retention; otherwise make sure it does
# not expire (a new delivery on a finished post). Shared by the two scripts below.
_SETTLE_FN = """
local function settle(key, ttl, final_names)
  local fields = redis.call('HGETALL', key)
  local final, deliveries = {}, 0
  for s in string.gmatch(final_names, '%S+') do final[s] = true end
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'd:' then
      deliveries = deliveries + 1
      if not final[cjson.decode(fields[i + 1])['state']] then
        redis.call('PERSIST', key)
        return 0
      end
    end
  end
  if deliveries == 0 then return 0 end
  redis.call('EXPIRE', key, ttl)
  return 1
end
"""

_CANCEL = (
    _SETTLE_FN
    + _EMIT_FN
    + """
-- KEYS: sched, post, events, brand events ; ARGV: post id, post json, delivery fields json, ttl,
--   final states, events maxlen, the post.canceled event's fields (name, value, ...)
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'post', ARGV[2])
for k, v in pairs(cjson.decode(ARGV[3])) do redis.call('HSET', KEYS[2], k, v) end
emit(KEYS[3], KEYS[4], ARGV[6], unpack(ARGV, 7))
settle(KEYS[2], ARGV[4], ARGV[5])
return 1
"""
)

_APPLY = (
    _SETTLE_FN
    + _EMIT_FN
    + RECORD_FN
    + """
-- One ledger verb's whole write: a compare-and-set over some fields of a post hash and, only
-- if every one still holds what the verb read, every field, event, index entry, metric and
-- retention change that goes with it, in one step. A worker killed before it changes nothing;
-- after it, the record and every index that leads a sweeper to it agree.
-- KEYS: post, events, inflight, metric counters, metric histograms, dispatching, held (or ''),
--   the brand's events (or ''), posts recently on Bluesky (or ''), a fan-out delivery's
--   recipients hash and to-do set (or '' each)
-- ARGV[1]: json: cas {field: expected ('' = absent)}, set {field: value}, ev [[k, v, ...]],
--   maxlen, ia {member: deadline} (in-flight entries), ir [member] (drop), ha {id: score}
--   (held), hr [id], dr [id] (dispatching), c / h / hf (metric increments), ttl + final,
--   rb [post id, score, kept] (Bluesky took the post: the look-back mirror's index),
--   rw {ttl, w} (a fan-out run's outcomes: see broadcaster.ledger.recipients.RECORD_FN)
-- Returns {0} when a field changed, else {1, recipients whose entry changed meanwhile...}.
local fx = cjson.decode(ARGV[1])
for f, expected in pairs(fx.cas) do
  if (redis.call('HGET', KEYS[1], f) or '') ~= expected then return {0} end
end
for f, v in pairs(fx.set) do redis.call('HSET', KEYS[1], f, v) end
for _, e in ipairs(fx.ev) do emit(KEYS[2], KEYS[8], fx.maxlen, unpack(e)) end
for m, at in pairs(fx.ia) do redis.call('ZADD', KEYS[3], at, m) end
for _, m in ipairs(fx.ir) do redis.call('ZREM', KEYS[3], m) end
for id, at in pairs(fx.ha) do redis.call('ZADD', KEYS[7], at, id) end
for _, id in ipairs(fx.hr) do redis.call('ZREM', KEYS[7], id) end
for _, id in ipairs(fx.dr) do redis.call('ZREM', KEYS[6], id) end
for f, n in pairs(fx.c) do redis.call('HINCRBY', KEYS[4], f, n) end
for f, n in pairs(fx.h) do redis.call('HINCRBY', KEYS[5], f, n) end
for f, n in pairs(fx.hf) do redis.call('HINCRBYFLOAT', KEYS[5], f, n) end
if fx.ttl then settle(KEYS[1], fx.ttl, fx.final) end
if fx.rb then
  redis.call('ZADD', KEYS[9], fx.rb[2], fx.rb[1])
  redis.call('ZREMRANGEBYRANK', KEYS[9], 0, -tonumber(fx.rb[3]) - 1)
end
if fx.rw then return {1, unpack(record_recipients(KEYS[10], KEYS[11], fx.rw.ttl, fx.rw.w))} end
return {1}
"""
)

_RETIRE = """
-- KEYS: brand list ; ARGV: cutoff (created before it), limit, post key prefix
-- The oldest entries whose post hash has expired leave the list; live ones are skipped.
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local gone = 0
for _, id in ipairs(old) do
  if redis.call('EXISTS', ARGV[3] .. id) == 0 then
    redis.call('ZREM', KEYS[1], id)
    gone = gone + 1
  end
end
return gone
"""

_ADD_RSS = """
-- KEYS: feed zset, entries hash, updated ; ARGV: entry id, entry json, published, keep, now
local added = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[1], 'NX', ARGV[3], ARGV[1])
local extra = math.min(redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4]), 1000)
if extra > 0 then
  local old = redis.call('ZRANGE', KEYS[1], 0, extra - 1)
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
end
if added == 1 then redis.call('SET', KEYS[3], ARGV[5]) end
return added
"""

_FINAL_NAMES = " ".join(sorted(s.value for s in FINAL_STATES))


class _Snapshot:
    """The post's fields as a verb read them (parsed on demand)."""

    def __init__(self, post_id: str, raw: dict[str, str | None]):
        self.post_id = post_id
        self.raw = raw
        self._post: Post | None = None
        self._parsed: dict[str, Delivery] = {}  # a verb reads a record several times: parse it once

    def post(self) -> Post | None:
        if self._post is None and (raw := self.raw.get("post")):
            self._post = Post.model_validate_json(raw)
        return self._post

    def delivery(self, channel: str) -> Delivery | None:
        if (parsed := self._parsed.get(channel)) is not None:
            return parsed
        raw = self.raw.get("d:" + channel)
        if not raw:
            return None
        parsed = self._parsed[channel] = parse_delivery(channel, raw)
        return parsed

    def deliveries(self) -> dict[str, Delivery]:
        return {f[2:]: d for f in self.raw if f[:2] == "d:" and (d := self.delivery(f[2:])) is not None}


class _Write:
    """Everything one verb writes, built from pure rules; `_APPLY` writes it in one step, only if
    every field the verb read is unchanged."""

    def __init__(self, snap: _Snapshot):
        self.snap = snap
        self.fields: dict[str, str] = {}
        self.changed: dict[str, Delivery] = {}
        self.events: list[list[str]] = []
        self.inflight_add: dict[str, str] = {}
        self.inflight_rm: list[str] = []
        self.held_add: dict[str, str] = {}
        self.held_rm: list[str] = []
        self.dispatching_rm: list[str] = []
        self.increments = metrics.Increments({}, {}, {})
        self.settle = False
        self.on_bluesky: tuple[str, float] | None = None  # (target, when): see `Store.delivered`
        self.outcomes: Outcomes | None = None  # a fan-out run's, written with the delivery's change

    def _event(self, type_: str, **fields: str) -> None:
        post = self.snap.post()
        body = {"type": type_, "brand": post.brand if post else "", "post": self.snap.post_id} | fields
        self.events.append([x for kv in body.items() for x in kv])

    def delivery(self, old: Delivery | None, new: Delivery, inflight_until: float | None = None) -> _Write:
        """A delivery's new state, with its event, metrics, in-flight entry and retention."""
        new = new.model_copy(update={"updated_at": now_utc()})
        channel, member = new.channel, f"{self.snap.post_id}|{new.channel}"
        self.fields["d:" + channel] = _dump(new)
        self.changed[channel] = new
        if old is None or old.state != new.state:
            error = new.error or new.reason or ""
            self._event(
                f"delivery.{new.state.value}", channel=channel, attempts=str(new.attempts), error=error
            )
            post = self.snap.post()
            if post is not None:
                try:  # metrics never fail the change
                    self.increments.add(metrics.delivery_change_increments(post, old, new))
                except Exception:
                    log.warning("could not count %s/%s in the metrics", post.id, channel, exc_info=True)
        if new.state in ACTIVE_STATES:
            if inflight_until is not None:
                self.inflight_add[member] = repr(float(inflight_until))
        else:
            self.inflight_rm.append(member)
        if new.state in FINAL_STATES or old is None or old.state in FINAL_STATES:
            self.settle = True
        return self

    def routes(self, routes: dict[str, routing.Route], deadline: float) -> _Write:
        """Routing's decisions: a new delivery, or a non-final one moved to the route's state."""
        for channel, route in routes.items():
            d = self.changed.get(channel) or self.snap.delivery(channel)
            if d is None:
                self.delivery(
                    None, Delivery(channel=channel, state=route.state, reason=route.reason), deadline
                )
            elif d.state not in FINAL_STATES and d.state != route.state:
                self.delivery(
                    d, d.model_copy(update={"state": route.state, "reason": route.reason}), deadline
                )
        return self

    def mark(self, dispatched: bool = False, rerouted: bool = False) -> _Write:
        """The post's first dispatch (`post.dispatched`) and first reroute (a failover counted)."""
        post = self.snap.post()
        if post is None:
            return self
        update: dict[str, Any] = {}
        if dispatched and post.dispatched_at is None:
            update["dispatched_at"] = now_utc()
            self._event("post.dispatched")
        if rerouted and post.rerouted_at is None:
            update["rerouted_at"] = now_utc()
            self.increments.add(
                metrics.Increments({metrics.counter_field(metrics.FAILOVERS, brand=post.brand): 1}, {}, {})
            )
        if update:
            self.fields["post"] = _dump(post.model_copy(update=update))
        return self

    def hold(self, score: float) -> _Write:
        self.held_add[self.snap.post_id] = repr(float(score))
        return self

    def payload(self, ttl: int) -> str:
        fx: dict[str, Any] = {
            "cas": {f: v or "" for f, v in self.snap.raw.items()},
            "set": self.fields,
            "ev": self.events,
            "maxlen": str(EVENTS_MAXLEN),
            "ia": self.inflight_add,
            "ir": self.inflight_rm,
            "ha": self.held_add,
            "hr": self.held_rm,
            "dr": self.dispatching_rm,
        } | self.increments.as_json_dict()
        if self.settle:
            fx |= {"ttl": str(ttl), "final": _FINAL_NAMES}
        if self.on_bluesky is not None:
            fx["rb"] = [self.snap.post_id, repr(self.on_bluesky[1]), str(RECENT_KEPT)]
        if self.outcomes is not None:
            fx["rw"] = self.outcomes.payload()
        return json.dumps(fx)


def _if_sending(change: Callable[[Delivery], Delivery]) -> Callable[[Delivery], Delivery | None]:
    """An attempt's result counts only while its delivery is still `sending` (the claim held)."""
    return lambda d: change(d) if d.state == DeliveryState.sending else None


def _with_recipients(d: Delivery, recipients: Any) -> Delivery:
    """A fan-out channel's per-recipient progress travels with the attempt's result."""
    return d.model_copy(update={"recipients": recipients}) if recipients is not None else d


class Conflict(Exception):
    """Raised when a change is no longer allowed (the post was dispatched meanwhile)."""


def event_time(event_id: str) -> str:
    """An event's time, from its stream id: events do not store it twice (memory per post)."""
    ms = int(event_id.split("-", 1)[0])
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _dump(model: Post | Delivery) -> str:
    """A record as stored: no empty fields, and a delivery without its channel (the field
    name `d:<channel>` says it; bytes per post kept, see docs/benchmarks.md)."""
    if isinstance(model, Delivery):
        return model.model_dump_json(exclude_none=True, exclude=_NO_CHANNEL)
    empty = {name for name in _EMPTY_BY_DEFAULT if not getattr(model, name)}
    return model.model_dump_json(exclude_none=True, exclude=empty)


_NO_CHANNEL = {"channel"}
_EMPTY_BY_DEFAULT = ("media", "variants")  # most posts have neither: not stored as [] and {}


def parse_delivery(channel: str, raw: str) -> Delivery:
    """A stored delivery (see `_dump`) back as a record."""
    return Delivery.model_validate_json('{"channel":' + json.dumps(channel) + "," + raw[1:])


class Store:
    """Typed access to the ledger. Cheap to build; holds only the connection and the prefix."""

    def __init__(self, r: redis.Redis, settings: Settings):
        self.r = r
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.clock = clock_for(r)
        self._create = r.register_script(_CREATE)
        self._claim_due = r.register_script(_CLAIM_DUE)
        self._claim_one = r.register_script(_CLAIM_ONE)
        self._edit = r.register_script(_EDIT_SCHEDULED)
        self._cancel = r.register_script(_CANCEL)
        self._apply = r.register_script(_APPLY)
        self._retire = r.register_script(_RETIRE)
        self._add_rss = r.register_script(_ADD_RSS)
        self._add_event = r.register_script(ADD_EVENT)
        self._brand_page = r.register_script(_BRAND_PAGE)
        # The hash fields this process last read or wrote, per post: the first guess of a
        # compare-and-set, which saves its read (a wrong guess only fails the CAS, then reads).
        self._seen: dict[str, dict[str, str]] = {}

    def _remember(self, post_id: str, raw: dict[str, str]) -> None:
        if len(self._seen) >= SEEN_MAX:
            self._seen.clear()
        self._seen[post_id] = dict(raw)

    def _guess(self, post_id: str, fields: list[str]) -> list[str | None]:
        seen = self._seen.get(post_id)
        if seen is not None:
            return [seen.get(f) for f in fields]
        return cast("list[str | None]", self.r.hmget(self.post_key(post_id), fields))

    def now(self) -> float:
        """Unix seconds by the deployment's clock (Redis `TIME`): every lease, due time and
        sweeper deadline is compared on it, so a host whose clock is off changes nothing."""
        return self.clock.now()

    # ---- posts -----------------------------------------------------------------------------
    def post_key(self, post_id: str) -> str:
        return self.keys.post(post_id)

    def create_post(
        self,
        post: Post,
        deliveries: Iterable[Delivery],
        idempotency_key: str | None = None,
        *,
        kick_key: str | None = None,
        kick_ms: int = 1000,
        on_kick: Callable[[], None] | None = None,
    ) -> str | None:
        """Store a new post, schedule it and add its `post.queued` event, in one round trip.

        Returns the existing post id on an idempotent replay (nothing is written then).
        `kick_key` (for a post that is due): the same script also sets that marker (NX, for
        `kick_ms`), and `on_kick` runs when it did: `broadcaster.common.queue`'s dispatcher kick
        without a round trip of its own.
        """
        fields = {"post": _dump(post)} | {f"d:{d.channel}": _dump(d) for d in deliveries}
        idem = self.keys.idempotency(post.brand, idempotency_key) if idempotency_key else ""
        existing, kicked = self._create(
            keys=[
                self.post_key(post.id),
                self.keys.brand_posts(post.brand),
                self.keys.sched,
                idem,
                self.keys.events,
                kick_key or "",
                self.keys.brand_events(post.brand),
            ],
            args=[
                post.id,
                json.dumps(fields),
                post.created_at.timestamp(),
                post.scheduled_at.timestamp(),
                IDEMPOTENCY_TTL_S,
                EVENTS_MAXLEN,
                kick_ms,
                # the same fields as add_event("post.queued", brand=..., post=...) writes
                *("type", "post.queued", "brand", post.brand, "post", post.id),
            ],
        )
        if existing:
            existing_key: str = existing  # the script's reply: the post's key
            return existing_key.rsplit(":", 1)[-1]
        if kicked and on_kick is not None:
            on_kick()
        return None

    def idempotent_post(self, brand: str, idempotency_key: str) -> str | None:
        """The id of the brand's post created with this idempotency key, if any."""
        ref = cast("str | None", self.r.get(self.keys.idempotency(brand, idempotency_key)))
        return ref.rsplit(":", 1)[-1] if ref else None

    def load(self, post_id: str) -> tuple[Post, dict[str, Delivery]] | None:
        return self._parse(post_id, cast("dict[str, str]", self.r.hgetall(self.post_key(post_id))))

    def load_many(self, ids: list[str]) -> list[tuple[Post, dict[str, Delivery]]]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.post_key(i))
        loaded = (self._parse(i, raw) for i, raw in zip(ids, pipe.execute(), strict=True))
        return [x for x in loaded if x is not None]

    def _parse(self, post_id: str, raw: dict[str, str]) -> tuple[Post, dict[str, Delivery]] | None:
        if not raw or "post" not in raw:
            self._seen.pop(post_id, None)
            return None
        self._remember(post_id, raw)
        post = Post.model_validate_json(raw["post"])
        deliveries = {f[2:]: parse_delivery(f[2:], v) for f, v in raw.items() if f[:2] == "d:"}
        return post, deliveries

    def _scheduled_post_keys(self, post: Post) -> list[str]:
        """What the edit and cancel scripts touch: the schedule, the post, and both event streams."""
        return [self.keys.sched, self.post_key(post.id), self.keys.events, self.keys.brand_events(post.brand)]

    def edit_scheduled(self, post: Post, deliveries: Iterable[Delivery] | None) -> None:
        fields = {f"d:{d.channel}": _dump(d) for d in deliveries or []}
        event = ("type", "post.edited", "brand", post.brand, "post", post.id)
        ok = self._edit(
            keys=self._scheduled_post_keys(post),
            args=[
                _dump(post),
                post.scheduled_at.timestamp(),
                json.dumps(fields),
                post.id,
                EVENTS_MAXLEN,
                *event,
            ],
        )
        if not ok:
            raise Conflict("the post was already dispatched")

    def cancel(self, post: Post, deliveries: dict[str, Delivery]) -> None:
        now = now_utc()
        post = post.model_copy(update={"canceled_at": now})
        fields = {
            f"d:{c}": _dump(d.model_copy(update={"state": DeliveryState.canceled, "updated_at": now}))
            for c, d in deliveries.items()
        }
        event = ("type", "post.canceled", "brand", post.brand, "post", post.id)
        ok = self._cancel(
            keys=self._scheduled_post_keys(post),
            args=[
                post.id,
                _dump(post),
                json.dumps(fields),
                self.settings.retention_seconds,
                _FINAL_NAMES,
                EVENTS_MAXLEN,
                *event,
            ],
        )
        if not ok:
            raise Conflict("the post was already dispatched")

    def list_posts(self, brand: str, before: tuple[float, str] | None, limit: int) -> list[tuple[float, str]]:
        """(created score, id) pairs, newest first, strictly older than the cursor."""
        key = self.keys.brand_posts(brand)
        top = "+inf" if before is None else before[0]
        rows = cast(
            "list[tuple[str, float]]",
            self.r.zrevrangebyscore(key, top, "-inf", start=0, num=limit + 50, withscores=True),
        )
        out: list[tuple[float, str]] = []
        for pid, score in rows:
            if before is not None and (score, pid) >= before:
                continue
            out.append((score, pid))
            if len(out) == limit:
                break
        return out

    # ---- the verbs' engine ---------------------------------------------------------------------
    def _run(
        self,
        post_id: str,
        fields: list[str] | None,
        decide: Callable[[_Snapshot], _Write | None],
        held_key: str = "",
    ) -> tuple[_Snapshot, _Write | None]:
        """Read, decide, write atomically; again from a fresh read if another writer came first.

        `fields` None reads the whole post. A decision taken on this process's remembered
        fields (no read) that changes nothing is checked against a real read first.
        """
        key = self.post_key(post_id)
        guess = fields is not None
        for _ in range(50):
            if fields is None:
                raw: dict[str, str | None] = dict(cast("dict[str, str]", self.r.hgetall(key)))
            else:
                values = (
                    self._guess(post_id, fields)
                    if guess
                    else cast("list[str | None]", self.r.hmget(key, fields))
                )
                raw = dict(zip(fields, values, strict=True))
            snap = _Snapshot(post_id, raw)
            write = decide(snap)
            if write is None:
                if guess and post_id in self._seen:
                    self._seen.pop(post_id, None)
                    guess = False
                    continue
                return snap, None
            keys = [key, self.keys.events, self.keys.inflight, self.keys.counters]
            keys += [self.keys.histograms, self.keys.dispatching, held_key or self.keys.held("")]
            post = snap.post()
            keys.append(self.keys.brand_events(post.brand) if post is not None else "")
            keys.append(self.keys.bluesky_recent(write.on_bluesky[0]) if write.on_bluesky else "")
            keys += write.outcomes.keys if write.outcomes is not None else ["", ""]
            reply = self._apply(keys=keys, args=[write.payload(self.settings.retention_seconds)])
            if reply[0]:
                if (entry := self._seen.get(post_id)) is not None:
                    entry.update(write.fields)
                if write.outcomes is not None:
                    write.outcomes.written(reply[1:])
                return snap, write
            self._seen.pop(post_id, None)
            guess = False
        raise Conflict(f"post {post_id} changed too often to update")

    def _one(
        self,
        post_id: str,
        channel: str,
        change: Callable[[Delivery], Delivery | None],
        inflight_until: float | None = None,
        on_bluesky: str | None = None,
        outcomes: Outcomes | None = None,
    ) -> Delivery | None:
        """Change one existing delivery (`change` returns None to leave it); the new delivery or None.
        `on_bluesky`: a target whose recent posts (the look-back mirror's index) get this one;
        `outcomes`: a fan-out run's, written with the change (or on their own without one)."""

        def decide(s: _Snapshot) -> _Write | None:
            old = s.delivery(channel)
            new = change(old) if old is not None else None
            if new is None:
                return None
            write = _Write(s).delivery(old, new, inflight_until)
            if on_bluesky is not None:
                write.on_bluesky = (on_bluesky, self.now())
            write.outcomes = outcomes
            return write

        try:
            _, write = self._run(post_id, ["d:" + channel, "post"], decide)
        except Conflict:
            if outcomes is not None:
                outcomes.written(None)
            raise
        if write is None and outcomes is not None:
            outcomes.written(None)  # facts about the recipients, whatever became of the delivery
        return write.changed.get(channel) if write else None

    # ---- verbs: routing and dispatch -------------------------------------------------------------
    def route(
        self, post_id: str, routes: dict[str, routing.Route], deadline: float, rerouted: bool = False
    ) -> dict[str, Delivery]:
        """Apply routing's decisions (new deliveries, or non-final ones changed) with their in-flight
        entries; `rerouted` also marks the post rerouted (the look-back mirror). Returns those
        deliveries as they are now."""

        def decide(s: _Snapshot) -> _Write | None:
            w = _Write(s).routes(routes, deadline)
            if rerouted:
                w.mark(rerouted=True)
            return w if w.fields else None

        fields = ["post", *("d:" + c for c in routes)]
        snap, write = self._run(post_id, fields, decide)
        now = {c: d for c in routes if (d := snap.delivery(c)) is not None}
        return now | (write.changed if write else {})

    def dispatch(
        self,
        post_id: str,
        routes: dict[str, routing.Route],
        rerouted: bool,
        held_key: str,
        deadline: float,
    ) -> dict[str, Delivery] | None:
        """A claimed post's dispatch, all at once: apply its routes, mark it dispatched (and
        rerouted), index a held Bluesky delivery for the backfill, every active delivery for
        the sweeper, and take it off `dispatching`. Returns its deliveries as they are now."""

        def decide(s: _Snapshot) -> _Write | None:
            if s.post() is None:
                return None
            w = _Write(s).routes(routes, deadline)
            w.mark(dispatched=True, rerouted=rerouted)
            now = s.deliveries() | w.changed
            bsky = now.get("bluesky")
            if bsky is not None and bsky.state == DeliveryState.held:
                w.hold(s.post().scheduled_at.timestamp())  # type: ignore[union-attr]
            for channel, d in now.items():
                if d.state in ACTIVE_STATES and channel not in w.changed:
                    w.inflight_add[f"{post_id}|{channel}"] = repr(float(deadline))
            w.dispatching_rm.append(post_id)
            return w

        snap, write = self._run(post_id, None, decide, held_key)
        if write is None:
            self.finish_dispatch(post_id)
            return None
        return snap.deliveries() | write.changed

    def fail_active(self, post_id: str, error: str) -> None:
        """Every active delivery fails (its brand is gone) and the post leaves `dispatching`."""

        def decide(s: _Snapshot) -> _Write | None:
            w = _Write(s)
            for d in s.deliveries().values():
                if d.state in ACTIVE_STATES:
                    w.delivery(d, failed(d, error))
            w.dispatching_rm.append(post_id)
            return w

        self._run(post_id, None, decide)

    def reroute(
        self,
        post_id: str,
        bluesky: routing.Route,
        routes: dict[str, routing.Route],
        held_key: str,
        deadline: float,
        error: str | None = None,
    ) -> dict[str, Delivery] | None:
        """Take an active Bluesky delivery away (held for the backfill, or skipped) and route the
        post to the failover channels, in one step. Returns those deliveries as they are now;
        None if Bluesky was no longer active."""

        def decide(s: _Snapshot) -> _Write | None:
            d = s.delivery("bluesky")
            post = s.post()
            if d is None or post is None or d.state not in ACTIVE_STATES:
                return None
            update = {"state": bluesky.state, "reason": bluesky.reason, "lease_until": None}
            w = _Write(s).delivery(d, d.model_copy(update=update | ({"error": error} if error else {})))
            if bluesky.state == DeliveryState.held:
                w.hold(post.scheduled_at.timestamp())
            w.routes(routes, deadline).mark(rerouted=True)
            return w

        fields = ["post", "d:bluesky", *("d:" + c for c in routes)]
        snap, write = self._run(post_id, fields, decide, held_key)
        return snap.deliveries() | write.changed if write else None

    def release_held(self, post_id: str, held_key: str, deadline: float) -> Delivery | None:
        """The backfill's step: a held Bluesky delivery goes back to `pending`, leaves the held
        index and enters the in-flight one together. None (and out of the index) if not held."""

        def decide(s: _Snapshot) -> _Write:
            d = s.delivery("bluesky")
            w = _Write(s)
            if d is not None and d.state == DeliveryState.held:
                update = {
                    "state": DeliveryState.pending,
                    "reason": "backfill after the outage",
                    "error": None,
                }
                w.delivery(d, d.model_copy(update=update), deadline)
            w.held_rm.append(post_id)
            return w

        _, write = self._run(post_id, ["post", "d:bluesky"], decide, held_key)
        return write.changed.get("bluesky") if write else None

    # ---- verbs: one delivery attempt ---------------------------------------------------------
    def claim(
        self,
        post_id: str,
        channel: str,
        now: float,
        lease_s: float,
        idempotent: bool,
        deadline: float,
        horizon_s: float | None = None,
    ) -> tuple[Claim, Delivery | None]:
        """May this worker send? `go` with the delivery it now owns (lease and in-flight deadline)."""
        verdict: dict[str, Claim] = {}

        def take(d: Delivery) -> Delivery | None:
            c, new = claim(d, now, lease_s, idempotent, horizon_s)
            verdict["c"] = c
            return new

        mine = self._one(post_id, channel, take, deadline)
        return verdict.get("c", Claim.done), mine

    def renew_lease(
        self, post_id: str, channel: str, attempt: int, lease_until: float, deadline: float
    ) -> bool:
        """The worker sending attempt `attempt` is alive: push its lease and in-flight deadline out.
        False when the claim is no longer this attempt's (settled, or taken over)."""

        def change(d: Delivery) -> Delivery | None:
            mine = d.state == DeliveryState.sending and d.attempts == attempt
            return d.model_copy(update={"lease_until": lease_until}) if mine else None

        return self._one(post_id, channel, change, deadline) is not None

    def delivered(
        self,
        post_id: str,
        channel: str,
        remote_id: str,
        url: str | None,
        recipients: Any = None,
        note: str | None = None,
        on_bluesky: str | None = None,
        outcomes: Outcomes | None = None,
    ) -> Delivery | None:
        """The send went through: the remote id and link, with the per-recipient summary and the
        channel's remark (`reason`, e.g. why the post went without a link card). `on_bluesky`
        (a Bluesky delivery's target): the post also goes into that target's recent posts, which
        the look-back mirror reads (`recent_on_bluesky`), in the same step. `outcomes`: a fan-out
        run's per-recipient outcomes (`Roster.outcomes`), written in the same step too."""
        return self._one(
            post_id,
            channel,
            _if_sending(lambda d: delivered(d, remote_id, url, recipients, note)),
            on_bluesky=on_bluesky,
            outcomes=outcomes,
        )

    def fail(
        self, post_id: str, channel: str, error: str, recipients: Any = None, sending_only: bool = True
    ) -> Delivery | None:
        """Give the delivery up (`sending_only` False: from any non-final state, before a claim)."""

        def change(d: Delivery) -> Delivery | None:
            if d.state in FINAL_STATES or (sending_only and d.state != DeliveryState.sending):
                return None
            return _with_recipients(failed(d, error), recipients)

        return self._one(post_id, channel, change)

    def retry(
        self,
        post_id: str,
        channel: str,
        error: str,
        deadline: float,
        recipients: Any = None,
        rate_limited_at: float | None = None,
        free: bool = False,
    ) -> Delivery | None:
        """Back to `pending` for a later attempt. `rate_limited_at`: a 429 (no attempt used, the
        limit's start kept); `free`: pacing's deferral (no attempt used)."""

        def change(d: Delivery) -> Delivery:
            if rate_limited_at is not None:
                new = rate_limited_retry(d, error, rate_limited_at)
            else:
                new = retry_later(d, error)
                if free:
                    new = new.model_copy(update={"attempts": max(0, d.attempts - 1)})
            return _with_recipients(new, recipients)

        return self._one(post_id, channel, _if_sending(change), deadline)

    def decided(
        self, post_id: str, channel: str, state: DeliveryState, message: str, recipients: Any = None
    ) -> Delivery | None:
        """The channel decided not to send (`skipped`) or cannot tell if it did (`uncertain`)."""
        why = {"reason": message} if state == DeliveryState.skipped else {"error": message}
        update = {"state": state, "lease_until": None, **why}
        return self._one(
            post_id,
            channel,
            _if_sending(lambda d: _with_recipients(d.model_copy(update=update), recipients)),
        )

    def set_recipients(self, post_id: str, channel: str, summary: Any) -> Delivery | None:
        """A fan-out channel's per-recipient summary (status callbacks arrive after the send)."""
        return self._one(post_id, channel, lambda d: d.model_copy(update={"recipients": summary}))

    # ---- retention -----------------------------------------------------------------------------
    def retire_expired(self, brand_ids: Iterable[str], now: float | None = None, scan: int = 500) -> int:
        """Drop expired posts from their brand's list and old events from the stream; how many posts.

        Only entries created more than the retention ago can have expired; the oldest `scan`
        of them per brand are checked each call (posts still alive there are skipped).
        """
        now = self.now() if now is None else now
        brands = list(brand_ids)
        cutoff = now - self.settings.retention_seconds
        gone = 0
        for brand in brands:
            gone += int(
                self._retire(
                    keys=[self.keys.brand_posts(brand)], args=[cutoff, scan, self.keys.post_prefix()]
                )
            )
        minid = f"{max(0, int(cutoff * 1000))}-0"
        pipe = self.r.pipeline(transaction=False)
        pipe.xtrim(self.keys.events, minid=minid, approximate=False)
        for brand in brands:
            pipe.xtrim(self.keys.brand_events(brand), minid=minid, approximate=False)
        pipe.execute()
        return gone

    # ---- metrics (counters in Redis, so API and workers agree; never fail the change) ----------
    # ---- schedule and in-flight index ---------------------------------------------------------
    def claim_due(self, now: float, limit: int, lease_s: float) -> list[str]:
        claimed: list[str] = self._claim_due(
            keys=[self.keys.sched, self.keys.dispatching], args=[now, limit, now + lease_s]
        )
        return claimed

    def finish_dispatch(self, *post_ids: str) -> None:
        if post_ids:
            self.r.zrem(self.keys.dispatching, *post_ids)

    def extend_dispatch(self, post_ids: list[str], deadline: float) -> None:
        """Push the dispatching lease of claimed posts out (they wait in the queue meanwhile)."""
        if post_ids:
            self.r.zadd(self.keys.dispatching, dict.fromkeys(post_ids, deadline), xx=True)

    def expired_dispatches(self, now: float, limit: int = 500) -> list[str]:
        return cast("list[str]", self.r.zrangebyscore(self.keys.dispatching, "-inf", now, start=0, num=limit))

    def recent_on_bluesky(self, target: str, start: float, end: float) -> list[tuple[str, float]]:
        """Posts Bluesky took in [start, end] (the look-back mirror's candidates), with when."""
        key = self.keys.bluesky_recent(target)
        return cast("list[tuple[str, float]]", self.r.zrangebyscore(key, start, end, withscores=True))

    def next_held(self, held_key: str) -> list[str]:
        """The oldest held post, if any (the backfill releases them oldest first)."""
        return cast("list[str]", self.r.zrange(held_key, 0, 0))

    def held_count(self, held_key: str) -> int:
        return int(self.r.zcard(held_key))

    def claim_now(self, post_id: str, lease_deadline: float) -> bool:
        """Take one post off the schedule into `dispatching` (a notice sent at once); False if the
        dispatcher claimed it first."""
        return bool(
            self._claim_one(keys=[self.keys.sched, self.keys.dispatching], args=[post_id, lease_deadline])
        )

    def postpone(self, post_id: str, channel: str, deadline: float) -> None:
        """Move an active delivery's in-flight deadline (it waits for the outage notice)."""
        self.r.zadd(self.keys.inflight, {f"{post_id}|{channel}": deadline}, xx=True)

    def forget_inflight(self, post_id: str, channel: str) -> None:
        """The sweeper found the delivery final (or gone): its in-flight entry is stale."""
        self.r.zrem(self.keys.inflight, f"{post_id}|{channel}")

    def expired_inflight(self, now: float, limit: int = 500) -> list[tuple[str, str]]:
        members = cast("list[str]", self.r.zrangebyscore(self.keys.inflight, "-inf", now, start=0, num=limit))
        # Members are written as f"{post_id}|{channel}": two parts.
        return [cast("tuple[str, str]", tuple(m.split("|", 1))) for m in members]

    def overdue_count(self, before: float) -> int:
        return int(self.r.zcount(self.keys.sched, "-inf", before))

    # ---- events ------------------------------------------------------------------------------
    def add_event(self, type_: str, **fields: str | None) -> str:
        """Append an event. Its time is its stream id's (milliseconds): see `event_time`."""
        body = {"type": type_} | {k: v for k, v in fields.items() if v is not None}
        brand = body.get("brand")
        event_id = self._add_event(
            keys=[self.keys.events, *([self.keys.brand_events(brand)] if brand else [])],
            args=[EVENTS_MAXLEN, *(x for kv in body.items() for x in kv)],
        )
        return cast("str", event_id)

    def events(
        self,
        after: str | None = None,
        limit: int = 100,
        match: Callable[[dict[str, str]], bool] | None = None,
        brand: str | None = None,
    ) -> list[dict[str, str]]:
        """Events oldest first, after a stream id; `brand`: that brand's own stream (a page costs
        one round trip, whatever other brands did); `match` filters further."""
        out: list[dict[str, str]] = []
        start = f"({after}" if after else "-"
        count = limit if match is None else max(limit * 2, 100)
        while len(out) < limit:
            rows, read, last = self._page(brand, start, count)
            for eid, body in rows:
                if match is None or match(body):
                    out.append({"id": eid, "at": event_time(eid)} | body)
                    if len(out) == limit:
                        break
            if read < count:  # the end of the stream
                break
            start = f"({last}"
        return out

    def _page(
        self, brand: str | None, start: str, count: int
    ) -> tuple[list[tuple[str, dict[str, str]]], int, str]:
        """Up to `count` entries after `start`: (rows, how many ids were read, the last one)."""
        if not brand:
            rows = cast(
                "list[tuple[str, dict[str, str]]]", self.r.xrange(self.keys.events, start, "+", count=count)
            )
            return rows, len(rows), rows[-1][0] if rows else ""
        last, read, found = self._brand_page(
            keys=[self.keys.brand_events(brand), self.keys.events], args=[start, count]
        )
        return (
            [(eid, dict(zip(flat[::2], flat[1::2], strict=True))) for eid, flat in found],
            int(read),
            str(last),
        )

    # ---- RSS entries -------------------------------------------------------------------------
    def add_rss_entry(self, brand: str, entry_id: str, entry: dict[str, Any], keep: int) -> bool:
        """Add (or keep) one feed entry, trimming the feed to `keep`, in one round trip.

        The entry id is the post id, so a replay adds nothing.
        """
        published = datetime.fromisoformat(entry["published"]).timestamp()
        added = self._add_rss(
            keys=[self.keys.rss(brand), self.keys.rss_entries(brand), self.keys.rss_updated(brand)],
            args=[entry_id, json.dumps(entry), published, keep, str(time.time())],
        )
        return bool(added)

    def rss_entries(self, brand: str, limit: int) -> list[dict[str, Any]]:
        """Newest first."""
        ids = cast("list[str]", self.r.zrevrange(self.keys.rss(brand), 0, limit - 1))
        if not ids:
            return []
        raws = self.r.hmget(self.keys.rss_entries(brand), ids)
        return [json.loads(r) | {"id": i} for i, r in zip(ids, raws, strict=True) if r]

    def rss_updated(self, brand: str) -> float | None:
        v = self.r.get(self.keys.rss_updated(brand))
        return float(v) if v else None
