"""A brand's SMS subscribers and its daily SMS budget, in Redis.

Numbers are validated and normalised to E.164 with `phonenumbers` when they are added
(a national number needs the brand's `sms.default_region`), so the list never holds a
number Twilio would refuse as malformed. Full numbers are shown only to the brand that
owns them (the subscriber API); everywhere else they are masked (`+1555***0123`).

The budget counts SMS segments per brand per UTC day: a post reserves all the segments
it needs (segments x subscribers) before its first message, or is skipped whole. A refund
(a number that failed or opted out) goes back to the day the segments were reserved on, even
after midnight, and never creates a counter: a day that has none has nothing to refund.

Keys (under the settings' prefix):
  sms:<brand>:subscribers        set  E.164 numbers
  sms:<brand>:budget:<YYYYMMDD>  str  segments reserved that day (expires after two days)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import phonenumbers
import redis

from broadcaster.core.settings import Settings
from broadcaster.ledger.keys import Keys

MAX_NUMBER_INPUT = 40

BUDGET_TTL_S = 2 * 24 * 3600  # a day's counter outlives the day: refunds after midnight find it

# Reserving segments, for this module's script and for a fan-out run's first claim
# (broadcaster.ledger.recipients), which reserves for its whole snapshot in the same step.
RESERVE_FN = """
-- All `want` segments of the day's budget, or none: {1, used} or {0, used}.
local function reserve_segments(key, want, limit, ttl)
  local used = tonumber(redis.call('GET', key) or '0')
  if used + want > limit then return {0, used} end
  used = redis.call('INCRBY', key, want)
  redis.call('EXPIRE', key, ttl)
  return {1, used}
end
"""

_RESERVE = (
    RESERVE_FN
    + """
-- KEYS: budget counter ; ARGV: segments, daily limit, ttl
return reserve_segments(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])
"""
)

_REFUND = """
-- KEYS: budget counter ; ARGV: segments. Never creates the counter, never takes it below 0.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local left = redis.call('DECRBY', KEYS[1], ARGV[1])
if left < 0 then left = redis.call('INCRBY', KEYS[1], -left) end
return left
"""


def utc_day() -> str:
    """Today, UTC, as the budget's key names it (YYYYMMDD)."""
    return datetime.now(UTC).strftime("%Y%m%d")


class InvalidNumbers(ValueError):
    """Raised when some numbers are not valid phone numbers; `problems` maps input -> why."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{n!r}: {why}" for n, why in problems.items()))


def mask_number(number: str) -> str:
    """`+15551230123` -> `+1555***0123`: enough to tell subscribers apart, not to text them."""
    if len(number) <= 8:
        return number[:2] + "***" + number[-2:]
    return number[:5] + "***" + number[-4:]


def normalize(raw: str, region: str | None = None) -> str:
    """One number as E.164, or ValueError saying why not."""
    text = raw.strip()
    if not text or len(text) > MAX_NUMBER_INPUT:
        raise ValueError("is empty or too long to be a phone number")
    if not text.startswith("+") and region is None:
        raise ValueError("needs a +country code (E.164, e.g. +15551230123)")
    try:
        parsed = phonenumbers.parse(text, None if text.startswith("+") else region)
    except phonenumbers.NumberParseException:
        raise ValueError("is not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("is not a valid phone number for its country")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_all(raws: list[str], region: str | None = None) -> list[str]:
    """Every number as E.164 (duplicates merged, order kept), or InvalidNumbers naming each bad one."""
    good: list[str] = []
    problems: dict[str, str] = {}
    for raw in raws:
        try:
            good.append(normalize(raw, region))
        except ValueError as e:
            problems[raw] = str(e)
    if problems:
        raise InvalidNumbers(problems)
    return list(dict.fromkeys(good))


@dataclass(frozen=True)
class Change:
    changed: list[str]
    unchanged: list[str]
    count: int


class Subscribers:
    """One brand's subscriber set. Cheap to build."""

    def __init__(self, r: redis.Redis, settings: Settings, brand_id: str):
        self.r = r
        self.brand_id = brand_id
        self.key = Keys(settings.key_prefix).sms_subscribers(brand_id)

    def add(self, numbers: list[str]) -> Change:
        """Add E.164 numbers (normalise them first)."""
        pipe = self.r.pipeline()
        for n in numbers:
            pipe.sadd(self.key, n)
        pipe.scard(self.key)
        *added, count = pipe.execute()
        return Change(
            changed=[n for n, a in zip(numbers, added, strict=True) if a],
            unchanged=[n for n, a in zip(numbers, added, strict=True) if not a],
            count=int(count),
        )

    def remove(self, numbers: list[str]) -> Change:
        pipe = self.r.pipeline()
        for n in numbers:
            pipe.srem(self.key, n)
        pipe.scard(self.key)
        *removed, count = pipe.execute()
        return Change(
            changed=[n for n, a in zip(numbers, removed, strict=True) if a],
            unchanged=[n for n, a in zip(numbers, removed, strict=True) if not a],
            count=int(count),
        )

    def all(self) -> list[str]:
        return sorted(cast("set[str]", self.r.smembers(self.key)))  # decode_responses: members are str

    def count(self) -> int:
        return int(self.r.scard(self.key))


class SegmentBudget:
    """A brand's SMS segments per UTC day: reserved before sending, refunded when not sent."""

    def __init__(self, r: redis.Redis, settings: Settings, brand_id: str, limit: int, day: str | None = None):
        self.r = r
        self.limit = limit
        self.day = day or utc_day()
        self.key = Keys(settings.key_prefix).sms_budget(brand_id, self.day)
        self._reserve = r.register_script(_RESERVE)
        self._refund = r.register_script(_REFUND)

    def reserve(self, segments: int) -> tuple[bool, int]:
        """(True, used) if `segments` fit in what is left today, else (False, used); all or nothing."""
        ok, used = self._reserve(keys=[self.key], args=[segments, self.limit, BUDGET_TTL_S])
        return bool(ok), int(used)

    def refund(self, segments: int) -> None:
        """Give back segments reserved on this budget's day; a day without a counter is left alone."""
        if segments > 0:
            self._refund(keys=[self.key], args=[segments])

    def used(self) -> int:
        return int(self.r.get(self.key) or 0)
