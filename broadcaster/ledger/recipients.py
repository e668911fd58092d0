"""Per-recipient delivery state of fan-out channels (Telegram chats, SMS numbers), in Redis.

Telegram and Twilio have no idempotency key: sending twice means two messages. So each
recipient is claimed ("sending") before its send and gets its outcome after. A run that
finds a claim still "sending" knows an earlier run was cut short mid-send and marks that
recipient `uncertain`: never re-sent silently. Runs resume from the to-do set snapshotted
at the first attempt, so a retry or a paced continuation sends only to whom is left.

A run costs two round trips per batch of recipients, whatever their number (`Roster`): one
takes the snapshot (the first time), the pacing tokens and the claims together (`take`); the
other writes the batch's outcomes (`flush`), or the delivery's settle verb writes them with
the delivery's own record (`Roster.outcomes`, `Store.delivered`). A run cut short between a
send and that write leaves the recipient "sending": `uncertain` on the next run, as above.

Recipient states: pending (not tried, or a retry that certainly did not send), sending,
sent, failed, opted_out (SMS STOP), uncertain. SMS entries also carry Twilio's `status`
from the status callbacks (queued -> sent -> delivered / undelivered).

Keys (under the settings' prefix), kept for `retention_days` from the latest write:
  rcpt:<post>:<channel>       hash  recipient -> entry JSON, and the delivery's own fields:
                                    #total  how many recipients the snapshot took (its marker)
                                    #day    SMS: the UTC day (YYYYMMDD) whose budget it reserved
                                    #<counter>  state -> n, and delivered / undelivered (none at 0)
  rcpt:<post>:<channel>:todo  set   recipients without a final state (gone once it is empty)
A finished delivery keeps one key: every Redis key costs some 60-90 bytes before its contents.
The reserved fields start with "#", which no recipient does: a recipient is a Telegram chat id
(a number, or "@" and a name: `TelegramConfig.chat_ids`) or an E.164 number ("+" and digits:
`subscribers.normalize`); `reserved` refuses such a name all the same.

Before the fold (up to 2026-12) the counters, the snapshot's size and the SMS day had keys of
their own: `:n`, `:init`, `:day`. Each script that writes a delivery's recipients folds them into
the hash first (`_FOLD_FN`), so a delivery in flight across an upgrade goes on from where it was;
a finished one left alone expires as it was. Upgrade with the old workers stopped (a worker of
each version at once would take a second snapshot). The fold can go once no key of the old
layout can be left: `retention_days` after the upgrade.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from broadcaster.core.settings import Settings
from broadcaster.ledger.clock import clock_for
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.pacing import PACE_FN, Bucket
from broadcaster.ledger.subscribers import BUDGET_TTL_S, RESERVE_FN, SegmentBudget, mask_number

PENDING, SENDING, SENT, FAILED, OPTED_OUT, UNCERTAIN = (
    "pending",
    "sending",
    "sent",
    "failed",
    "opted_out",
    "uncertain",
)
FINAL = frozenset({SENT, FAILED, OPTED_OUT, UNCERTAIN})
LOST_MID_SEND = "a run was cut short while sending to this recipient; it may or may not have arrived"
# Twilio message statuses, in the order they can happen; later ones never go back.
STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "read": 5,
}
STATUS_COUNTER = {
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "undelivered",
}

# Fields of a delivery's hash that are not recipients (see the module docstring): "#" and a name.
RESERVED = "#"
TOTAL, DAY = "#total", "#day"
# Every counter a delivery keeps (`_counter_deltas`: the states, and the statuses' counters).
COUNTERS = (PENDING, SENDING, SENT, FAILED, OPTED_OUT, UNCERTAIN, "delivered", "undelivered")
# The keys of the layout before the fold, next to the hash (read only by `_FOLD_FN`).
OLD_COUNTS, OLD_TOTAL, OLD_DAY = ":n", ":init", ":day"


def reserved(rid: str) -> bool:
    """Whether `rid` names one of a delivery's own fields rather than a recipient."""
    return rid.startswith(RESERVED)


