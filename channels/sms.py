"""SMS, through the twilio library, to the brand's subscribers: one message per number.

API: Twilio REST 2010-04-01 (`POST /2010-04-01/Accounts/<sid>/Messages.json`; the account
fetch for the check). Auth: HTTP Basic with the Account SID and the auth token, read
from the environment variable the brands file names. The sender is a From number or a
Messaging Service SID. Limits: 1600 characters per body; each body costs one segment per
160 GSM-7 characters (153 when concatenated) or 70 UCS-2 (67), shaped and counted in
`broadcaster.core.shaping`. A long code takes about 1 message/s (`sms.rate_per_s`; paced by a
Redis token bucket shared by every worker). Rate-limit signals: 429 / error 20429.

Only posts at or above the brand's `routing.sms_min_priority` go out (SMS costs money per
recipient), and only while the brand's daily segment budget lasts: a post reserves the
segments for every subscriber before its first message or is `skipped` whole.

Images: where the brand enables `sms.mms`, the post's images go as MMS (`MediaUrl`: each
image's public URL, `GET /media/<id>`, which Twilio fetches); otherwise the text carries a
link to each image, one per line (counted in the segments).

No idempotency key on Twilio's side: each number is claimed before its send and recorded
after (`broadcaster.ledger.recipients`). Only a failure while connecting (refused, connect
timeout) is "not sent" and retried; a read timeout, or a connection dropped after the request
left (requests calls that a `ConnectionError` too), leaves the number `uncertain`, never
re-sent. Error 21610 (the recipient texted STOP) removes the subscriber and is recorded
`opted_out`, not retried. Twilio reports delivery through the status callback
(`/v1/webhooks/twilio/status`), which updates each number's `status`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from broadcaster.core import shaping
from broadcaster.core.brands import Priority, read_secret
from broadcaster.ledger import recipients
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.pacing import Bucket
from broadcaster.ledger.recipients import Recipients, Reservation, Roster, Taken
from broadcaster.ledger.store import Store
from broadcaster.ledger.subscribers import SegmentBudget, Subscribers, mask_number
from channels.base import (
    ChannelError,
    ConfiguredChannel,
    Outbound,
    PermanentError,
    RateLimited,
    Receipt,
    Skipped,
    TransientError,
    media_url,
)
from channels.fanout import Run, finish, last_try, written_on_error
from channels.http_env import read_environment_once

STATUS_CALLBACK_PATH = "/v1/webhooks/twilio/status"
OPTED_OUT = 21610  # the recipient texted STOP: never send again
BAD_CREDENTIALS = frozenset({20003, 20005})  # authentication failed, account suspended
DEFAULT_RATE_LIMIT_WAIT_S = 2.0

_quiet = logging.getLogger("broadcaster.twilio_http")  # twilio logs each request at INFO
_quiet.setLevel(logging.WARNING)
_local = threading.local()
_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


class _HttpClient(TwilioHttpClient):
    """Separate connect and read timeouts (twilio takes one number, default: none), and the last
    answer's Retry-After (TwilioRestException drops the headers)."""

    retry_after: float | None = None

    def __init__(self, connect_s: float, read_s: float, base_url: str):
        super().__init__(timeout=read_s, logger=_quiet)
        self.timeout = (connect_s, read_s)  # handed to requests as is
        read_environment_once(self.session, base_url)

    def request(self, *args, **kwargs):
        response = super().request(*args, **kwargs)
        value = (response.headers or {}).get("Retry-After")
        self.retry_after = float(value) if value and value.replace(".", "", 1).isdigit() else None
        return response


@dataclass(frozen=True)
class Attempt:
    """One number's send: its recipient state, and what it means for the whole delivery."""

    state: str
    sid: str | None = None
    error: str | None = None
    retry: ChannelError | None = None  # worth trying again later
    fatal: ChannelError | None = None  # no number can succeed (credentials, account)


