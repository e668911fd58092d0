"""Bluesky, through the `atproto` SDK, against the brand's PDS.

API: XRPC on the PDS (`com.atproto.repo.createRecord` for posts; `app.bsky.*` reads are
proxied by the PDS to the AppView). Auth: an app password makes a session
(`createSession`, rate-limited to 30 per 5 min and ~100 per day per handle), so a
session is made once, kept in Redis and shared by every worker: at most one password
login per brand per `RELOGIN_GUARD_S` across the workers (the others adopt the stored
session or retry later), and the SDK's refresh (the refresh token rotates on each use)
runs once across the workers, under a Redis lock (`SharedSessionClient`).
Limits: 300 graphemes per post; 5000 write points per hour.
Rate-limit signals: 429 with `ratelimit-reset` / `retry-after`.

Idempotency: the record key is a TID derived from the post, so a redelivered task asks
for the same key; a real PDS answers a duplicate key with a 500, so a retry (or that
500) first looks the record up with getRecord.

Images: each is uploaded (`uploadBlob`) before the record, which embeds them as
`app.bsky.embed.images` with their alt text and `aspectRatio`. A retry uploads them again
(the PDS drops blobs no record references); the record key keeps the post single.
Link cards: a post with a link and no image gets an `app.bsky.embed.external` card from the
page's Open Graph tags (`channels.link_card`, bounded in time); a post has one embed, so
images win over the card. A card that cannot be built leaves the post without one, and the
delivery record's `reason` says why. The `link_cards` setting turns cards off.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import ClassVar, TypeAlias

import httpx
from atproto import Client, Request, Session, SessionEvent, models
from atproto.exceptions import (
    AtProtocolError,
    BadRequestError,
    RateLimitExceededError,
    RequestErrorBase,
    RequestException,
    UnauthorizedError,
)
from atproto_client.utils import facet_detection

from broadcaster.core import shaping
from broadcaster.core.brands import Brand, MissingSecret, Watcher, read_secret
from broadcaster.core.ids import tid_for
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.tls import client_context
from channels import link_card
from channels.base import (
    ChannelContext,
    ChannelError,
    Outbound,
    PermanentError,
    RateLimited,
    Receipt,
    TransientError,
)
from channels.media import Image, load_images

COLLECTION = "app.bsky.feed.post"

RELOGIN_GUARD_S = 180  # at most one password login per brand per 3 minutes, across every worker

REFRESH_POLL_S = 0.05  # how often a worker waiting for another's refresh looks at the stored session
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

_clients: dict[tuple[str, str], Client] = {}
_lock = threading.Lock()


def _status(e: RequestErrorBase) -> int | None:
    return e.response.status_code if e.response is not None else None


def _xrpc_error(e: RequestErrorBase) -> tuple[str, str]:
    content = getattr(e.response, "content", None)
    name = getattr(content, "error", None) or ""
    message = getattr(content, "message", None) or ""
    return str(name), str(message)


def map_error(e: AtProtocolError, brand_id: str, doing: str) -> ChannelError:
    """Translate an atproto exception into our typed error, by HTTP status where there is one.

    The SDK's classes do not say what to do: `UnauthorizedError` is 401 and 403, `NetworkError`
    is a transport error and also 409, 413 and 502. So a 403 (forbidden: a takedown, a
    restricted account) and a 413 (the record is too large) fail this post and are no outage
    signal; 5xx and 408 are transient; a 401 is the credentials.
    """
    if isinstance(e, RateLimitExceededError):
        wait = e.retry_after if getattr(e, "retry_after", None) else None
        if wait is None and getattr(e, "reset_at", None):
            wait = e.reset_at.timestamp() - time.time()
        return RateLimited(f"Bluesky rate limit while {doing}", float(wait or 60))
    status = _status(e) if isinstance(e, RequestErrorBase) else None
    if status is None:  # no answer: a transport error or a timeout
        if isinstance(e, UnauthorizedError):
            return PermanentError(f"Bluesky rejected the credentials of brand {brand_id} while {doing}")
        return TransientError(f"Bluesky unreachable while {doing} ({type(e).__name__})")
    assert isinstance(e, RequestErrorBase)
    name, message = _xrpc_error(e)
    if status >= 500 or status == 408:
        return TransientError(f"Bluesky answered {status} while {doing}")
    if status == 401:
        return PermanentError(f"Bluesky rejected the credentials of brand {brand_id} while {doing}")
    if status == 403:
        return PermanentError(
            f"Bluesky forbade {doing} for brand {brand_id} (403 {name or 'Forbidden'}; "
            f"the account may be taken down or restricted) {message}".strip()
        )
    if status == 413:
        return PermanentError(f"Bluesky refused {doing} for brand {brand_id}: the record is too large (413)")
    rejected = f"Bluesky rejected {doing} for brand {brand_id}: {name or status} {message}"
    return PermanentError(rejected.strip())


def _stale_session(e: AtProtocolError) -> bool:
    """Is this the PDS refusing our session (re-login helps), not refusing the request (403)?"""
    if isinstance(e, UnauthorizedError):
        return _status(e) in (None, 401)
    if isinstance(e, BadRequestError):
        return _xrpc_error(e)[0] in ("ExpiredToken", "InvalidToken")
    return False


class SessionPending(TransientError):
    """Another worker is making the brand's session (or the last login was minutes ago): retry
    later. Says nothing about Bluesky's health."""

    def __init__(self, message: str):
        super().__init__(message, outage=False)