# Shared by every script that writes a delivery's recipients. `bump`: a counter of the delivery's
# hash, its field gone at 0 (a finished delivery keeps no "pending 0, sending 0"). `fold_old`: a
# delivery begun before the fold kept its counters, snapshot size and SMS day in keys of their
# own (names built here from the hash's, as the pacing buckets' are: one Redis, not a cluster);
# they move into the hash, which keeps the longest time left of theirs.
_FOLD_FN = f"""
local function bump(h, counter, delta)
  local f = '{RESERVED}' .. counter
  if redis.call('HINCRBY', h, f, delta) == 0 then redis.call('HDEL', h, f) end
end
local function fold_old(h)
  local init = h .. '{OLD_TOTAL}'
  local total = redis.call('GET', init)
  if not total then return end
  local counts, day = h .. '{OLD_COUNTS}', h .. '{OLD_DAY}'
  if redis.call('HEXISTS', h, '{TOTAL}') == 0 then
    redis.call('HSET', h, '{TOTAL}', total)
    local d = redis.call('GET', day)
    if d then redis.call('HSET', h, '{DAY}', d) end
    local n = redis.call('HGETALL', counts)
    for i = 1, #n, 2 do bump(h, n[i], n[i + 1]) end
  end
  local left = math.max(redis.call('PTTL', init), redis.call('PTTL', counts), redis.call('PTTL', h))
  if left > 0 then redis.call('PEXPIRE', h, left) end
  redis.call('DEL', init, counts, day)
end
"""