def classify(e: Exception, who: str, brand_id: str, retry_after: float | None = None) -> Attempt:
    """Map one failed send to a recipient outcome (`who` is the masked number)."""
    if isinstance(e, TwilioRestException):
        code = e.code if isinstance(e.code, int) else None
        if code == OPTED_OUT:
            return Attempt(recipients.OPTED_OUT, error=f"{who} replied STOP (21610); removed from the list")
        if e.status == 401 or code in BAD_CREDENTIALS:
            fatal = PermanentError(f"Twilio rejected the account SID or auth token for brand {brand_id}")
            return Attempt(recipients.PENDING, error="credentials rejected", fatal=fatal)
        if e.status == 404:
            fatal = PermanentError(f"Twilio has no such account for brand {brand_id}: check account_sid")
            return Attempt(recipients.PENDING, error="account not found", fatal=fatal)
        if e.status == 429 or code == 20429:
            wait = retry_after or DEFAULT_RATE_LIMIT_WAIT_S
            return Attempt(
                recipients.PENDING, error="Twilio rate limit", retry=RateLimited("Twilio rate limit", wait)
            )
        if e.status >= 500:
            retry = TransientError(f"Twilio answered {e.status}")
            return Attempt(recipients.PENDING, error=retry.message, retry=retry)
        # 21211 invalid number, 21614 not SMS-capable, 21608 unverified on a trial account, ...
        return Attempt(recipients.FAILED, error=f"Twilio refused {who}: {code or e.status} {_twilio_text(e)}")
    if never_sent(e):  # refused, unresolvable, connect timeout: nothing left our side
        retry = TransientError(f"Twilio unreachable ({type(e).__name__})")
        return Attempt(recipients.PENDING, error=retry.message, retry=retry)
    # A read timeout, a connection dropped after the request left (requests calls that a
    # ConnectionError too), a broken answer: Twilio may have queued the message.
    return Attempt(
        recipients.UNCERTAIN, error=f"no answer from Twilio for {who} ({type(e).__name__}); not resent"
    )


def never_sent(e: Exception) -> bool:
    """Did requests fail before the request could leave: while connecting, not after?

    requests raises `ConnectionError` both for a refused connection and for one the server closed
    after reading the request (`ProtocolError(RemoteDisconnected)`); only the first is safe to
    send again. urllib3 wraps connect-phase failures in `MaxRetryError(reason=NewConnectionError
    | ConnectTimeoutError)`; a failure once the connection was up reaches requests unwrapped.
    """
    if isinstance(e, requests.ConnectTimeout):
        return True
    if not isinstance(e, requests.ConnectionError):
        return False
    inner = e.args[0] if e.args else None
    if isinstance(inner, MaxRetryError):
        inner = inner.reason
    return isinstance(inner, NewConnectionError | ConnectTimeoutError)


def _twilio_text(e: TwilioRestException) -> str:
    text = (e.msg or "").removeprefix("Unable to create record: ")
    return mask_digits(text)[:160]


def mask_digits(text: str) -> str:
    """Twilio's messages quote the number; keep them out of the ledger."""
    return " ".join(mask_number(w) if w.startswith("+") and w[1:].isdigit() else w for w in text.split(" "))


