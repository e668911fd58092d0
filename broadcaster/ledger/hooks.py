"""Brand webhooks: tell a brand's own systems when its posts land, fail, or Bluesky goes down.

A brand registers URLs for some of `EVENTS`. Workers follow the ledger's event stream
(`fanout`), turn the events a brand cares about into one delivery per webhook, and POST
each (`send_once`), retrying with backoff through Celery. Every delivery's outcome is
kept (`hookdlv:<id>`), newest listed per webhook.

Signing: `X-Broadcaster-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`, with the
send time in `X-Broadcaster-Timestamp` and the event's time inside the signed body, so a
receiver can verify the body and refuse stale replays. Deliveries are at least once: the
same `X-Broadcaster-Delivery` id may arrive twice.

Only http(s) URLs; loopback, private, link-local and reserved addresses (and IPv6 forms that
embed one: IPv4-mapped/compatible, NAT64, 6to4) are refused at registration, and again at each
send by the connection itself, which connects to the very address it checked
(`safe_http.PinnedBackend`, against DNS rebinding), unless `BROADCASTER_WEBHOOKS_ALLOW_PRIVATE`
is set.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import secrets
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import httpx
import redis
from pydantic import BaseModel, Field

from broadcaster.core.brands import Brands
from broadcaster.core.delivery_rules import backoff_s
from broadcaster.core.models import FINAL_STATES, PostState, now_utc, post_state
from broadcaster.core.settings import Settings
from broadcaster.ledger import metrics, safe_http
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.store import Store, event_time

EVENTS = (
    "post.delivered",
    "post.partially_delivered",
    "post.failed",
    "delivery.uncertain",
    "bluesky.down",
    "bluesky.up",
)
EventName = Literal[
    "post.delivered",
    "post.partially_delivered",
    "post.failed",
    "delivery.uncertain",
    "bluesky.down",
    "bluesky.up",
]
POST_EVENTS = {
    PostState.delivered: "post.delivered",
    PostState.partially_delivered: "post.partially_delivered",
    PostState.failed: "post.failed",
}
RETENTION_S = 7 * 24 * 3600
KEEP_PER_HOOK = 200
RESPONSE_EXCERPT = 1024  # characters of a receiver's answer kept with the delivery
FANOUT_BATCH = 500
SIGNATURE_HEADER = "X-Broadcaster-Signature"
TIMESTAMP_HEADER = "X-Broadcaster-Timestamp"
EVENT_HEADER = "X-Broadcaster-Event"
DELIVERY_HEADER = "X-Broadcaster-Delivery"

Enqueue = Callable[[str], None]


class WebhookURLError(safe_http.AddressRefused):
    """Raised when a webhook URL is not http(s), does not resolve, or points at a private address."""


class Hook(BaseModel):
    id: str
    brand: str
    url: str
    events: list[str]
    secret: str
    created_at: datetime = Field(default_factory=now_utc)


class HookDelivery(BaseModel):
    id: str
    hook_id: str
    brand: str
    event: str
    body: str
    state: Literal["pending", "delivered", "failed"] = "pending"
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_response: str | None = None  # the start of the receiver's last answer (RESPONSE_EXCERPT)
    created_at: datetime = Field(default_factory=now_utc)
    updated_at: datetime = Field(default_factory=now_utc)
    delivered_at: datetime | None = None


# ---- URLs ----------------------------------------------------------------------------------------
_CONTROL = {"Cc", "Cf", "Cs"}  # control, format (zero-width, bidi) and surrogate code points


def check_url(url: str, allow_private: bool, resolve: Callable[[str], list[str]] | None = None) -> str:
    """The URL if it may receive webhooks; raises WebhookURLError saying why not."""
    bad = sorted({f"U+{ord(c):04X}" for c in url if c.isspace() or unicodedata.category(c) in _CONTROL})
    if bad:  # CR/LF would split the request line; httpx refuses them, so the delivery never went
        raise WebhookURLError(
            f"must not contain whitespace or control characters ({', '.join(bad[:5])}); percent-encode them"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise WebhookURLError("has no host")
    if parts.username or parts.password:
        raise WebhookURLError("must not hold credentials; verify the signature instead")
    if allow_private:
        return url
    try:
        addresses = resolve(parts.hostname) if resolve else safe_http.resolve(parts.hostname)
    except OSError as e:
        raise WebhookURLError(f"host {parts.hostname} does not resolve ({e})") from None
    try:
        safe_http.check_addresses(parts.hostname, addresses)
    except safe_http.AddressRefused as e:
        raise WebhookURLError(str(e)) from None
    return url


# ---- signing -------------------------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (also used by our tests)."""
    return hmac.compare_digest(signature(secret, body), header)