_CAS = (
    _FOLD_FN
    + """
-- KEYS: the delivery's hash ; ARGV: recipient, expected ('' = absent), new, ttl, then (counter, delta)...
fold_old(KEYS[1])
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 5, #ARGV, 2 do bump(KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
)

# A batch of outcomes, each written only if its entry still holds what the run last wrote (a
# Twilio status callback may have come first: the caller merges that one, see `Roster.flush`).
# Shared with the settle verbs' script (broadcaster.ledger.store), which writes a run's outcomes
# with the delivery's record. Returns the recipients not written.
RECORD_FN = (
    _FOLD_FN
    + """
local function record_recipients(h, todo, ttl, writes)
  -- h: the delivery's hash; writes: {{rid, expected ('' = absent), new, 1 if final else 0,
  --   counter, delta, ...}, ...}
  fold_old(h)
  local missed = {}
  for _, w in ipairs(writes) do
    if (redis.call('HGET', h, w[1]) or '') ~= w[2] then
      missed[#missed + 1] = w[1]
    else
      redis.call('HSET', h, w[1], w[3])
      for i = 5, #w, 2 do bump(h, w[i], w[i + 1]) end
      if w[4] == 1 then redis.call('SREM', todo, w[1]) end
    end
  end
  redis.call('EXPIRE', h, ttl)
  return missed
end
"""
)

_RECORD = (
    RECORD_FN
    + """
-- KEYS: the delivery's hash, todo ; ARGV: ttl, the writes (json, see record_recipients)
return record_recipients(KEYS[1], KEYS[2], ARGV[1], cjson.decode(ARGV[2]))
"""
)

_TAKE = (
    PACE_FN
    + RESERVE_FN
    + _FOLD_FN
    + f"""
local RESERVED, TOTAL, DAY = '{RESERVED}', '{TOTAL}', '{DAY}'
local COUNTERS = {{{", ".join(f"'{RESERVED}{c}'" for c in COUNTERS)}}}
"""
    + """
-- A run's next recipients in one step: the snapshot of whom the delivery goes to (the first
-- run; SMS: the subscribers, the day's segments reserved for all of them or nothing sent),
-- pacing tokens for up to `want` recipients still open that this run has not tried, and a
-- claim on each granted one without an entry (one with an entry is handed back with it: the
-- caller's rules decide, `claim_step`).
-- KEYS: the delivery's hash, todo, subscribers (or ''), budget (or ''), shared buckets
-- ARGV[1]: json {ttl, claim (the claimed entry), want, skip [rid], people [rid] (without a
--   subscribers key), budget {segments, limit, ttl, day}, shared [[rate, burst]],
--   own [key prefix, rate, burst] (a bucket per recipient: prefix .. rid, a key the script
--   builds, as the store's retirement script does: one Redis, not a cluster), shown, view}
-- Returns {'empty'} | {'over budget', used, need, people} | {'ok', wait ('-1': all granted),
--   open, open and untried by this run, claimed [rid], undecided [rid, entry, ...], counters
--   (COUNTERS' values, false where absent), total, fields (the first take of a run, when there
--   are at most `shown` recipients: the whole hash, its own fields too)}
local a = cjson.decode(ARGV[1])
local ttl = tonumber(a.ttl)
fold_old(KEYS[1])
if redis.call('HEXISTS', KEYS[1], TOTAL) == 0 then
  local people = a.people
  if KEYS[3] ~= '' then people = redis.call('SMEMBERS', KEYS[3]) end
  local named = {}
  for _, rid in ipairs(people) do  -- never a name of the hash's own fields
    if string.sub(rid, 1, 1) ~= RESERVED then named[#named + 1] = rid end
  end
  people = named
  if #people == 0 then return {'empty'} end
  if KEYS[4] ~= '' then
    local need = tonumber(a.budget.segments) * #people
    local reserved = reserve_segments(KEYS[4], need, tonumber(a.budget.limit), a.budget.ttl)
    if reserved[1] == 0 then return {'over budget', reserved[2], need, #people} end
    redis.call('HSET', KEYS[1], DAY, a.budget.day)
  end
  for i = 1, #people, 1000 do
    redis.call('SADD', KEYS[2], unpack(people, i, math.min(i + 999, #people)))
  end
  redis.call('HSET', KEYS[1], TOTAL, #people)
  bump(KEYS[1], 'pending', #people)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
local skip, skipped_open = {}, 0
for _, rid in ipairs(a.skip) do
  skip[rid] = true
  skipped_open = skipped_open + redis.call('SISMEMBER', KEYS[2], rid)
end
local picked = {}
for _, rid in ipairs(redis.call('SRANDMEMBER', KEYS[2], a.want + #a.skip)) do
  if not skip[rid] and #picked < a.want then picked[#picked + 1] = rid end
end
local open = redis.call('SCARD', KEYS[2])
local left = open - skipped_open - #picked
-- One token from every shared bucket and one from the recipient's own, per recipient.
local granted, wait = {}, -1
if #picked > 0 then
  local now = pace_now()
  local shared, refused = {}, {}
  for i, b in ipairs(a.shared) do shared[i] = pace_level(KEYS[4 + i], b[1], b[2], now) end
  for _, rid in ipairs(picked) do
    local ok = true
    for i = 1, #shared do if shared[i] < 1 then ok = false end end
    local own
    if a.own then
      own = pace_level(a.own[1] .. rid, a.own[2], a.own[3], now)
      if own < 1 then ok = false end
    end
    if ok then
      for i = 1, #shared do shared[i] = shared[i] - 1 end
      if own then own = own - 1 end
      granted[#granted + 1] = rid
    end
    local own_wait = 0
    if own then own_wait = pace_keep(a.own[1] .. rid, own, a.own[2], a.own[3], now) end
    if not ok then refused[#refused + 1] = own_wait end
  end
  local shared_wait = 0
  for i, b in ipairs(a.shared) do
    shared_wait = math.max(shared_wait, pace_keep(KEYS[4 + i], shared[i], b[1], b[2], now))
  end
  for _, own_wait in ipairs(refused) do  -- the soonest a refused recipient could go
    local w = math.max(own_wait, shared_wait)
    if wait < 0 or w < wait then wait = w end
  end
end
local claimed, undecided = {}, {}
for _, rid in ipairs(granted) do
  local entry = redis.call('HGET', KEYS[1], rid)
  if entry then
    undecided[#undecided + 1] = rid
    undecided[#undecided + 1] = entry
  else
    redis.call('HSET', KEYS[1], rid, a.claim)
    claimed[#claimed + 1] = rid
  end
end
if #claimed > 0 then
  bump(KEYS[1], 'pending', -#claimed)
  bump(KEYS[1], 'sending', #claimed)
  redis.call('EXPIRE', KEYS[1], ttl)
end
local total = tonumber(redis.call('HGET', KEYS[1], TOTAL) or '0')
local fields = {}
if a.view and total <= tonumber(a.shown) then fields = redis.call('HGETALL', KEYS[1]) end
local counts = redis.call('HMGET', KEYS[1], unpack(COUNTERS))
return {'ok', tostring(wait), open, left, claimed, undecided, counts, total, fields}
"""
)


# ---- pure rules -----------------------------------------------------------------------------------
def claim_step(
    entry: Mapping[str, Any] | None, attempt: int, now: float
) -> tuple[str, dict[str, Any] | None]:
    """What a run may do with one recipient: "go" (claimed), "uncertain" (a lost run's claim
    found), or "done" (it already has an outcome). Returns the verdict and the new entry."""
    state = entry.get("state") if entry else None
    if state in (None, PENDING):
        new = {k: v for k, v in (entry or {}).items() if k != "error"}
        return "go", new | {"state": SENDING, "attempt": attempt, "at": now}
    if state == SENDING:
        return UNCERTAIN, dict(entry or {}) | {"state": UNCERTAIN, "error": LOST_MID_SEND, "at": now}
    return "done", None


def status_step(entry: Mapping[str, Any], status: str, error_code: str | None) -> dict[str, Any] | None:
    """Apply a Twilio status callback; None when it is stale (callbacks can arrive out of order)."""
    old = entry.get("status")
    if STATUS_RANK.get(status, -1) <= STATUS_RANK.get(old or "", -1):
        return None
    new = dict(entry) | {"status": status}
    if error_code:
        new["error_code"] = error_code
    return new


def verdict(counts: Mapping[str, int], open_left: int) -> str:
    """The delivery's outcome once a run is over: "open" (recipients left), "delivered" (someone
    got it), "uncertain" (nobody known to, some may have), else "failed"."""
    if open_left:
        return "open"
    if counts.get(SENT, 0):
        return "delivered"
    if counts.get(UNCERTAIN, 0):
        return "uncertain"
    return "failed"


def _counter_deltas(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str | int]:
    deltas: dict[str, int] = {}
    for entry, sign in ((old, -1), (new, 1)):
        if not entry:
            continue
        deltas[entry["state"]] = deltas.get(entry["state"], 0) + sign
        counter = STATUS_COUNTER.get(entry.get("status", ""))
        if counter:
            deltas[counter] = deltas.get(counter, 0) + sign
    return [x for k, d in deltas.items() if d for x in (k, d)]


def recorded(
    old: Mapping[str, Any] | None, state: str, fields: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """A recipient's entry once a run recorded its outcome (`fields`: message id, sid, error, ...).
    An error is the latest attempt's only; a Twilio status never goes back (a status callback
    may have been quicker than this record)."""
    base = {k: v for k, v in (old or {}).items() if k != "error"}
    new = base | dict(fields) | {"state": state, "at": now}
    if STATUS_RANK.get(base.get("status", ""), -1) > STATUS_RANK.get(new.get("status", ""), -1):
        new["status"] = base["status"]
    return new


def label_for(channel: str) -> Callable[[str], str]:
    """How a recipient is named outside Redis: phone numbers masked, chat ids as they are."""
    return mask_number if channel == "sms" else str


# ---- Redis ----------------------------------------------------------------------------------------
# The connections decode replies (decode_responses=True, see connection.py): they are str, where
# redis-py's types say bytes | str; the casts below say so.
class Recipients:
    """One delivery's recipients. Cheap to build; the delivery's claim makes one run at a time."""

    def __init__(self, r: redis.Redis, settings: Settings, post_id: str, channel: str):
        self.r = r
        self.channel = channel
        keys = Keys(settings.key_prefix)
        self.key = keys.recipients(post_id, channel)  # entries, and the delivery's own fields
        self.todo_key = keys.recipients_todo(post_id, channel)
        self.ttl = int(settings.retention_days * 86400)
        self._cas = r.register_script(_CAS)
        self._record = r.register_script(_RECORD)
        self._take = r.register_script(_TAKE)

    # ---- the snapshot (taken by a run's first `Roster.take`)
    def total(self) -> int:
        return int(self.r.hget(self.key, TOTAL) or 0)

    def budget_day(self) -> str | None:
        """The UTC day whose SMS budget this delivery reserved (None: started before it was kept)."""
        return cast("str | None", self.r.hget(self.key, DAY))

    def open_count(self) -> int:
        return int(self.r.scard(self.todo_key))

    # ---- one recipient
    def entry(self, rid: str) -> dict[str, Any] | None:
        raw = None if reserved(rid) else self.r.hget(self.key, rid)
        return json.loads(raw) if raw else None

    def _update(
        self,
        rid: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        guess: str | None = None,
    ) -> dict[str, Any] | None:
        return self._change(rid, change, guess)[1]

    def _change(
        self,
        rid: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        guess: str | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Compare-and-set one entry: (old, new), new None when `change` left it. `guess`: the
        entry as the caller last saw it (no read; a wrong guess only costs the read after all)."""
        if reserved(rid):
            raise ValueError(f"{rid!r} names a field of the delivery, not a recipient")
        for _ in range(20):
            raw = guess if guess is not None else cast("str | None", self.r.hget(self.key, rid))
            guess = None
            old = json.loads(raw) if raw else None
            new = change(old)
            if new is None:
                return old, None
            old_for_counts = old or {"state": PENDING}
            args = [rid, raw or "", json.dumps(new), self.ttl, *_counter_deltas(old_for_counts, new)]
            if self._cas(keys=[self.key], args=args):
                if new["state"] in FINAL:
                    self.r.srem(self.todo_key, rid)
                return old, new
        raise RuntimeError(f"recipient entry of {self.channel} changed too often to update")

    def claim(self, rid: str, attempt: int, guess: str | None = None) -> str:
        """Mark `rid` as being sent to now; "go" means this run may send (see `claim_step`)."""
        return self._claim(rid, attempt, guess)[0]

    def _claim(
        self, rid: str, attempt: int, guess: str | None = None
    ) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
        verdict_: dict[str, str] = {}

        def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
            v, new = claim_step(old, attempt, clock_for(self.r).now())
            verdict_["v"] = v
            return new

        old, new = self._change(rid, change, guess)
        if verdict_.get("v") == "done":
            self.r.srem(self.todo_key, rid)
        return verdict_["v"], old, new

    def record(self, rid: str, state: str, **info: Any) -> None:
        """The outcome of this run's send to `rid` (`pending` = certainly not sent, try again)."""
        fields = {k: v for k, v in info.items() if v is not None}
        self._update(rid, lambda old: recorded(old, state, fields, clock_for(self.r).now()))

    def set_status(self, rid: str, status: str, error_code: str | None = None) -> bool:
        """Apply a Twilio status callback to `rid`; False when unknown or stale."""
        if reserved(rid):
            return False
        applied = self._update(rid, lambda old: status_step(old, status, error_code) if old else None)
        return applied is not None

    # ---- reading
    def entries(self) -> dict[str, dict[str, Any]]:
        return {rid: json.loads(v) for rid, v in self.raw_entries().items()}

    def counts(self) -> dict[str, int]:
        return _counts(cast("list[str | None]", self.r.hmget(self.key, [RESERVED + c for c in COUNTERS])))

    def public(self, shown: int) -> dict[str, dict[str, Any]]:
        """What the delivery record shows: a summary, and each recipient while there are at most
        `shown` (numbers masked), so a 10,000-number list does not bloat every read."""
        total = self.total()
        return _public(self.channel, total, self.counts(), self.entries() if total <= shown else {}, shown)

    def raw_entries(self, rids: list[str] | None = None) -> dict[str, str]:
        """Entries as stored: all of them, or those of `rids` that exist."""
        if rids is None:
            return _recipients_only(cast("dict[str, str]", self.r.hgetall(self.key)))
        rids = [rid for rid in rids if not reserved(rid)]
        values = cast("list[str | None]", self.r.hmget(self.key, rids)) if rids else []
        return {rid: v for rid, v in zip(rids, values, strict=True) if v}


def _counts(values: Sequence[str | None]) -> dict[str, int]:
    """The counters other than 0, from their fields as stored (`COUNTERS`' order; None: absent)."""
    return {c: int(v) for c, v in zip(COUNTERS, values, strict=True) if v is not None and int(v)}


def _recipients_only(fields: Mapping[str, str]) -> dict[str, str]:
    """A delivery's hash without its own fields: recipient -> entry JSON."""
    return {rid: v for rid, v in fields.items() if not reserved(rid)}


def _public(
    channel: str, total: int, counts: Mapping[str, int], entries: Mapping[str, Mapping[str, Any]], shown: int
) -> dict[str, dict[str, Any]]:
    summary: dict[str, Any] = {"total": total} | {k: v for k, v in sorted(counts.items()) if v}
    out: dict[str, dict[str, Any]] = {"_summary": summary}
    if total > shown:
        return out
    label = label_for(channel)
    for rid, entry in sorted(entries.items()):
        name = label(rid)
        while name in out:  # two masked numbers may look alike
            name += "'"
        out[name] = {k: v for k, v in entry.items() if k not in ("at", "attempt")}
    return out


# ---- one run ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reservation:
    """SMS: a post reserves `segments` per recipient from the brand's day budget, for the whole
    snapshot at once when it is taken, or sends nothing (`Taken.status` "over budget")."""

    budget: SegmentBudget
    segments: int


@dataclass(frozen=True)
class Taken:
    """What one `Roster.take` got: the recipients claimed for this run to send to now; when some
    open recipient was refused a pacing token, `wait_s` until one could go; whether open
    recipients are left that this run has not tried (`more`). `status` "empty" (nobody to send
    to) and "over budget" (with `used`, `need`, `people`) are a first run's refusals."""

    status: str
    claimed: list[str] = field(default_factory=list)
    wait_s: float | None = None
    more: bool = False
    used: int = 0
    need: int = 0
    people: int = 0


@dataclass(frozen=True)
class _Outcome:
    rid: str
    expected: str  # the entry as this run last wrote it ('' = absent)
    new: str
    final: bool
    deltas: list[str | int]
    state: str
    fields: dict[str, Any]

    def write(self) -> list[str | int]:
        return [self.rid, self.expected, self.new, int(self.final), *self.deltas]


class Outcomes:
    """A run's outcomes not written yet, for the delivery's settle verb to write with the delivery's
    record in one step (`Store.delivered`, through `RECORD_FN`). `written` says what became of
    them: None (not written: the delivery was no longer this run's) writes them now; a recipient
    the script passed over (a status callback came first) is merged with what is there."""

    def __init__(self, rc: Recipients, outcomes: list[_Outcome]):
        self.rc = rc
        self.outcomes = outcomes

    @property
    def keys(self) -> list[str]:
        return [self.rc.key, self.rc.todo_key]

    def payload(self) -> dict[str, Any]:
        return {"ttl": self.rc.ttl, "w": [o.write() for o in self.outcomes]}

    def written(self, missed: Sequence[str] | None) -> None:
        if missed is None:
            missed = self.rc._record(
                keys=self.keys, args=[self.rc.ttl, json.dumps([o.write() for o in self.outcomes])]
            )
        if missed:
            lost = set(missed)
            for o in self.outcomes:
                if o.rid in lost:
                    self.rc.record(o.rid, o.state, **o.fields)


class Roster:
    """One fan-out run's recipients, at two round trips per batch of them.

    `take` snapshots the recipients (the first run), takes pacing tokens and claims the batch in
    one round trip; `record` keeps each outcome here, and `flush` writes them in one more, or
    the delivery's settle verb writes them with its record (`outcomes`). What the run reads
    (`public`, `counts`, `open_count`, `entries`) is this view, kept up to date as it records:
    the delivery's claim lets one run at a time change its recipients. Twilio's status callbacks
    may change an entry meanwhile: a write that finds one is merged with it instead.
    """

    def __init__(self, rc: Recipients, shown: int):
        self.rc = rc
        self.shown = shown
        self._counts: dict[str, int] = {}
        self._total = 0
        self._open = 0
        self._entries: dict[str, dict[str, Any]] = {}
        self._raw: dict[str, str] = {}  # each entry as stored: what its write expects to find
        self._viewed = False
        self._queued: list[_Outcome] = []

    # ---- taking recipients
    def take(
        self,
        attempt: int,
        want: int,
        shared: Sequence[Bucket] = (),
        own: Bucket | None = None,
        *,
        people: Iterable[str] = (),
        subscribers_key: str | None = None,
        reserve: Reservation | None = None,
        skip: Iterable[str] = (),
    ) -> Taken:
        """Claim up to `want` open recipients that this run has not tried (`skip`), each granted a
        token from every `shared` bucket and from its `own` (a bucket whose key is `own.key`
        followed by the recipient). The first run snapshots `people`, or the set at
        `subscribers_key` with `reserve`. Outcomes recorded so far are written first."""
        self.flush()
        skip = list(skip)
        claim = json.dumps({"state": SENDING, "attempt": attempt, "at": clock_for(self.rc.r).now()})
        args: dict[str, Any] = {
            "ttl": self.rc.ttl,
            "claim": claim,
            "want": want,
            "skip": skip,
            "people": list(dict.fromkeys(people)),
            "shared": [[b.rate_per_s, b.burst] for b in shared],
            "shown": self.shown,
            "view": not self._viewed,
        }
        if own is not None:
            args["own"] = [own.key, own.rate_per_s, own.burst]
        if reserve is not None:
            b = reserve.budget
            args["budget"] = {
                "segments": reserve.segments,
                "limit": b.limit,
                "ttl": BUDGET_TTL_S,
                "day": b.day,
            }
        rc = self.rc
        keys = [rc.key, rc.todo_key]
        keys += [subscribers_key or "", reserve.budget.key if reserve else "", *(b.key for b in shared)]
        reply = cast("list[Any]", rc._take(keys=keys, args=[json.dumps(args)]))
        if reply[0] == "empty":
            return Taken("empty")
        if reply[0] == "over budget":
            return Taken("over budget", used=int(reply[1]), need=int(reply[2]), people=int(reply[3]))
        _, wait, open_, left, claimed, undecided, counts, total, fields = reply
        self._counts = _counts(counts)
        self._total, self._open = int(total), int(open_)
        if not self._viewed:
            self._viewed = True
            entries = _recipients_only(dict(zip(fields[::2], fields[1::2], strict=True)))
            for rid, raw in entries.items():
                self._entries[rid], self._raw[rid] = json.loads(raw), raw
        for rid in claimed:
            self._entries[rid], self._raw[rid] = json.loads(claim), claim
        go = list(claimed)
        for rid, raw in zip(undecided[::2], undecided[1::2], strict=True):
            verdict_, old, new = rc._claim(rid, attempt, guess=raw)
            if new is not None:
                self._apply(rid, old, new)
            elif verdict_ == "done":
                self._open -= 1
            if verdict_ == "go":
                go.append(rid)
        wait_s = float(wait)
        return Taken("ok", go, wait_s if wait_s >= 0 else None, more=int(left) > 0)

    # ---- outcomes
    def record(self, rid: str, state: str, **info: Any) -> None:
        """The outcome of this run's send to `rid` (`pending` = certainly not sent, try again),
        kept until `flush` or the settle verb writes it."""
        fields = {k: v for k, v in info.items() if v is not None}
        old = self._entries.get(rid)
        new = recorded(old, state, fields, clock_for(self.rc.r).now())
        raw = json.dumps(new)
        deltas = _counter_deltas(old or {"state": PENDING}, new)
        outcome = _Outcome(rid, self._raw.get(rid, ""), raw, state in FINAL, deltas, state, fields)
        self._queued.append(outcome)
        self._apply(rid, old, new, raw)

    def flush(self) -> None:
        """Write the outcomes recorded so far (one round trip)."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        missed = self.rc._record(
            keys=[self.rc.key, self.rc.todo_key],
            args=[self.rc.ttl, json.dumps([o.write() for o in queued])],
        )
        if missed:  # a status callback came first: merged, and the view read again
            Outcomes(self.rc, queued).written(missed)
            self._reload()

    def outcomes(self) -> Outcomes | None:
        """The outcomes not written yet, handed to the delivery's settle verb (see `Outcomes`)."""
        queued, self._queued = self._queued, []
        return Outcomes(self.rc, queued) if queued else None

    # ---- the view
    def public(self) -> dict[str, dict[str, Any]]:
        """What the delivery record shows (as `Recipients.public`), from this run's view."""
        return _public(self.rc.channel, self._total, self._counts, self._entries, self.shown)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def budget_day(self) -> str | None:
        """SMS: the day whose budget the delivery reserved (a refund goes back to it)."""
        return self.rc.budget_day()

    def total(self) -> int:
        return self._total

    def open_count(self) -> int:
        return self._open

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every entry when there are at most `shown`, else those this run touched."""
        return dict(self._entries)

    def _apply(
        self, rid: str, old: Mapping[str, Any] | None, new: dict[str, Any], raw: str | None = None
    ) -> None:
        deltas = _counter_deltas(old or {"state": PENDING}, new)
        for name, d in zip(deltas[::2], deltas[1::2], strict=True):
            n = self._counts.pop(str(name), 0) + int(d)
            if n:
                self._counts[str(name)] = n
        if new["state"] in FINAL and (old or {}).get("state") not in FINAL:
            self._open -= 1
        self._entries[rid], self._raw[rid] = new, raw if raw is not None else json.dumps(new)

    def _reload(self) -> None:
        self._counts, self._total, self._open = self.rc.counts(), self.rc.total(), self.rc.open_count()
        raw = self.rc.raw_entries(list(self._entries) if self._total > self.shown else None)
        self._raw = raw
        self._entries = {rid: json.loads(v) for rid, v in raw.items()}