def transport_error(e: httpx.TransportError, doing: str) -> ChannelError:
    """An httpx error the SDK lets through unwrapped (it wraps only timeouts and
    `httpx.NetworkError`): a connection closed without an answer (`RemoteProtocolError`), a
    proxy failing. A retry is safe: it looks the record up before creating it again."""
    return TransientError(f"Bluesky unreachable while {doing} ({type(e).__name__})")


RefreshResponse: TypeAlias = models.ComAtprotoServerRefreshSession.Response


class SharedSessionClient(Client):
    """The atproto client whose refresh (the SDK's own, when the access token is less than 15
    minutes from expiry) goes through `refresh`: once per brand across every process, since
    Bluesky rotates the refresh token on each use and concurrent refreshes kill each other's
    session. `refresh` gets the SDK's plain refresh to call, or adopts the session another
    process stored."""

    def __init__(
        self,
        base_url: str,
        request: Request,
        refresh: Callable[[SharedSessionClient, Callable[[], RefreshResponse]], RefreshResponse],
    ):
        super().__init__(base_url, request=request)
        self._shared_refresh = refresh

    def _refresh_and_set_session(self) -> RefreshResponse:
        return self._shared_refresh(self, super()._refresh_and_set_session)

    def adopt(self, session_string: str) -> RefreshResponse:
        """Take a session another process made (an IMPORT: not stored again)."""
        session = self._import_session_string(session_string)
        return RefreshResponse(
            access_jwt=session.access_jwt,
            refresh_jwt=session.refresh_jwt,
            did=session.did,
            handle=session.handle,
        )


def _unexpired(session_string: str) -> bool:
    try:
        exp = Session.decode(session_string).access_jwt_payload.exp
    except Exception:  # an unreadable stored session is not one to adopt
        return False
    return bool(exp) and exp > time.time() + 5


def atproto_request(timeout: httpx.Timeout) -> Request:
    """The atproto SDK's HTTP layer for one client, on the process's one TLS context: the probe,
    vantage and watcher clients are made fresh each time (broadcaster/ledger/tls.py)."""
    return Request(timeout=timeout, verify=client_context())