def signed_headers(hook: Hook, delivery: HookDelivery, now: float) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "failover-broadcaster-webhooks/1",
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: delivery.id,
        TIMESTAMP_HEADER: str(int(now)),
        SIGNATURE_HEADER: signature(hook.secret, delivery.body.encode()),
    }


# ---- registry ------------------------------------------------------------------------------------
class HookStore:
    """Webhooks and their deliveries in Redis.

    Keys: hooks:<brand> (hash id -> Hook JSON), hookdlv:<id> (HookDelivery JSON, expires),
    hooks:<brand>:<id>:dlv (zset delivery id -> created), hooks:cursor (event stream position).

    Replies are str (the connection decodes them), where redis-py's types say bytes | str: the
    casts below say so. In this class's annotations `list` is its own `list` method, hence `builtins.list`.
    """

    def __init__(self, r: redis.Redis, settings: Settings):
        self.r, self.settings, self.keys = r, settings, Keys(settings.key_prefix)

    def create(self, brand: str, url: str, events: Iterable[str]) -> Hook:
        hook = Hook(
            id="wh_" + uuid.uuid4().hex[:20],
            brand=brand,
            url=url,
            events=sorted(set(events)),
            secret=new_secret(),
        )
        self.r.hset(self.keys.hooks(brand), hook.id, hook.model_dump_json())
        # Follow the event stream from now on (stream ids are milliseconds).
        self.r.set(self.keys.hooks_cursor, f"{int(time.time() * 1000)}-0", nx=True)
        return hook

    def count(self, brand: str) -> int:
        return int(self.r.hlen(self.keys.hooks(brand)))

    def list(self, brand: str) -> list[Hook]:
        hooks = [Hook.model_validate_json(v) for v in self.r.hvals(self.keys.hooks(brand))]
        return sorted(hooks, key=lambda h: h.created_at)

    def get(self, brand: str, hook_id: str) -> Hook | None:
        raw = self.r.hget(self.keys.hooks(brand), hook_id)
        return Hook.model_validate_json(raw) if raw else None

    def delete(self, brand: str, hook_id: str) -> bool:
        removed = self.r.hdel(self.keys.hooks(brand), hook_id)
        self.r.delete(self.keys.hook_deliveries(brand, hook_id))
        return bool(removed)

    def save_delivery(self, d: HookDelivery) -> None:
        d = d.model_copy(update={"updated_at": now_utc()})
        pipe = self.r.pipeline()
        pipe.set(self.keys.hook_delivery(d.id), d.model_dump_json(), ex=RETENTION_S)
        index = self.keys.hook_deliveries(d.brand, d.hook_id)
        pipe.zadd(index, {d.id: d.created_at.timestamp()})
        pipe.zremrangebyrank(index, 0, -KEEP_PER_HOOK - 1)
        pipe.expire(index, RETENTION_S)
        pipe.execute()

    def load_delivery(self, delivery_id: str) -> HookDelivery | None:
        raw = self.r.get(self.keys.hook_delivery(delivery_id))
        return HookDelivery.model_validate_json(raw) if raw else None

    def deliveries(self, brand: str, hook_id: str, limit: int = 50) -> builtins.list[HookDelivery]:
        ids = cast("list[str]", self.r.zrevrange(self.keys.hook_deliveries(brand, hook_id), 0, limit - 1))
        raws = self.r.mget([self.keys.hook_delivery(i) for i in ids]) if ids else []
        return [HookDelivery.model_validate_json(raw) for raw in raws if raw]


