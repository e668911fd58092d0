"""Per-recipient delivery state of fan-out channels (Telegram chats, SMS numbers), in Redis.

Telegram and Twilio have no idempotency key: sending twice means two messages. So each
recipient is claimed ("sending") right before its send and gets its outcome right after.
A run that finds a claim still "sending" knows an earlier run was cut short mid-send and
marks that recipient `uncertain`: never re-sent silently. Runs resume from the to-do set
snapshotted at the first attempt, so a retry or a paced continuation sends only to whom
is left.

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import redis

from broadcaster.core.settings import Settings
from broadcaster.ledger.clock import clock_for
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.subscribers import mask_number

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

    # ---- the snapshot
    def started(self) -> bool:
        return bool(self.r.exists(self.init_key))

    def start(self, recipients: Iterable[str], budget_day: str | None = None) -> int:
        """Snapshot who this delivery goes to (once; later runs keep the first snapshot), and the
        day whose SMS budget it reserved (refunds go back to that day)."""
        people = list(dict.fromkeys(recipients))
        if self.started():
            return self.total()
        pipe = self.r.pipeline(transaction=True)
        if budget_day is not None:
            pipe.set(self.day_key, budget_day, ex=self.ttl)
        for i in range(0, len(people), 1000):
            pipe.sadd(self.todo_key, *people[i : i + 1000])
        pipe.hset(self.counts_key, PENDING, len(people))
        pipe.set(self.init_key, len(people), ex=self.ttl)
        pipe.expire(self.todo_key, self.ttl)
        pipe.expire(self.counts_key, self.ttl)
        pipe.execute()
        return len(people)

    def total(self) -> int:
        return int(self.r.get(self.init_key) or 0)

    def budget_day(self) -> str | None:
        """The UTC day whose SMS budget this delivery reserved (None: started before it was kept)."""
        return cast("str | None", self.r.get(self.day_key))

    def todo(self, limit: int, skip: Iterable[str] = ()) -> list[str]:
        """Up to `limit` recipients still open, leaving out `skip` (tried already in this run)."""
        skip = set(skip)
        found = cast("list[str] | None", self.r.srandmember(self.todo_key, limit + len(skip))) or []
        return [p for p in found if p not in skip][:limit]

    def open_count(self) -> int:
        return int(self.r.scard(self.todo_key))

    # ---- one recipient
    def entry(self, rid: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.entries_key, rid)
        return json.loads(raw) if raw else None

    def _update(
        self, rid: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        for _ in range(20):
            raw = self.r.hget(self.entries_key, rid)
            old = json.loads(raw) if raw else None
            new = change(old)
            if new is None:
                return None
            old_for_counts = old or {"state": PENDING}
            args = [rid, raw or "", json.dumps(new), self.ttl, *_counter_deltas(old_for_counts, new)]
            if self._cas(keys=[self.entries_key, self.counts_key], args=args):
                if new["state"] in FINAL:
                    self.r.srem(self.todo_key, rid)
                return new
        raise RuntimeError(f"recipient entry of {self.channel} changed too often to update")

    def claim(self, rid: str, attempt: int) -> str:
        """Mark `rid` as being sent to now; "go" means this run may send (see `claim_step`)."""
        verdict_: dict[str, str] = {}

        def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
            v, new = claim_step(old, attempt, clock_for(self.r).now())
            verdict_["v"] = v
            return new

        self._update(rid, change)
        if verdict_.get("v") == "done":
            self.r.srem(self.todo_key, rid)
        return verdict_["v"]

    def record(self, rid: str, state: str, **info: Any) -> None:
        """The outcome of this run's send to `rid` (`pending` = certainly not sent, try again)."""
        fields = {k: v for k, v in info.items() if v is not None}

        def change(old: dict[str, Any] | None) -> dict[str, Any]:
            base = {k: v for k, v in (old or {}).items() if k != "error"}
            new = base | fields | {"state": state, "at": clock_for(self.r).now()}
            if STATUS_RANK.get(base.get("status", ""), -1) > STATUS_RANK.get(new.get("status", ""), -1):
                new["status"] = base["status"]  # a status callback was quicker than this record
            return new

        self._update(rid, change)

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
        counts = self.counts()
        total = self.total()
        summary: dict[str, Any] = {"total": total} | {k: v for k, v in sorted(counts.items()) if v}
        out: dict[str, dict[str, Any]] = {"_summary": summary}
        if total > shown:
            return out
        label = label_for(self.channel)
        for rid, entry in sorted(self.entries().items()):
            name = label(rid)
            while name in out:  # two masked numbers may look alike
                name += "'"
            out[name] = {k: v for k, v in entry.items() if k not in ("at", "attempt")}
        return out
