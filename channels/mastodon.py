"""Mastodon, through Mastodon.py, on the brand's instance.

API: REST on the instance (`POST /api/v1/statuses`; `GET /api/v1/accounts/verify_credentials`
for the check). Auth: an access token (`Authorization: Bearer`) of the brand's account,
read from the environment variable the brands file names; it needs the `write:statuses`
scope. Limits: 500 characters per status by default, set per instance (the brand's
`max_characters`); each URL counts 23 and the content warning counts too. Longer posts
are rejected at queue time (`broadcaster.core.shaping`), never split into a thread.
Rate-limit signals: 429 with `X-RateLimit-Reset` (300 requests per 5 minutes per account
by default); Mastodon.py runs with `ratelimit_method="throw"` so no worker sleeps inside
a call, and `version_check_mode="none"` so sending makes no extra instance request.

Idempotency: every send carries `Idempotency-Key: <brand>:<post id>:mastodon`, which the
instance remembers for an hour, so a retried task (after a timeout, a lost worker)
returns the first status instead of making a second one.

Images: uploaded first with media upload v2 (`POST /api/v2/media` with the alt text as
`description`; needs the `write:media` scope), which answers before the instance has
processed them (`url: null`); `GET /api/v1/media/:id` is polled until each has its URL, for
at most `mastodon_media_wait_s` (then the delivery is retried; Mastodon.py's own
`synchronous=True` waits 5 s between polls, without bound). Then the status names them in
`media_ids`. A retry uploads the images again: the instance deletes unattached uploads, and
the Idempotency-Key still answers the first status.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from datetime import UTC, datetime
from typing import ClassVar

import dateutil.parser
import requests
from mastodon import Mastodon
from mastodon.errors import (
    MastodonAPIError,
    MastodonError,
    MastodonNetworkError,
    MastodonNotFoundError,
    MastodonRatelimitError,
    MastodonServerError,
    MastodonUnauthorizedError,
)
from requests.adapters import HTTPAdapter

from broadcaster.core import shaping
from broadcaster.core.brands import read_secret
from channels.base import (
    ChannelError,
    ConfiguredChannel,
    Outbound,
    PermanentError,
    RateLimited,
    Receipt,
    TransientError,
)
from channels.http_env import read_environment_once
from channels.media import Image, load_images

DEFAULT_RATE_LIMIT_WAIT_S = 60.0
MEDIA_POLL_FIRST_S = 0.1  # then doubling, up to MEDIA_POLL_MAX_S
MEDIA_POLL_MAX_S = 1.0
# Media upload v2 needs 3.1.4+; pinned (with "created" checks, which this version passes for
# every method used) so Mastodon.py neither asks the instance nor falls back to /api/v1/media.
ASSUMED_VERSION = "4.0.0"

_clients: dict[tuple[str, str, str], LeanMastodon] = {}
_lock = threading.Lock()


def idempotency_key(brand_id: str, post_id: str) -> str:
    return f"{brand_id}:{post_id}:mastodon"


def _api_status(e: MastodonAPIError) -> tuple[int | None, str]:
    """(HTTP status, the instance's error text) from Mastodon.py's error args."""
    args = e.args
    status = args[1] if len(args) > 1 and isinstance(args[1], int) else None
    text = str(args[3]) if len(args) > 3 and args[3] else ""
    return status, text


def map_error(e: MastodonError, brand_id: str, doing: str, reset_at: float | None = None) -> ChannelError:
    """Translate a Mastodon.py exception into our typed error."""
    if isinstance(e, MastodonRatelimitError):
        wait = reset_at - time.time() if reset_at else DEFAULT_RATE_LIMIT_WAIT_S
        return RateLimited(f"Mastodon rate limit while {doing}", max(1.0, wait))
    if isinstance(e, MastodonNetworkError):  # timeouts, refused connections (requests errors)
        return TransientError(f"Mastodon unreachable while {doing} ({str(e)[:120]})")
    if isinstance(e, MastodonServerError):
        status, _ = _api_status(e)
        return TransientError(f"Mastodon answered {status} while {doing}")
    if isinstance(e, MastodonUnauthorizedError):
        return PermanentError(f"Mastodon rejected the access token for brand {brand_id}")
    if isinstance(e, MastodonNotFoundError):
        return PermanentError(f"Mastodon answered 404 while {doing} for brand {brand_id}: check instance_url")
    if isinstance(e, MastodonAPIError):
        status, text = _api_status(e)
        if status == 403:
            scope = "write:media" if "image" in doing else "write:statuses"
            return PermanentError(
                f"Mastodon refused {doing} for brand {brand_id}: the access token lacks the "
                f"{scope} scope, or the account is suspended ({text or 'forbidden'})"
            )
        if status in (408, 425):
            return TransientError(f"Mastodon answered {status} while {doing}")
        return PermanentError(f"Mastodon rejected {doing} for brand {brand_id}: {status} {text}".strip())
    return TransientError(f"Mastodon error while {doing}: {type(e).__name__}")


POOL_CONNECTIONS = 64  # per client: a threads-pool worker sends from many threads at once


def _pooled_session(instance_url: str) -> requests.Session:
    """requests keeps 10 connections per host by default; more threads would open and drop
    connections ("Connection pool is full"). One session, enough kept-alive connections,
    and the environment read once (`channels.http_env`)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_CONNECTIONS)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.hooks["response"].append(_rate_limit_headers_read_once)
    return read_environment_once(session, instance_url)