def _executor(workers: int) -> ThreadPoolExecutor:
    """One small pool per process (made after fork: threads do not survive one)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(workers, thread_name_prefix="sms"))
        return _pool[1]


class SmsChannel(ConfiguredChannel):
    name: ClassVar[str] = "sms"
    idempotent: ClassVar[bool] = True  # per-number claim markers make a resend skip who has it

    def _token(self) -> str:
        return read_secret(self.cfg.auth_token_env, f"Twilio auth token of {self.brand.id}")

    def client(self) -> Client:
        """A client per thread (its session and Retry-After are the thread's own), per process."""
        token = self._token()
        clients = _local.__dict__.setdefault("clients", {})
        key = (os.getpid(), self.cfg.account_sid, token, self.cfg.api_base_url)
        if key not in clients:
            s = self.ctx.settings
            http = _HttpClient(s.http_connect_timeout_s, s.http_read_timeout_s, self.cfg.api_base_url)
            client = Client(self.cfg.account_sid, token, environment={}, http_client=http)
            client.api.base_url = self.cfg.api_base_url  # never with region/edge: they rewrite the host
            clients[key] = client
        return clients[key]

    def callback_url(self, post_id: str) -> str:
        """Where Twilio reports delivery; the post id is in the URL (signed with it), never a number."""
        return f"{self.ctx.settings.public_base_url.rstrip('/')}{STATUS_CALLBACK_PATH}?post={post_id}"

    # ---- sending -------------------------------------------------------------------------------
    def send(self, message: Outbound) -> Receipt:
        floor = Priority[self.brand.routing.sms_min_priority]
        if message.priority < floor:
            raise Skipped(
                f"priority {Priority(message.priority).name} is below the brand's SMS threshold "
                f"({floor.name})"
            )
        text, media_urls = self._with_images(message)
        problem = shaping.validate_for_channel("sms", text, message.link, self.brand)
        if problem:
            raise PermanentError(f"the text {problem}")
        body = shaping.sms_text(text, message.link)
        segments = shaping.sms_segments(body)
        self._token()  # a missing secret fails the delivery before any budget is reserved
        s = self.ctx.settings
        roster = Roster(Recipients(self.ctx.redis, s, message.post_id, self.name), s.recipients_shown)
        run = Run(what="subscribers")
        sender = self.cfg.messaging_service_sid or self.cfg.from_number or ""
        bucket = Bucket(
            Keys(s.key_prefix).pace("sms", self.cfg.account_sid, sender),
            self.cfg.rate_per_s,
            math.ceil(self.cfg.rate_per_s),
        )
        # The first run snapshots the subscribers and reserves the day's segments for all of them
        # (or the post is skipped whole), in the same round trip as its first batch's claims.
        budget = SegmentBudget(self.ctx.redis, s, self.brand.id, self.cfg.daily_segment_budget)
        subscribers = Subscribers(self.ctx.redis, s, self.brand.id)
        with written_on_error(roster):
            while len(run.tried) < s.fanout_per_task:
                taken = roster.take(
                    message.attempt,
                    min(s.sms_concurrency * 4, s.fanout_per_task - len(run.tried)),
                    [bucket],
                    subscribers_key=subscribers.key,
                    reserve=Reservation(budget, segments),
                    skip=run.tried,
                )
                self._refused(taken, segments)
                if taken.wait_s is not None:
                    run.wait_for_token(taken.wait_s)
                run.tried.update(taken.claimed)
                self._send_batch(roster, run, taken.claimed, body, segments, message, media_urls)
                if taken.wait_s is not None or not taken.more:
                    break
            return finish(roster, run)

    def _with_images(self, message: Outbound) -> tuple[str, list[str]]:
        """The text and the MMS media URLs: the images' public URLs as `MediaUrl` where the brand
        sends MMS, else appended to the text as links (one per line)."""
        urls = [media_url(self.ctx.settings, ref.id) for ref in message.media]
        if not urls or self.cfg.mms:
            return message.text, urls
        return "\n".join([message.text.rstrip(), *urls]), []

    def _refused(self, taken: Taken, segments: int) -> None:
        """A first run that found nobody to text, or not enough left of the day's budget."""
        if taken.status == "empty":
            raise Skipped("the brand has no SMS subscribers")
        if taken.status == "over budget":
            raise Skipped(
                f"the daily SMS budget is spent: {taken.used} of {self.cfg.daily_segment_budget} segments "
                f"used today, and this post needs {taken.need} ({segments} x {taken.people} subscribers)"
            )

    def _send_batch(
        self,
        roster: Roster,
        run: Run,
        numbers: list[str],
        body: str,
        segments: int,
        message: Outbound,
        media_urls: list[str] | None = None,
    ) -> None:
        callback = self.callback_url(message.post_id)
        pool = _executor(self.ctx.settings.sms_concurrency)
        results = list(pool.map(lambda n: self._send_one(n, body, callback, media_urls), numbers))
        fatal: ChannelError | None = None
        for number, result in zip(numbers, results, strict=True):
            fatal = fatal or result.fatal
            self._record(roster, run, number, result, segments, message.attempt)
        if fatal is not None:
            raise fatal.carrying(roster.public())

    def _send_one(
        self, number: str, body: str, callback: str, media_urls: list[str] | None = None
    ) -> Attempt:
        client = self.client()
        sender: dict[str, Any] = {"from_": self.cfg.from_number} if self.cfg.from_number else {}
        if self.cfg.messaging_service_sid:
            sender["messaging_service_sid"] = self.cfg.messaging_service_sid
        if media_urls:
            sender["media_url"] = media_urls
        try:
            m = client.messages.create(to=number, body=body, status_callback=callback, **sender)
        except (TwilioRestException, requests.RequestException) as e:
            return classify(e, mask_number(number), self.brand.id, client.http_client.retry_after)
        return Attempt(recipients.SENT, sid=m.sid)

    def _record(
        self, roster: Roster, run: Run, number: str, result: Attempt, segments: int, attempt: int
    ) -> None:
        state, error = result.state, result.error
        if result.retry is not None and last_try(attempt, self.ctx.settings):
            state, error = recipients.FAILED, f"{error} (gave up after {attempt} attempts)"
        elif result.retry is not None:
            run.retry_later(result.retry)
        roster.record(
            number,
            state,
            sid=result.sid,
            error=error,
            segments=segments,
            status="queued" if result.sid else None,
        )
        if state in (recipients.FAILED, recipients.OPTED_OUT):  # not sent, not charged
            # back to the day the segments were reserved on, also after midnight
            budget = SegmentBudget(self.ctx.redis, self.ctx.settings, self.brand.id, 0, roster.budget_day())
            budget.refund(segments)
        if state == recipients.OPTED_OUT:
            Subscribers(self.ctx.redis, self.ctx.settings, self.brand.id).remove([number])
            Store(self.ctx.redis, self.ctx.settings).add_event(
                "sms.opted_out", brand=self.brand.id, number=mask_number(number)
            )

    def check(self) -> str:
        client = self.client()
        try:
            account = client.api.v2010.accounts(self.cfg.account_sid).fetch()
        except (TwilioRestException, requests.RequestException) as e:
            result = classify(e, "the account", self.brand.id)
            raise (result.fatal or result.retry or PermanentError(result.error or "check failed")) from e
        sender = self.cfg.messaging_service_sid or self.cfg.from_number
        return f"{account.friendly_name} ({account.status}), sending as {sender}"
