"""Token buckets in Redis: pace sends across every worker process without anyone sleeping.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second (Redis's own
clock, so workers on different hosts agree). `take` grants what is there, possibly
nothing, and says how long until the next token: the caller raises a deferral carrying
that wait and Celery runs the task again then. Several buckets can be taken together
(a Telegram bot's global limit and one chat's limit): a token is granted only when
every bucket has one, so no bucket is drained for a send that does not happen.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

# The bucket arithmetic, for every script that takes tokens (this module's, and a fan-out run's
# claim in broadcaster.ledger.recipients, which takes its tokens and claims in one step).
PACE_FN = """
local function pace_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- The tokens in a bucket now: what it kept, refilled at `rate` since, up to `burst`.
local function pace_level(key, rate, burst, now)
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local have = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  return math.min(burst, have + math.max(0, now - ts) * rate)
end
-- Keep `left` tokens; returns how long until the bucket holds a whole token again (0: it does).
local function pace_keep(key, left, rate, burst, now)
  redis.call('HSET', key, 'tokens', tostring(left), 'ts', tostring(now))
  redis.call('EXPIRE', key, math.ceil(burst / rate) + 60)
  if left < 1 then return (1 - left) / rate end
  return 0
end
"""

_TAKE = (
    PACE_FN
    + """
-- KEYS: one hash per bucket ; ARGV: want, then (rate, burst) per bucket
local now = pace_now()
local want = tonumber(ARGV[1])
local tokens = {}
local granted = want
for i, key in ipairs(KEYS) do
  tokens[i] = pace_level(key, tonumber(ARGV[i * 2]), tonumber(ARGV[i * 2 + 1]), now)
  granted = math.min(granted, math.floor(tokens[i]))
end
local wait = 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[i * 2]), tonumber(ARGV[i * 2 + 1])
  wait = math.max(wait, pace_keep(key, tokens[i] - granted, rate, burst, now))
end
return {granted, tostring(wait)}
"""
)


@dataclass(frozen=True)
class Bucket:
    key: str
    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("a bucket needs rate_per_s > 0 and burst >= 1")


@dataclass(frozen=True)
class Grant:
    granted: int
    wait_s: float  # until the next token (0 when one is left)


class Pacer:
    """Takes tokens from buckets in Redis; cheap to build."""

    def __init__(self, r: redis.Redis):
        self._take = r.register_script(_TAKE)

    def take(self, buckets: list[Bucket], want: int = 1) -> Grant:
        """Up to `want` tokens from every bucket at once (the same number from each)."""
        if want < 1 or not buckets:
            return Grant(0, 0.0)
        args: list[float | int] = [want]
        for b in buckets:
            args += [b.rate_per_s, b.burst]
        granted, wait = self._take(keys=[b.key for b in buckets], args=args)
        return Grant(int(granted), float(wait))
