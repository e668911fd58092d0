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
from datetime import datetime
from typing import Any

import redis

from broadcaster import metrics
from broadcaster.models import FINAL_STATES, Delivery, DeliveryState, Post, now_utc
from broadcaster.settings import Settings

log = logging.getLogger("broadcaster.store")

EVENTS_MAXLEN = 200_000
IDEMPOTENCY_TTL_S = 7 * 24 * 3600

_CREATE = """
-- KEYS: post, brand list, sched, idem (or '')
-- ARGV: post id, fields json, created score, due score, idem ttl
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing and redis.call('EXISTS', existing) == 1 then return existing end
end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], KEYS[1], 'EX', ARGV[5]) end
return ''
"""

_CAS = """
-- KEYS: hash ; ARGV: field, expected ('' = absent), new
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
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


_SETTLE = """
-- KEYS: post ; ARGV: ttl s, final states (space separated)
-- Every delivery final: expire the post hash after the retention; otherwise make sure it
-- does not expire (a new delivery on a finished post).
local fields = redis.call('HGETALL', KEYS[1])
local final, deliveries = {}, 0
for s in string.gmatch(ARGV[2], '%S+') do final[s] = true end
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 'd:' then
    deliveries = deliveries + 1
    if not final[cjson.decode(fields[i + 1])['state']] then
      redis.call('PERSIST', KEYS[1])
      return 0
    end
  end
end
if deliveries == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

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

_FINAL_NAMES = " ".join(sorted(s.value for s in FINAL_STATES))


class Conflict(Exception):
    """Raised when a change is no longer allowed (the post was dispatched meanwhile)."""


def _dump(model: Any) -> str:
    return model.model_dump_json(exclude_none=True)


