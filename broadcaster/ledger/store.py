"""The Redis ledger: posts, their per-channel deliveries, the schedule, and the event stream.

The ledger, not the Celery message, is the source of truth. Every state change is a
compare-and-set on one hash field, so two workers holding the same redelivered task
cannot both win a claim; the schedule and the in-flight index are sorted sets that
the dispatcher and the sweeper read.

Keys (all under the settings' prefix):
  post:<id>            hash  post -> Post JSON, d:<channel> -> Delivery JSON
  sched                zset  post id -> due time (not yet dispatched)
  dispatching          zset  post id -> lease deadline (claimed by a dispatcher)
  inflight             zset  "<post id>|<channel>" -> deadline for the sweeper
  brand:<b>:posts      zset  post id -> created time (listing, newest first)
  idem:<b>:<key>       str   post id, for Idempotency-Key replays
  events               stream  every state change
  rss:<b> / rss:<b>:e  zset + hash  the brand's feed entries

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
from typing import Any

import redis

from broadcaster.core.models import FINAL_STATES, Delivery, DeliveryState, Post, now_utc
from broadcaster.core.settings import Settings
from broadcaster.ledger import metrics

log = logging.getLogger("broadcaster.ledger.store")

EVENTS_MAXLEN = 200_000
IDEMPOTENCY_TTL_S = 7 * 24 * 3600
SEEN_MAX = 2_000  # posts whose fields a Store remembers as compare-and-set guesses

_CREATE = """
-- KEYS: post, brand list, sched, idem (or ''), events, dispatcher kick marker (or '')
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
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', unpack(ARGV, 8))
local kicked = 0
if KEYS[6] ~= '' and redis.call('SET', KEYS[6], '1', 'NX', 'PX', ARGV[7]) then kicked = 1 end
return {'', kicked}
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

_EDIT_SCHEDULED = """
-- KEYS: sched, post ; ARGV: post json, due score, delivery fields json
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
return 1
"""

_CANCEL = """
-- KEYS: sched, post ; ARGV: post id, post json, delivery fields json
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'post', ARGV[2])
for k, v in pairs(cjson.decode(ARGV[3])) do redis.call('HSET', KEYS[2], k, v) end
return 1
"""


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

_SETTLE = (
    _SETTLE_FN
    + """
-- KEYS: post ; ARGV: ttl s, final states (space separated)
return settle(KEYS[1], ARGV[1], ARGV[2])
"""
)

