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

Keys (under the settings' prefix), kept for `retention_days`:
  rcpt:<post>:<channel>       hash  recipient -> entry JSON
  rcpt:<post>:<channel>:todo  set   recipients without a final state
  rcpt:<post>:<channel>:n     hash  counters: state -> n, and delivered / undelivered
  rcpt:<post>:<channel>:init  str   how many recipients the snapshot took
  rcpt:<post>:<channel>:day   str   SMS: the UTC day (YYYYMMDD) whose budget the post reserved
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

_CAS = """
-- KEYS: entries, counters ; ARGV: recipient, expected ('' = absent), new, ttl, then (counter, delta)...
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""

# A batch of outcomes, each written only if its entry still holds what the run last wrote (a
# Twilio status callback may have come first: the caller merges that one, see `Roster.flush`).
# Shared with the settle verbs' script (broadcaster.ledger.store), which writes a run's outcomes
# with the delivery's record. Returns the recipients not written.
RECORD_FN = """
local function record_recipients(entries, counts, todo, ttl, writes)
  -- writes: {{rid, expected ('' = absent), new, 1 if final else 0, counter, delta, ...}, ...}
  local missed = {}
  for _, w in ipairs(writes) do
    if (redis.call('HGET', entries, w[1]) or '') ~= w[2] then
      missed[#missed + 1] = w[1]
    else
      redis.call('HSET', entries, w[1], w[3])
      for i = 5, #w, 2 do redis.call('HINCRBY', counts, w[i], w[i + 1]) end
      if w[4] == 1 then redis.call('SREM', todo, w[1]) end
    end
  end
  redis.call('EXPIRE', entries, ttl)
  redis.call('EXPIRE', counts, ttl)
  return missed
end
"""

_RECORD = (
    RECORD_FN
    + """
-- KEYS: entries, counters, todo ; ARGV: ttl, the writes (json, see record_recipients)
return record_recipients(KEYS[1], KEYS[2], KEYS[3], ARGV[1], cjson.decode(ARGV[2]))
"""
)

_TAKE = (
    PACE_FN
    + RESERVE_FN
    + """
-- A run's next recipients in one step: the snapshot of whom the delivery goes to (the first
-- run; SMS: the subscribers, the day's segments reserved for all of them or nothing sent),
-- pacing tokens for up to `want` recipients still open that this run has not tried, and a
-- claim on each granted one without an entry (one with an entry is handed back with it: the
-- caller's rules decide, `claim_step`).
-- KEYS: entries, todo, counters, init, day, subscribers (or ''), budget (or ''), shared buckets
-- ARGV[1]: json {ttl, claim (the claimed entry), want, skip [rid], people [rid] (without a
--   subscribers key), budget {segments, limit, ttl, day}, shared [[rate, burst]],
--   own [key prefix, rate, burst] (a bucket per recipient: prefix .. rid, a key the script
--   builds, as the store's retirement script does: one Redis, not a cluster), shown, view}
-- Returns {'empty'} | {'over budget', used, need, people} | {'ok', wait ('-1': all granted),
--   open, open and untried by this run, claimed [rid], undecided [rid, entry, ...], counters,
--   total, entries (the first take of a run, up to `shown` of them)}
local a = cjson.decode(ARGV[1])
local ttl = tonumber(a.ttl)
if redis.call('EXISTS', KEYS[4]) == 0 then
  local people = a.people
  if KEYS[6] ~= '' then people = redis.call('SMEMBERS', KEYS[6]) end
  if #people == 0 then return {'empty'} end
  if KEYS[7] ~= '' then
    local need = tonumber(a.budget.segments) * #people
    local reserved = reserve_segments(KEYS[7], need, tonumber(a.budget.limit), a.budget.ttl)
    if reserved[1] == 0 then return {'over budget', reserved[2], need, #people} end
    redis.call('SET', KEYS[5], a.budget.day, 'EX', ttl)
  end
  for i = 1, #people, 1000 do
    redis.call('SADD', KEYS[2], unpack(people, i, math.min(i + 999, #people)))
  end
  redis.call('HSET', KEYS[3], 'pending', #people)
  redis.call('SET', KEYS[4], #people, 'EX', ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
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
  for i, b in ipairs(a.shared) do shared[i] = pace_level(KEYS[7 + i], b[1], b[2], now) end
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
    shared_wait = math.max(shared_wait, pace_keep(KEYS[7 + i], shared[i], b[1], b[2], now))
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
  redis.call('HINCRBY', KEYS[3], 'pending', -#claimed)
  redis.call('HINCRBY', KEYS[3], 'sending', #claimed)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
end
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
local entries = {}
if a.view and total <= tonumber(a.shown) then entries = redis.call('HGETALL', KEYS[1]) end
return {'ok', tostring(wait), open, left, claimed, undecided, redis.call('HGETALL', KEYS[3]), total, entries}
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
        base = Keys(settings.key_prefix).recipients(post_id, channel)
        self.entries_key, self.todo_key = base, f"{base}:todo"
        self.counts_key, self.init_key = f"{base}:n", f"{base}:init"
        self.day_key = f"{base}:day"
        self.ttl = int(settings.retention_days * 86400)
        self._cas = r.register_script(_CAS)
        self._record = r.register_script(_RECORD)
        self._take = r.register_script(_TAKE)

    # ---- the snapshot (taken by a run's first `Roster.take`)
    def total(self) -> int:
        return int(self.r.get(self.init_key) or 0)

    def budget_day(self) -> str | None:
        """The UTC day whose SMS budget this delivery reserved (None: started before it was kept)."""
        return cast("str | None", self.r.get(self.day_key))

    def open_count(self) -> int:
        return int(self.r.scard(self.todo_key))

    # ---- one recipient
    def entry(self, rid: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.entries_key, rid)
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
        for _ in range(20):
            raw = guess if guess is not None else cast("str | None", self.r.hget(self.entries_key, rid))
            guess = None
            old = json.loads(raw) if raw else None
            new = change(old)
            if new is None:
                return old, None
            old_for_counts = old or {"state": PENDING}
            args = [rid, raw or "", json.dumps(new), self.ttl, *_counter_deltas(old_for_counts, new)]
            if self._cas(keys=[self.entries_key, self.counts_key], args=args):
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
        applied = self._update(rid, lambda old: status_step(old, status, error_code) if old else None)
        return applied is not None

    # ---- reading
    def entries(self) -> dict[str, dict[str, Any]]:
        raw = cast("dict[str, str]", self.r.hgetall(self.entries_key))
        return {rid: json.loads(v) for rid, v in raw.items()}

    def counts(self) -> dict[str, int]:
        raw = cast("dict[str, str]", self.r.hgetall(self.counts_key))
        return {k: int(v) for k, v in raw.items()}

    def public(self, shown: int) -> dict[str, dict[str, Any]]:
        """What the delivery record shows: a summary, and each recipient while there are at most
        `shown` (numbers masked), so a 10,000-number list does not bloat every read."""
        total = self.total()
        return _public(self.channel, total, self.counts(), self.entries() if total <= shown else {}, shown)

    def raw_entries(self, rids: list[str] | None = None) -> dict[str, str]:
        """Entries as stored: all of them, or those of `rids` that exist."""
        if rids is None:
            return cast("dict[str, str]", self.r.hgetall(self.entries_key))
        values = cast("list[str | None]", self.r.hmget(self.entries_key, rids)) if rids else []
        return {rid: v for rid, v in zip(rids, values, strict=True) if v}


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
        return [self.rc.entries_key, self.rc.counts_key, self.rc.todo_key]

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
        keys = [rc.entries_key, rc.todo_key, rc.counts_key, rc.init_key, rc.day_key]
        keys += [subscribers_key or "", reserve.budget.key if reserve else "", *(b.key for b in shared)]
        reply = cast("list[Any]", rc._take(keys=keys, args=[json.dumps(args)]))
        if reply[0] == "empty":
            return Taken("empty")
        if reply[0] == "over budget":
            return Taken("over budget", used=int(reply[1]), need=int(reply[2]), people=int(reply[3]))
        _, wait, open_, left, claimed, undecided, counts, total, entries = reply
        self._counts = {k: int(v) for k, v in zip(counts[::2], counts[1::2], strict=True)}
        self._total, self._open = int(total), int(open_)
        if not self._viewed:
            self._viewed = True
            for rid, raw in zip(entries[::2], entries[1::2], strict=True):
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
            keys=[self.rc.entries_key, self.rc.counts_key, self.rc.todo_key],
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
            self._counts[str(name)] = self._counts.get(str(name), 0) + int(d)
        if new["state"] in FINAL and (old or {}).get("state") not in FINAL:
            self._open -= 1
        self._entries[rid], self._raw[rid] = new, raw if raw is not None else json.dumps(new)

    def _reload(self) -> None:
        self._counts, self._total, self._open = self.rc.counts(), self.rc.total(), self.rc.open_count()
        raw = self.rc.raw_entries(list(self._entries) if self._total > self.shown else None)
        self._raw = raw
        self._entries = {rid: json.loads(v) for rid, v in raw.items()}