class BlueskyChannel:
    name: ClassVar[str] = "bluesky"
    idempotent: ClassVar[bool] = True
    resend_horizon_s: float | None = None  # the record key is deterministic: a lookup, any time

    def __init__(self, brand: Brand, ctx: ChannelContext):
        self.brand = brand
        self.cfg = brand.bluesky
        self.ctx = ctx
        self._keys = Keys(ctx.settings.key_prefix)
        self._session_key = self._keys.bluesky_session(brand.id)

    # ---- session -------------------------------------------------------------------------------
    def _new_client(self, timeout: httpx.Timeout | None = None) -> Client:
        s = self.ctx.settings
        timeout = timeout or httpx.Timeout(s.http_read_timeout_s, connect=s.http_connect_timeout_s)
        client = SharedSessionClient(self.cfg.pds_url, atproto_request(timeout), self._refresh)
        client.on_session_change(self._persist)
        return client

    def _refresh(
        self, client: SharedSessionClient, refresh: Callable[[], RefreshResponse]
    ) -> RefreshResponse:
        """Refresh the brand's session once across every process: under a Redis lock (SET NX
        PX), and only if no other process stored a newer session meanwhile (then adopt that).
        Waiters poll the stored session until it changes or the lock is free, for a bounded time."""
        s = self.ctx.settings
        hold_s = 2 * (s.http_connect_timeout_s + s.http_read_timeout_s) + 5
        lock = self._keys.bluesky_refresh_lock(self.brand.id)
        ours = client.export_session_string()
        deadline = time.monotonic() + 2 * hold_s
        while True:
            saved = self._get(self._session_key)
            if saved and saved != ours and _unexpired(saved):
                return client.adopt(saved)
            token = uuid.uuid4().hex
            if self.ctx.redis.set(lock, token, nx=True, px=int(hold_s * 1000)):
                try:
                    saved = self._get(self._session_key)  # a refresh may have ended just before
                    if saved and saved != ours and _unexpired(saved):
                        return client.adopt(saved)
                    return refresh()  # stored by `_persist` (REFRESH) before the lock is released
                finally:
                    self.ctx.redis.eval(_RELEASE, 1, lock, token)
            if time.monotonic() > deadline:
                raise SessionPending(
                    f"waiting for the brand's new Bluesky session (brand {self.brand.id}: "
                    "another worker's refresh is taking long)"
                )
            time.sleep(REFRESH_POLL_S)

    def _persist(self, event: SessionEvent, session) -> None:
        if event in (SessionEvent.CREATE, SessionEvent.REFRESH):
            self.ctx.redis.set(self._session_key, session.export())

    def _password_login(self, client: Client) -> None:
        """Log in with the app password, unguarded: callers hold the brand's relogin marker."""
        password = self._password()
        try:
            client.login(self.cfg.handle, password, fetch_bsky_profile=False)
        except (UnauthorizedError, BadRequestError) as e:
            message = (
                f"Bluesky rejected the app password for brand {self.brand.id} (handle {self.cfg.handle})"
            )
            self.ctx.redis.set(self._keys.auth_failed(self.brand.id), message, ex=RELOGIN_GUARD_S)
            raise PermanentError(message) from e
        except AtProtocolError as e:
            raise map_error(e, self.brand.id, "logging in") from e
        self.ctx.redis.delete(self._keys.auth_failed(self.brand.id))

    def _get(self, key: str) -> str | None:
        value = self.ctx.redis.get(key)
        return value.decode() if isinstance(value, bytes) else value

    def _password(self) -> str:
        try:
            return read_secret(self.cfg.app_password_env, f"Bluesky app password of {self.brand.id}")
        except MissingSecret as e:
            raise PermanentError(str(e)) from None

    def _login_or_adopt(self, client: Client, stale: str | None) -> None:
        """Establish `client`'s session: at most one password login per brand per
        `RELOGIN_GUARD_S` across every worker (createSession is limited to 30 per 5 minutes per
        handle). The worker that takes the marker logs in and stores the session; the others
        adopt a stored session newer than `stale`, or wait (a TransientError: the delivery is
        retried). A refused password is remembered for the same time, so they fail alike."""
        self._password()  # a missing secret fails here, without taking the marker
        marker = self._keys.relogin(self.brand.id)
        if self.ctx.redis.set(marker, "1", nx=True, ex=RELOGIN_GUARD_S):
            try:
                self._password_login(client)
            except TransientError:
                self.ctx.redis.delete(marker)  # no session made: another worker may try now
                raise
            return
        saved = self._get(self._session_key)
        if saved and saved != stale:
            client.login(session_string=saved, fetch_bsky_profile=False)
            return
        refused = self._get(self._keys.auth_failed(self.brand.id))
        if refused:
            raise PermanentError(
                refused if refused != "1" else f"Bluesky rejected the app password for brand {self.brand.id}"
            )
        raise SessionPending(
            f"waiting for the brand's new Bluesky session (brand {self.brand.id}: another worker "
            "is logging in, or did within the last few minutes)"
        )

    def client(self) -> Client:
        """A logged-in client: cached per process, session shared through Redis."""
        key = (self.brand.id, self.cfg.pds_url)
        with _lock:
            client = _clients.get(key)
            if client is None:
                client = self._new_client()
                saved = self._get(self._session_key)
                if saved:
                    client.login(session_string=saved, fetch_bsky_profile=False)
                else:
                    self._login_or_adopt(client, None)
                _clients[key] = client
            return client

    def _relogin(self, stale: Client) -> Client:
        """The session was refused: adopt a newer one from Redis, else log in with the password
        (once per brand across the workers, see `_login_or_adopt`)."""
        key = (self.brand.id, self.cfg.pds_url)
        with _lock:
            if _clients.get(key) is stale:
                _clients.pop(key, None)
            client = self._new_client()
            self._login_or_adopt(client, stale.export_session_string())
            _clients[key] = client
            return client

    def probe_client(self, timeout_s: float, fresh: bool = False) -> Client:
        """A client for the health watcher, with its own short timeout, on the shared session.

        The session comes from Redis (no request: importing a session string is local) and
        the SDK's refreshes are saved back; the app password is used only when no session is
        stored yet, or with `fresh` after the PDS refused the stored one. Close it when done.
        """
        client = self._new_client(httpx.Timeout(timeout_s))
        if fresh:  # the health watcher took the brand's relogin marker itself
            self._password_login(client)
        elif saved := self._get(self._session_key):
            client.login(session_string=saved, fetch_bsky_profile=False)
        else:
            try:
                self._login_or_adopt(client, None)
            except SessionPending as e:  # the watcher skips a brand that is rate-limited, not a verdict
                raise RateLimited(e.message, RELOGIN_GUARD_S) from None
        return client

    def _call(self, doing: str, fn):
        """Run `fn(client)`, re-establishing the session once if the PDS refuses it."""
        client = self.client()
        try:
            return fn(client)
        except (UnauthorizedError, BadRequestError) as e:
            if not _stale_session(e):
                raise
            client = self._relogin(client)
            return fn(client)

    # ---- operations ----------------------------------------------------------------------------
    @staticmethod
    def _did(client: Client) -> str:
        return client._session.did  # the SDK keeps the DID only on the session after a plain login

    def _receipt(self, uri: str, note: str | None = None) -> Receipt:
        rkey = uri.rsplit("/", 1)[-1]
        return Receipt(
            remote_id=uri, url=f"https://bsky.app/profile/{self.cfg.handle}/post/{rkey}", note=note
        )

    def _existing(self, client: Client, rkey: str) -> Receipt | None:
        try:
            found = client.app.bsky.feed.post.get(self._did(client), rkey)
        except BadRequestError as e:
            if _xrpc_error(e)[0] == "RecordNotFound":
                return None
            raise
        return self._receipt(found.uri)

    @staticmethod
    def _images_embed(client: Client, images: list[Image]) -> models.AppBskyEmbedImages.Main:
        """Upload each image (a blob), then the embed that names them with alt and aspect ratio."""
        return models.AppBskyEmbedImages.Main(
            images=[
                models.AppBskyEmbedImages.Image(
                    image=client.upload_blob(image.data).blob,
                    alt=image.ref.alt,
                    aspect_ratio=models.AppBskyEmbedDefs.AspectRatio(
                        width=image.ref.width, height=image.ref.height
                    ),
                )
                for image in images
            ]
        )

    def _card_embed(
        self, client: Client, link: str
    ) -> tuple[models.AppBskyEmbedExternal.Main | None, str | None]:
        """The link card, or None and why not. Never raises for the card's sake: a page that
        fails, or a thumbnail the PDS refuses, leaves the post without (that part of) a card."""
        try:
            card = link_card.build_card(link, self.ctx.settings)
        except link_card.CardUnavailable as e:
            return None, f"sent without a link card: {e}"
        note = f"link card without its image: {card.image_problem}" if card.image_problem else None
        thumb = None
        if card.image is not None:
            try:
                thumb = client.upload_blob(card.image).blob
            except (AtProtocolError, httpx.TransportError) as e:
                if isinstance(e, UnauthorizedError | BadRequestError) and _stale_session(e):
                    raise  # the session: `_call` logs in again and retries the whole send
                note = f"link card without its image: the PDS refused it ({type(e).__name__})"
        external = models.AppBskyEmbedExternal.External(
            uri=card.url, title=card.title, description=card.description, thumb=thumb
        )
        return models.AppBskyEmbedExternal.Main(external=external), note

    def send(self, message: Outbound) -> Receipt:
        rkey = tid_for(message.post_id, message.created_at_us)
        text = shaping.bluesky_text(message.text, message.link)
        images = load_images(self.ctx.settings, message, self.name)

        def go(client: Client) -> Receipt:
            if message.attempt > 1 and (found := self._existing(client, rkey)):
                return found
            try:
                facets = client.detect_facets(text)
            except AtProtocolError:  # mention lookup failed: keep links and tags
                facets = facet_detection.detect_facets(text)
            embed: models.AppBskyEmbedImages.Main | models.AppBskyEmbedExternal.Main | None = None
            note = None
            if images:  # one embed per post: the images win over a link card
                embed = self._images_embed(client, images)
            elif message.link and message.kind == "post" and self.ctx.settings.link_cards:
                embed, note = self._card_embed(client, message.link)
            record = models.AppBskyFeedPost.Record(
                text=text,
                facets=facets or None,
                created_at=client.get_current_time_iso(),
                langs=list(self.cfg.langs),
                embed=embed,
            )
            try:
                created = client.app.bsky.feed.post.create(self._did(client), record, rkey=rkey)
            except RequestException as e:
                # A real PDS answers a duplicate record key with a 500: was it ours already?
                if _status(e) == 500 and (found := self._existing(client, rkey)):
                    return found
                raise
            return self._receipt(created.uri, note)

        try:
            return self._call("posting", go)
        except ChannelError:
            raise
        except AtProtocolError as e:
            raise map_error(e, self.brand.id, "posting") from e
        except httpx.TransportError as e:
            raise transport_error(e, "posting") from e

    def check(self) -> str:
        try:
            session = self._call("checking the session", lambda c: c.com.atproto.server.get_session())
        except ChannelError:
            raise
        except AtProtocolError as e:
            raise map_error(e, self.brand.id, "checking the session") from e
        except httpx.TransportError as e:
            raise transport_error(e, "checking the session") from e
        if bad := self._misconfigured_feeds():
            raise PermanentError(
                f"Bluesky probe feed {'; '.join(bad)} for brand {self.brand.id}: misconfigured "
                "(no such feed on this network?); outage detection leaves it out. Fix "
                "bluesky.probe_feeds in the brands file"
            )
        return f"{session.handle} ({session.did}) on {self.cfg.pds_url}"

    def _misconfigured_feeds(self) -> list[str]:
        return misconfigured_feeds(self.cfg.probe_feeds, lambda fn: self._call("checking a probe feed", fn))