class Store:
    """Typed access to the ledger. Cheap to build; holds only the connection and the prefix."""

    def __init__(self, r: redis.Redis, settings: Settings):
        self.r = r
        self.settings = settings
        self.k = settings.key
        self._create = r.register_script(_CREATE)
        self._cas = r.register_script(_CAS)
        self._claim_due = r.register_script(_CLAIM_DUE)
        self._edit = r.register_script(_EDIT_SCHEDULED)
        self._cancel = r.register_script(_CANCEL)
        self._settle = r.register_script(_SETTLE)
        self._retire = r.register_script(_RETIRE)

    # ---- posts -----------------------------------------------------------------------------
    def post_key(self, post_id: str) -> str:
        return self.k("post", post_id)

    def create_post(
        self, post: Post, deliveries: Iterable[Delivery], idempotency_key: str | None = None
    ) -> str | None:
        """Store a new post and schedule it. Returns the existing post id on an idempotent replay."""
        fields = {"post": _dump(post)} | {f"d:{d.channel}": _dump(d) for d in deliveries}
        idem = self.k("idem", post.brand, idempotency_key) if idempotency_key else ""
        existing = self._create(
            keys=[self.post_key(post.id), self.k("brand", post.brand, "posts"), self.k("sched"), idem],
            args=[
                post.id,
                json.dumps(fields),
                post.created_at.timestamp(),
                post.scheduled_at.timestamp(),
                IDEMPOTENCY_TTL_S,
            ],
        )
        if existing:
            return existing.rsplit(":", 1)[-1]
        self.add_event("post.queued", brand=post.brand, post=post.id)
        return None

    def load(self, post_id: str) -> tuple[Post, dict[str, Delivery]] | None:
        raw = self.r.hgetall(self.post_key(post_id))
        if not raw or "post" not in raw:
            return None
        post = Post.model_validate_json(raw["post"])
        deliveries = {f[2:]: Delivery.model_validate_json(v) for f, v in raw.items() if f.startswith("d:")}
        return post, deliveries

    def load_many(self, ids: list[str]) -> list[tuple[Post, dict[str, Delivery]]]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.post_key(i))
        out = []
        for raw in pipe.execute():
            if raw and "post" in raw:
                post = Post.model_validate_json(raw["post"])
                ds = {f[2:]: Delivery.model_validate_json(v) for f, v in raw.items() if f[:2] == "d:"}
                out.append((post, ds))
        return out

    def save_post(self, post: Post) -> None:
        self.r.hset(self.post_key(post.id), "post", _dump(post))

    def update_post(self, post_id: str, change: Callable[[Post], Post | None]) -> Post | None:
        """Compare-and-set the post record; `change` returns None to leave it alone."""
        key = self.post_key(post_id)
        for _ in range(20):
            old = self.r.hget(key, "post")
            if old is None:
                return None
            new = change(Post.model_validate_json(old))
            if new is None:
                return None
            if self._cas(keys=[key], args=["post", old, _dump(new)]):
                self._after_post_change(Post.model_validate_json(old), new)
                return new
        raise Conflict(f"post {post_id} changed too often to update")

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
    ) -> tuple[Delivery | None, Delivery | None]:
        """Compare-and-set one delivery. Returns (before, after); after is None if unchanged."""
        key = self.post_key(post_id)
        field = f"d:{channel}"
        for _ in range(50):
            old_raw = self.r.hget(key, field)
            old = Delivery.model_validate_json(old_raw) if old_raw else None
            new = change(old)
            if new is None:
                return old, None
            new = new.model_copy(update={"updated_at": now_utc()})
            if self._cas(keys=[key], args=[field, old_raw or "", _dump(new)]):
                if old is None or old.state != new.state:
                    self.add_event(
                        f"delivery.{new.state.value}",
                        post=post_id,
                        channel=channel,
                        attempts=str(new.attempts),
                        error=new.error or new.reason or "",
                    )
                if new.state in FINAL_STATES:
                    self.r.zrem(self.k("inflight"), f"{post_id}|{channel}")
                if old is None or old.state != new.state:
                    self._after_delivery_change(post_id, channel, old, new)
                if new.state in FINAL_STATES or old is None or old.state in FINAL_STATES:
                    self.settle_retention(post_id)
                return old, new
        raise Conflict(f"delivery {post_id}/{channel} changed too often to update")

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
    def _after_delivery_change(self, post_id: str, channel: str, old: Delivery | None, new: Delivery) -> None:
        try:
            raw = self.r.hget(self.post_key(post_id), "post")
            if raw:
                metrics.record_delivery_change(self.r, self.settings, Post.model_validate_json(raw), old, new)
        except Exception:
            log.warning("could not count the change of %s/%s in the metrics", post_id, channel, exc_info=True)

    def _after_post_change(self, old: Post, new: Post) -> None:
        try:
            if old.rerouted_at is None and new.rerouted_at is not None:
                metrics.count(self.r, self.settings, metrics.FAILOVERS, brand=new.brand)
        except Exception:
            log.warning("could not count the failover of %s in the metrics", new.id, exc_info=True)

    # ---- schedule and in-flight index ---------------------------------------------------------
    def claim_due(self, now: float, limit: int, lease_s: float) -> list[str]:
        return self._claim_due(
            keys=[self.k("sched"), self.k("dispatching")], args=[now, limit, now + lease_s]
        )

    def finish_dispatch(self, post_id: str) -> None:
        self.r.zrem(self.k("dispatching"), post_id)

    def expired_dispatches(self, now: float, limit: int = 500) -> list[str]:
        return self.r.zrangebyscore(self.k("dispatching"), "-inf", now, start=0, num=limit)

    def track_inflight(self, post_id: str, channel: str, deadline: float) -> None:
        self.r.zadd(self.k("inflight"), {f"{post_id}|{channel}": deadline})

    def expired_inflight(self, now: float, limit: int = 500) -> list[tuple[str, str]]:
        members = self.r.zrangebyscore(self.k("inflight"), "-inf", now, start=0, num=limit)
        return [tuple(m.split("|", 1)) for m in members]  # type: ignore[misc]

    def overdue_count(self, before: float) -> int:
        return int(self.r.zcount(self.k("sched"), "-inf", before))

    # ---- events ------------------------------------------------------------------------------
    def add_event(self, type_: str, **fields: str | None) -> str:
        body = {"type": type_, "at": now_utc().isoformat()}
        body |= {k: v for k, v in fields.items() if v is not None}
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
                    out.append({"id": eid} | body)
                    if len(out) == limit:
                        break
            start = f"({rows[-1][0]}"
        return out

    # ---- RSS entries -------------------------------------------------------------------------
    def add_rss_entry(self, brand: str, entry_id: str, entry: dict[str, Any], keep: int) -> bool:
        """Add (or keep) one feed entry; the entry id is the post id, so a replay adds nothing."""
        zkey, hkey = self.k("rss", brand), self.k("rss", brand, "e")
        published = datetime.fromisoformat(entry["published"]).timestamp()
        pipe = self.r.pipeline()
        pipe.hsetnx(hkey, entry_id, json.dumps(entry))
        pipe.zadd(zkey, {entry_id: published}, nx=True)
        added, _ = pipe.execute()
        self._trim_rss(brand, keep)
        if added:
            self.r.set(self.k("rss", brand, "updated"), str(time.time()))
        return bool(added)

    def _trim_rss(self, brand: str, keep: int) -> None:
        zkey, hkey = self.k("rss", brand), self.k("rss", brand, "e")
        extra = self.r.zcard(zkey) - keep
        if extra > 0:
            old = self.r.zrange(zkey, 0, extra - 1)
            pipe = self.r.pipeline()
            pipe.zrem(zkey, *old)
            pipe.hdel(hkey, *old)
            pipe.execute()

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