_CHANGE = (
    _SETTLE_FN
    + """
-- Compare-and-set one field of a post hash and, only if it won, everything that goes with
-- it, in one round trip.
-- KEYS: post, events, inflight, metric counters, metric histograms
-- ARGV: field, expected ('' = absent), new json, effects json: e = an event's field/value
--   list, maxlen; m = the in-flight member, rm = drop it, at = its new deadline;
--   c / h / hf = metric increments; ttl + final = settle the post's retention
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local fx = cjson.decode(ARGV[4])
if fx.e then redis.call('XADD', KEYS[2], 'MAXLEN', '~', fx.maxlen, '*', unpack(fx.e)) end
if fx.rm then redis.call('ZREM', KEYS[3], fx.m) elseif fx.at then redis.call('ZADD', KEYS[3], fx.at, fx.m) end
for f, n in pairs(fx.c) do redis.call('HINCRBY', KEYS[4], f, n) end
for f, n in pairs(fx.h) do redis.call('HINCRBY', KEYS[5], f, n) end
for f, n in pairs(fx.hf) do redis.call('HINCRBYFLOAT', KEYS[5], f, n) end
if fx.ttl then settle(KEYS[1], fx.ttl, fx.final) end
return 1
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


class Conflict(Exception):
    """Raised when a change is no longer allowed (the post was dispatched meanwhile)."""


def event_time(event_id: str) -> str:
    """An event's time, from its stream id: events do not store it twice (memory per post)."""
    ms = int(event_id.split("-", 1)[0])
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _dump(model: Any) -> str:
    """A record as stored: no empty fields, and a delivery without its channel (the field
    name `d:<channel>` says it; bytes per post kept, see docs/benchmarks.md)."""
    if isinstance(model, Delivery):
        return model.model_dump_json(exclude_none=True, exclude=_NO_CHANNEL)
    return model.model_dump_json(exclude_none=True)


_NO_CHANNEL = {"channel"}


def parse_delivery(channel: str, raw: str) -> Delivery:
    """A stored delivery (see `_dump`) back as a record."""
    return Delivery.model_validate_json(raw[:1] + json.dumps({"channel": channel})[1:-1] + "," + raw[1:])


class Store:
    """Typed access to the ledger. Cheap to build; holds only the connection and the prefix."""

    def __init__(self, r: redis.Redis, settings: Settings):
        self.r = r
        self.settings = settings
        self.k = settings.key
        self._create = r.register_script(_CREATE)
        self._claim_due = r.register_script(_CLAIM_DUE)
        self._edit = r.register_script(_EDIT_SCHEDULED)
        self._cancel = r.register_script(_CANCEL)
        self._settle = r.register_script(_SETTLE)
        self._change = r.register_script(_CHANGE)
        self._retire = r.register_script(_RETIRE)
        self._add_rss = r.register_script(_ADD_RSS)
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
        return self.r.hmget(self.post_key(post_id), fields)

    def _changed(self, post_id: str, field: str, value: str | None) -> None:
        """After a CAS: remember what won (`value`), or forget the guess that lost (None)."""
        if value is None:
            self._seen.pop(post_id, None)
        elif (entry := self._seen.get(post_id)) is not None:  # (no check-then-get: pool threads)
            entry[field] = value

    # ---- posts -----------------------------------------------------------------------------
    def post_key(self, post_id: str) -> str:
        return self.k("post", post_id)

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
        idem = self.k("idem", post.brand, idempotency_key) if idempotency_key else ""
        existing, kicked = self._create(
            keys=[
                self.post_key(post.id),
                self.k("brand", post.brand, "posts"),
                self.k("sched"),
                idem,
                self.k("events"),
                kick_key or "",
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
            return existing.rsplit(":", 1)[-1]
        if kicked and on_kick is not None:
            on_kick()
        return None

    def load(self, post_id: str) -> tuple[Post, dict[str, Delivery]] | None:
        return self._parse(post_id, self.r.hgetall(self.post_key(post_id)))

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

    def save_post(self, post: Post) -> None:
        self.r.hset(self.post_key(post.id), "post", _dump(post))

    def update_post(self, post_id: str, change: Callable[[Post], Post | None]) -> Post | None:
        """Compare-and-set the post record; `change` returns None to leave it alone.

        Its first dispatch writes `post.dispatched`, its first reroute counts a failover.
        """
        for _ in range(20):
            (old_raw,) = self._guess(post_id, ["post"])
            if old_raw is None:
                self._seen.pop(post_id, None)
                (old_raw,) = self.r.hmget(self.post_key(post_id), ["post"])
                if old_raw is None:
                    return None
            old = Post.model_validate_json(old_raw)
            new = change(old)
            if new is None:
                return None
            new_raw = _dump(new)
            fx: dict[str, Any] = {"c": {}, "h": {}, "hf": {}}
            if old.dispatched_at is None and new.dispatched_at is not None:
                event = ["type", "post.dispatched", "brand", new.brand, "post", new.id]
                fx |= {"e": event, "maxlen": str(EVENTS_MAXLEN)}
            if old.rerouted_at is None and new.rerouted_at is not None:
                fx["c"] = {metrics.counter_field(metrics.FAILOVERS, brand=new.brand): "1"}
            won = self._change(
                keys=self._change_keys(post_id), args=["post", old_raw, new_raw, json.dumps(fx)]
            )
            self._changed(post_id, "post", new_raw if won else None)
            if won:
                return new
        raise Conflict(f"post {post_id} changed too often to update")

    def _change_keys(self, post_id: str) -> list[str]:
        return [
            self.post_key(post_id),
            self.k("events"),
            self.k("inflight"),
            self.k("metrics", "c"),
            self.k("metrics", "h"),
        ]

    def edit_scheduled(self, post: Post, deliveries: Iterable[Delivery] | None) -> None:
        fields = {f"d:{d.channel}": _dump(d) for d in deliveries or []}
        ok = self._edit(
            keys=[self.k("sched"), self.post_key(post.id)],
            args=[_dump(post), post.scheduled_at.timestamp(), json.dumps(fields), post.id],
        )
        if not ok:
            raise Conflict("the post was already dispatched")
        self.add_event("post.edited", brand=post.brand, post=post.id)

    def cancel(self, post: Post, deliveries: dict[str, Delivery]) -> None:
        now = now_utc()
        post = post.model_copy(update={"canceled_at": now})
        fields = {
            f"d:{c}": _dump(d.model_copy(update={"state": DeliveryState.canceled, "updated_at": now}))
            for c, d in deliveries.items()
        }
        ok = self._cancel(
            keys=[self.k("sched"), self.post_key(post.id)],
            args=[post.id, _dump(post), json.dumps(fields)],
        )
        if not ok:
            raise Conflict("the post was already dispatched")
        self.add_event("post.canceled", brand=post.brand, post=post.id)
        self.settle_retention(post.id)

    def list_posts(self, brand: str, before: tuple[float, str] | None, limit: int) -> list[tuple[float, str]]:
        """(created score, id) pairs, newest first, strictly older than the cursor."""
        key = self.k("brand", brand, "posts")
        top = "+inf" if before is None else before[0]
        rows = self.r.zrevrangebyscore(key, top, "-inf", start=0, num=limit + 50, withscores=True)
        out = []
        for pid, score in rows:
            if before is not None and (score, pid) >= before:
                continue
            out.append((score, pid))
            if len(out) == limit:
                break
        return out

    # ---- deliveries --------------------------------------------------------------------------
    def update_delivery(
        self,
        post_id: str,
        channel: str,
        change: Callable[[Delivery | None], Delivery | None],
        inflight_until: float | None = None,
    ) -> tuple[Delivery | None, Delivery | None]:
        """Compare-and-set one delivery. Returns (before, after); after is None if unchanged.

        Two round trips whatever happens with it: the read, then one script that makes the
        change and, only if it won, writes its event, in-flight entry (`inflight_until` is the
        sweeper's new deadline for a delivery still active), metrics and retention.
        """
        field = f"d:{channel}"
        keys = self._change_keys(post_id)
        guess = True
        for _ in range(50):
            if guess:
                old_raw, post_raw = self._guess(post_id, [field, "post"])
            else:
                old_raw, post_raw = self.r.hmget(self.post_key(post_id), [field, "post"])
            old = parse_delivery(channel, old_raw) if old_raw else None
            new = change(old)
            if new is None:
                if guess and post_id in self._seen:  # decided on a guess: make sure it was right
                    self._seen.pop(post_id, None)
                    guess = False
                    continue
                return old, None
            new = new.model_copy(update={"updated_at": now_utc()})
            new_raw = _dump(new)
            effects = self._delivery_effects(post_id, channel, post_raw, old, new, inflight_until)
            won = self._change(keys=keys, args=[field, old_raw or "", new_raw, json.dumps(effects)])
            self._changed(post_id, field, new_raw if won else None)
            if won:
                return old, new
            guess = False
        raise Conflict(f"delivery {post_id}/{channel} changed too often to update")

    def _delivery_effects(
        self,
        post_id: str,
        channel: str,
        post_raw: str | None,
        old: Delivery | None,
        new: Delivery,
        inflight_until: float | None,
    ) -> dict[str, Any]:
        fx: dict[str, Any] = {"m": f"{post_id}|{channel}", "c": {}, "h": {}, "hf": {}}
        if old is None or old.state != new.state:
            error = new.error or new.reason or ""
            event = {"type": f"delivery.{new.state.value}", "post": post_id, "channel": channel}
            event |= {"attempts": str(new.attempts), "error": error}
            fx["e"], fx["maxlen"] = [x for kv in event.items() for x in kv], str(EVENTS_MAXLEN)
            try:  # metrics never fail the change
                if post_raw:
                    post = Post.model_validate_json(post_raw)
                    fx |= metrics.delivery_change_increments(post, old, new).as_json_dict()
            except Exception:
                log.warning("could not count %s/%s in the metrics", post_id, channel, exc_info=True)
        if new.state in FINAL_STATES:
            fx["rm"] = 1
        elif inflight_until is not None:
            fx["at"] = repr(float(inflight_until))
        if new.state in FINAL_STATES or old is None or old.state in FINAL_STATES:
            fx["ttl"], fx["final"] = str(self.settings.retention_seconds), _FINAL_NAMES
        return fx

    # ---- retention -----------------------------------------------------------------------------
    def settle_retention(self, post_id: str) -> bool:
        """Expire the post after the retention if every delivery is final (else keep it). Never raises."""
        try:
            return bool(
                self._settle(
                    keys=[self.post_key(post_id)], args=[self.settings.retention_seconds, _FINAL_NAMES]
                )
            )
        except redis.RedisError:
            log.warning("could not set the retention of %s; it is kept", post_id, exc_info=True)
            return False

    def retire_expired(self, brand_ids: Iterable[str], now: float | None = None, scan: int = 500) -> int:
        """Drop expired posts from their brand's list and old events from the stream; how many posts.

        Only entries created more than the retention ago can have expired; the oldest `scan`
        of them per brand are checked each call (posts still alive there are skipped).
        """
        now = time.time() if now is None else now
        cutoff = now - self.settings.retention_seconds
        gone = 0
        for brand in brand_ids:
            gone += int(
                self._retire(keys=[self.k("brand", brand, "posts")], args=[cutoff, scan, self.k("post", "")])
            )
        self.r.xtrim(self.k("events"), minid=f"{max(0, int(cutoff * 1000))}-0", approximate=False)
        return gone

    # ---- metrics (counters in Redis, so API and workers agree; never fail the change) ----------
    # ---- schedule and in-flight index ---------------------------------------------------------
    def claim_due(self, now: float, limit: int, lease_s: float) -> list[str]:
        return self._claim_due(
            keys=[self.k("sched"), self.k("dispatching")], args=[now, limit, now + lease_s]
        )

    def finish_dispatch(self, *post_ids: str) -> None:
        if post_ids:
            self.r.zrem(self.k("dispatching"), *post_ids)

    def extend_dispatch(self, post_ids: list[str], deadline: float) -> None:
        """Push the dispatching lease of claimed posts out (they wait in the queue meanwhile)."""
        if post_ids:
            self.r.zadd(self.k("dispatching"), dict.fromkeys(post_ids, deadline), xx=True)

    def expired_dispatches(self, now: float, limit: int = 500) -> list[str]:
        return self.r.zrangebyscore(self.k("dispatching"), "-inf", now, start=0, num=limit)

    def track_inflight(self, post_id: str, channel: str, deadline: float) -> None:
        self.r.zadd(self.k("inflight"), {f"{post_id}|{channel}": deadline})

    def track_inflight_many(self, post_id: str, channels: Iterable[str], deadline: float) -> None:
        self.r.zadd(self.k("inflight"), {f"{post_id}|{c}": deadline for c in channels})

    def expired_inflight(self, now: float, limit: int = 500) -> list[tuple[str, str]]:
        members = self.r.zrangebyscore(self.k("inflight"), "-inf", now, start=0, num=limit)
        return [tuple(m.split("|", 1)) for m in members]  # type: ignore[misc]

    def overdue_count(self, before: float) -> int:
        return int(self.r.zcount(self.k("sched"), "-inf", before))

    # ---- events ------------------------------------------------------------------------------
    def add_event(self, type_: str, **fields: str | None) -> str:
        """Append an event. Its time is its stream id's (milliseconds): see `event_time`."""
        body = {"type": type_} | {k: v for k, v in fields.items() if v is not None}
        return self.r.xadd(self.k("events"), body, maxlen=EVENTS_MAXLEN, approximate=True)

    def events(
        self, after: str | None = None, limit: int = 100, match: Callable[[dict], bool] | None = None
    ) -> list[dict[str, str]]:
        """Events oldest first, after a stream id; `match` filters (e.g. one brand's posts)."""
        out: list[dict[str, str]] = []
        start = f"({after}" if after else "-"
        while len(out) < limit:
            rows = self.r.xrange(self.k("events"), start, "+", count=max(limit * 2, 100))
            if not rows:
                break
            for eid, body in rows:
                if match is None or match(body):
                    out.append({"id": eid, "at": event_time(eid)} | body)
                    if len(out) == limit:
                        break
            start = f"({rows[-1][0]}"
        return out

    # ---- RSS entries -------------------------------------------------------------------------
    def add_rss_entry(self, brand: str, entry_id: str, entry: dict[str, Any], keep: int) -> bool:
        """Add (or keep) one feed entry, trimming the feed to `keep`, in one round trip.

        The entry id is the post id, so a replay adds nothing.
        """
        published = datetime.fromisoformat(entry["published"]).timestamp()
        added = self._add_rss(
            keys=[self.k("rss", brand), self.k("rss", brand, "e"), self.k("rss", brand, "updated")],
            args=[entry_id, json.dumps(entry), published, keep, str(time.time())],
        )
        return bool(added)

    def rss_entries(self, brand: str, limit: int) -> list[dict[str, Any]]:
        """Newest first."""
        ids = self.r.zrevrange(self.k("rss", brand), 0, limit - 1)
        if not ids:
            return []
        raws = self.r.hmget(self.k("rss", brand, "e"), ids)
        return [json.loads(r) | {"id": i} for i, r in zip(ids, raws, strict=True) if r]

    def rss_updated(self, brand: str) -> float | None:
        v = self.r.get(self.k("rss", brand, "updated"))
        return float(v) if v else None