def misconfigured_feeds(feeds: list[str], call: Callable[[Callable[[Client], object]], object]) -> list[str]:
    """The probe feeds that answer 4xx (the health watcher's `misconfigured` class), each named
    with what it answered; `call` runs a request on a logged-in client. A 5xx or a timeout is an
    outage, not for this check."""
    bad = []

    def read(params: models.AppBskyFeedGetFeed.Params) -> Callable[[Client], object]:
        return lambda c: c.app.bsky.feed.get_feed(params)

    for uri in feeds:
        try:
            call(read(models.AppBskyFeedGetFeed.Params(feed=uri, limit=1)))
        except RequestErrorBase as e:
            status = _status(e) or 0
            error, _ = _xrpc_error(e)
            if 400 <= status < 500 and status not in (401, 403, 429):
                bad.append(f"{uri} answers HTTP {status} {error}".rstrip())
        except (AtProtocolError, httpx.TransportError):
            continue
    return bad


def check_watcher(watcher: Watcher, feeds: list[str], timeout_s: float) -> str:
    """`broadcaster channels check` for a watcher account: it logs in on its own PDS and reads
    the probe feeds of the targets it watches; a feed its network lacks fails the check."""
    who = f"watcher {watcher.id}"
    client = Client(base_url=watcher.pds_url, request=atproto_request(httpx.Timeout(timeout_s)))
    try:
        password = read_secret(watcher.app_password_env, f"{who}'s app password")
        try:
            client.login(watcher.handle, password, fetch_bsky_profile=False)
        except AtProtocolError as e:
            raise map_error(e, who, "logging in") from e
        except httpx.TransportError as e:
            raise transport_error(e, "logging in") from e
        if bad := misconfigured_feeds(feeds, lambda fn: fn(client)):
            raise PermanentError(
                f"Bluesky probe feed {'; '.join(bad)} seen by {who} on {watcher.pds_url}: "
                "misconfigured (no such feed on its network?); outage detection leaves it out "
                "for this watcher"
            )
        return f"{watcher.handle} on {watcher.pds_url}, reading {len(feeds)} probe feed(s)"
    finally:
        client.request.close()