# ---- from ledger events to webhook deliveries -------------------------------------------------------
def emit(hooks: HookStore, brand: str, event: str, data: dict[str, Any], at: str, enqueue: Enqueue) -> int:
    """One delivery per webhook of `brand` subscribed to `event`; returns how many."""
    n = 0
    for hook in hooks.list(brand):
        if event not in hook.events or hook.created_at.isoformat() > at:
            continue
        d = HookDelivery(id="wd_" + uuid.uuid4().hex[:24], hook_id=hook.id, brand=brand, event=event, body="")
        body = {"id": d.id, "event": event, "brand": brand, "created_at": at, "data": data}
        d = d.model_copy(update={"body": json.dumps(body, separators=(",", ":"), sort_keys=True)})
        hooks.save_delivery(d)
        enqueue(d.id)
        n += 1
    return n


def health_change(body: dict[str, str]) -> str | None:
    """`bluesky.down` / `bluesky.up` for a health transition event of the ledger, else None."""
    kind = body.get("type", "")
    if not kind.startswith(("health.", "bluesky.")):
        return None
    if "effective" in body:
        # What routing obeys (the probes' state, or an operator's override).
        before, after = body.get("effective_from", ""), body["effective"]
        if after == "down" and before != "down":
            return "bluesky.down"
        if before == "down" and after != "down":
            return "bluesky.up"
        return None
    if kind in ("bluesky.down", "bluesky.up"):
        return kind
    return None


@dataclass
class FanoutContext:
    store: Store
    hooks: HookStore
    load_brands: Callable[[], Brands]
    enqueue: Enqueue

    def once(self, marker: str) -> bool:
        """True the first time a marker is seen (so a replayed event sends nothing twice)."""
        return bool(self.store.r.set(self.store.keys.hook_sent(marker), "1", nx=True, ex=RETENTION_S))


def handle_event(ctx: FanoutContext, event_id: str, body: dict[str, str]) -> int:
    kind, at = body.get("type", ""), body.get("at") or event_time(event_id)
    health = health_change(body)
    if health is not None:
        target = body.get("target", "")
        n = 0
        for brand in ctx.load_brands():
            if (not target or brand.bluesky.target == target) and ctx.once(f"{event_id}:{brand.id}"):
                data: dict[str, Any] = {"target": target, "reason": body.get("reason", "")}
                n += emit(ctx.hooks, brand.id, health, data, at, ctx.enqueue)
        return n
    if not kind.startswith("delivery.") or not body.get("post"):
        return 0
    loaded = ctx.store.load(body["post"])
    if loaded is None:
        return 0
    post, deliveries = loaded
    channel = body.get("channel", "")
    n = 0
    if kind == "delivery.uncertain" and ctx.once(f"{post.id}:{channel}:uncertain"):
        data = {"post_id": post.id, "channel": channel, "error": body.get("error", "")}
        n += emit(ctx.hooks, post.brand, "delivery.uncertain", data, at, ctx.enqueue)
    current = deliveries.get(channel)
    if current is None or current.state not in FINAL_STATES:
        return n
    state = post_state(post, deliveries)
    event = POST_EVENTS.get(state)
    if event and ctx.once(f"{post.id}:{state.value}"):
        data = {
            "post_id": post.id,
            "state": state.value,
            "deliveries": {c: {"state": d.state.value, "url": d.url} for c, d in deliveries.items()},
        }
        n += emit(ctx.hooks, post.brand, event, data, at, ctx.enqueue)
    return n