def header_epoch(value: str) -> float | None:
    """The time a rate-limit header names, as Mastodon.py reads it (an integer epoch, else
    dateutil, a time without a zone being UTC), or None where Mastodon.py would fail. The forms
    servers send (an epoch, ISO 8601, an HTTP date) are read with the standard library first."""
    try:
        if str(int(value)) == value:
            return float(value)
    except ValueError:
        pass
    when: datetime | None = None
    try:
        if value[4:5] == "-" and value[10:11] == "T":  # 2026-12-05T23:50:00.000Z
            when = datetime.fromisoformat(value)
        elif len(value) == 29 and value.endswith(" GMT"):  # Sat, 05 Dec 2026 23:50:00 GMT
            when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        pass  # dateutil decides
    try:
        when = when or dateutil.parser.parse(value)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _rate_limit_headers_read_once(response: requests.Response, *args: object, **kwargs: object) -> None:
    """Mastodon.py reads `X-RateLimit-Reset`, and `Date` to correct for the server's clock, with
    dateutil on every answer (4 % of a worker's CPU at a backlog, py-spy). They are read here once
    with the standard library, and Mastodon.py gets the reset it would have computed as an
    integer epoch (rounded up), which it takes as is. A header it cannot read is dropped: it
    raised `MastodonRatelimitError` *after* such a 2xx, the status existed, and a retry waiting
    out a "rate limit" posted the same outage notice 30 times in 42 s."""
    headers = response.headers
    raw = headers.get("X-RateLimit-Reset")
    if raw is None:
        return  # Mastodon.py reads `Date` only with a reset
    reset = header_epoch(raw)
    server_now = header_epoch(headers["Date"]) if "Date" in headers else None
    headers.pop("Date", None)
    if reset is None:
        del headers["X-RateLimit-Reset"]
        return
    if server_now is not None:
        reset += time.time() - server_now
    headers["X-RateLimit-Reset"] = str(math.ceil(reset))


class LeanMastodon(Mastodon):
    """Mastodon.py whose answers stay the plain JSON dicts the API sent.

    Mastodon.py casts every answer into its typed objects (an AttribAccessDict per nested
    object, dateutil for every date): a third of a worker's CPU at a backlog (py-spy), for a
    channel that reads two keys of a status. Requests, errors and rate limits are Mastodon.py's
    own. The hook is the library's private cast (`Mastodon.__try_cast_to_type`); a unit test
    fails if a Mastodon.py release renames it.
    """

    def _Mastodon__try_cast_to_type(self, value, override_type=None):  # the library's mangled name
        if isinstance(value, dict) and value:
            return value, None
        # lists, empty answers; mypy does not mangle private names, so it cannot see this method
        return Mastodon._Mastodon__try_cast_to_type(self, value, override_type)  # type: ignore[attr-defined]