def fanout(store: Store, brands: Callable[[], Brands], enqueue: Enqueue) -> int:
    """Turn new ledger events into webhook deliveries; one runner at a time (Redis lock)."""
    r, keys = store.r, store.keys
    # Replies are str (the connection decodes them), where redis-py's types say bytes | str.
    cursor = cast("str | None", r.get(keys.hooks_cursor))
    if cursor is None:
        return 0  # no brand ever registered a webhook
    lock = keys.hooks_fanout_lock
    token = uuid.uuid4().hex
    if not r.set(lock, token, nx=True, ex=60):
        return 0
    try:
        ctx = FanoutContext(store, HookStore(r, store.settings), brands, enqueue)
        rows = cast(
            "list[tuple[str, dict[str, str]]]", r.xrange(keys.events, f"({cursor}", "+", count=FANOUT_BATCH)
        )
        n = 0
        for event_id, body in rows:
            n += handle_event(ctx, event_id, body)
        if rows:
            r.set(keys.hooks_cursor, rows[-1][0])
        return n
    finally:
        if r.get(lock) == token:
            r.delete(lock)


# ---- sending -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SendOutcome:
    result: str
    retry_in: float | None = None


def _finish(hooks: HookStore, d: HookDelivery, state: str, **changes: Any) -> None:
    done = d.model_copy(update={"state": state, **changes})
    hooks.save_delivery(done)
    metrics.count(hooks.r, hooks.settings, metrics.WEBHOOKS, brand=d.brand, event=d.event, state=state)


def send_once(
    hooks: HookStore, delivery_id: str, client: httpx.Client, now: float | None = None
) -> SendOutcome:
    """POST one webhook delivery; say whether to retry and when."""
    settings = hooks.settings
    d = hooks.load_delivery(delivery_id)
    if d is None or d.state != "pending":
        return SendOutcome("gone" if d is None else d.state)
    hook = hooks.get(d.brand, d.hook_id)
    if hook is None:
        _finish(hooks, d, "failed", last_error="the webhook was deleted")
        return SendOutcome("failed")
    attempts = d.attempts + 1
    d = d.model_copy(update={"attempts": attempts})
    try:
        check_url(hook.url, settings.webhooks_allow_private)
        # One deadline for the whole exchange, and a bounded read of the answer: a receiver
        # trickling bytes or answering without end cannot hold the worker or its memory.
        response = safe_http.post(
            client,
            hook.url,
            d.body.encode(),
            signed_headers(hook, d, now or time.time()),
            deadline_s=settings.webhook_timeout_s,
        )
    except safe_http.AddressRefused as e:  # at the check, or at the connect (the name changed since)
        _finish(hooks, d, "failed", last_error=f"url refused: {e}")
        return SendOutcome("failed")
    except httpx.HTTPError as e:
        return _retry_or_fail(hooks, d, None, f"{type(e).__name__}", None)
    status = response.status
    d = d.model_copy(update={"last_response": _excerpt(response)})
    if 200 <= status < 300:
        _finish(hooks, d, "delivered", last_status=status, last_error=None, delivered_at=now_utc())
        return SendOutcome("delivered")
    error = f"HTTP {status}"
    if status == 429 or status == 408 or status >= 500:
        retry_after = response.headers.get("retry-after", "")
        wait = float(retry_after) if retry_after.isdigit() else None
        return _retry_or_fail(hooks, d, status, error, wait)
    _finish(hooks, d, "failed", last_status=status, last_error=f"{error} (not retried)")
    return SendOutcome("failed")


def _excerpt(answer: safe_http.Answer) -> str:
    text = answer.body[:RESPONSE_EXCERPT].decode("utf-8", errors="replace")
    return text + ("…" if answer.truncated or len(answer.body) > RESPONSE_EXCERPT else "")


def _retry_or_fail(
    hooks: HookStore, d: HookDelivery, status: int | None, error: str, wait: float | None
) -> SendOutcome:
    s = hooks.settings
    if d.attempts >= s.webhook_max_attempts:
        _finish(hooks, d, "failed", last_status=status, last_error=f"{error} (gave up after {d.attempts})")
        return SendOutcome("failed")
    hooks.save_delivery(d.model_copy(update={"last_status": status, "last_error": error}))
    delay = min(wait, s.webhook_retry_max_s) if wait is not None else None
    return SendOutcome("retry", delay or backoff_s(d.attempts, s.webhook_retry_base_s, s.webhook_retry_max_s))