class MastodonChannel(ConfiguredChannel):
    name: ClassVar[str] = "mastodon"
    idempotent: ClassVar[bool] = True  # the Idempotency-Key makes a resend return the same status

    @property
    def resend_horizon_s(self) -> float:  # type: ignore[override]  # a setting, not a constant
        """The instance keeps an Idempotency-Key for an hour; resend only well within it."""
        return self.ctx.settings.mastodon_resend_horizon_s

    def client(self) -> LeanMastodon:
        """One client per brand, instance and token per process: its requests session pools."""
        token = read_secret(self.cfg.access_token_env, f"Mastodon access token of {self.brand.id}")
        key = (self.brand.id, self.cfg.instance_url, token)
        with _lock:
            if key not in _clients:
                s = self.ctx.settings
                _clients[key] = LeanMastodon(
                    api_base_url=self.cfg.instance_url,
                    access_token=token,
                    # Mastodon.py hints a float but hands it to requests, which takes (connect, read)
                    request_timeout=(s.http_connect_timeout_s, s.http_read_timeout_s),  # type: ignore[arg-type]
                    ratelimit_method="throw",
                    mastodon_version=ASSUMED_VERSION,
                    version_check_mode="created",
                    user_agent="failover-broadcaster",
                    session=_pooled_session(self.cfg.instance_url),
                )
            return _clients[key]

    def send(self, message: Outbound) -> Receipt:
        text = shaping.mastodon_text(message.text, message.link)
        problem = shaping.validate_for_channel("mastodon", message.text, message.link, self.brand)
        if problem:  # validated at queue time; notices and config changes could still get here
            raise PermanentError(f"the text {problem}")
        images = load_images(self.ctx.settings, message, self.name)
        client = self.client()
        media_ids = self._upload(client, images) if images else None
        try:
            status = client.status_post(
                text,
                media_ids=media_ids,
                visibility=self.cfg.visibility,
                spoiler_text=self.cfg.spoiler_text or None,
                language=self.cfg.language,
                idempotency_key=idempotency_key(self.brand.id, message.post_id),
            )
        except MastodonError as e:
            raise map_error(e, self.brand.id, "posting", client.ratelimit_reset) from e
        return Receipt(remote_id=str(status["id"]), url=status.get("url") or status.get("uri"))

    def _upload(self, client: LeanMastodon, images: list[Image]) -> list[str]:
        """Upload each image with its alt text, then wait (bounded) until the instance has
        processed them all; their ids, in order."""
        attachments = []
        try:
            for image in images:
                attachments.append(
                    client.media_post(
                        image.data,
                        mime_type=image.ref.mime,
                        description=image.ref.alt or None,
                        file_name=image.filename,
                    )
                )
            deadline = time.monotonic() + self.ctx.settings.mastodon_media_wait_s
            pause = MEDIA_POLL_FIRST_S
            for attachment in attachments:
                while attachment.get("url") is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TransientError(
                            f"Mastodon is still processing the images of brand {self.brand.id} after "
                            f"{self.ctx.settings.mastodon_media_wait_s:g} s; retrying later",
                            outage=False,
                        )
                    time.sleep(min(pause, left))
                    pause = min(pause * 2, MEDIA_POLL_MAX_S)
                    attachment = client.media(attachment["id"])
        except MastodonError as e:
            raise map_error(e, self.brand.id, "uploading an image", client.ratelimit_reset) from e
        return [str(a["id"]) for a in attachments]

    def check(self) -> str:
        client = self.client()
        try:
            me = client.account_verify_credentials()
        except MastodonError as e:
            raise map_error(e, self.brand.id, "checking the access token", client.ratelimit_reset) from e
        limit = f"limit {self.cfg.max_characters}"
        try:
            instance = client.instance_v2()
            server_max = instance["configuration"]["statuses"]["max_characters"]
            if server_max < self.cfg.max_characters:
                limit += f" but the instance allows only {server_max}: lower max_characters"
        except (MastodonError, KeyError, TypeError):
            pass  # the limit check is advice; the credentials are what this verifies
        return f"@{me['acct']} on {self.cfg.instance_url} ({limit})"
