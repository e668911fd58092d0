"""Fake Bluesky: a PDS with its AppView in one server, XRPC under ``/xrpc/``; optionally
the AppView on a port of its own too.

Imitates these real endpoints (as atproto's ``Client`` calls them):

* ``com.atproto.server.describeServer`` / ``createSession`` / ``refreshSession`` /
  ``getSession`` (JWT-shaped HMAC tokens with ``exp`` and ``sub`` = DID, no ``didDoc``)
  ``access_ttl`` (seconds; ``set_access_ttl``) makes short-lived access tokens;
  ``revoke_sessions(handle)`` refuses every token issued so far (401 ``ExpiredToken``)
* ``com.atproto.identity.resolveHandle`` (for mention facets)
* ``com.atproto.repo.createRecord`` / ``getRecord`` / ``deleteRecord`` (TID record keys,
  300-grapheme post limit, a duplicate rkey answers 500 like the real PDS; a post's embed is
  checked against the lexicons: ``app.bsky.embed.images`` (1-4 images, each with ``alt`` and
  an optional ``aspectRatio``) and ``app.bsky.embed.external`` (``uri``, ``title``,
  ``description``, optional ``thumb``), every blob one this repo uploaded, an image, at most
  1,000,000 bytes)
* ``com.atproto.repo.uploadBlob`` (the body is the file; the type is sniffed from its bytes as
  the PDS does, since atproto sends ``*/*``; answers ``{"blob": {"$type": "blob", "ref":
  {"$link": cid}, "mimeType", "size"}}``; ``blobs`` lists what was stored)
* ``app.bsky.actor.getProfile``, ``app.bsky.feed.getTimeline`` / ``getAuthorFeed`` /
  ``getFeed`` (the part a PDS proxies to its AppView: the ``feeds`` failure group answers
  502 ``UpstreamFailure`` by default, as a PDS does during an AppView outage);
  ``set_unknown_feeds(uris)`` makes feed generators absent from this network (``getFeed``
  answers 400 ``UnknownFeed``, e.g. no Discover on a PDS of one's own)

Failure groups: ``feeds``, ``write`` (create/deleteRecord), ``blobs`` (uploadBlob), ``auth``
(create/refresh/getSession) and ``all``. Every mode of ``server.py`` works on ``feeds`` alone, so timeline
and feed reads break while login and createRecord keep working: ``error`` (502
``UpstreamFailure`` by default, or ``status=503`` ...), ``reset``, ``hang``, ``slow``,
``rate_limit`` (with or without Retry-After), ``flaky``, ``partial`` and ``refused``. For
``fraction`` / ``partial`` an account is the DID in the request's access token (else the
``actor`` parameter); ``in_fraction(did, fraction)`` says which accounts are hit.

The AppView on its own port (``start_appview()``; ``appview_url``; or ``POST
/_sandbox/setup {"action": "start_appview"}``), as Bluesky's public AppView serves
``app.bsky.*`` apart from the PDS: ``getProfile``, ``getAuthorFeed`` and ``getFeed`` without
auth, ``getTimeline`` with the PDS's access token (the real AppView wants a service-auth JWT
the PDS mints; here the access token stands in for it). It shares the PDS's accounts,
records and switches (a ``feeds`` switch hits both listeners).

``refused`` (``fail("feeds", "refused")``, group ``feeds`` only; no ``count`` or
``fraction``): feeds and login share the PDS port, so the PDS itself cannot refuse feeds
alone. Instead the AppView listener stops: connecting to ``appview_url`` gets ECONNREFUSED
(httpx ``ConnectError``). The PDS stays up and answers its own feed endpoints as a real PDS
does when its AppView is unreachable (its pipethrough fetch fails): 502 ``{"error":
"UpstreamFailure", "message": "Upstream Failure"}``. Healing ``feeds`` (or replacing the
switch, ``heal()``, ``reset()``) starts the AppView again on the same port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

import regex
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .server import (
    Call,
    FakeService,
    HTTPFailure,
    ServerThread,
    Switch,
    _strip_trailing_slash,
    bearer_token,
    retry_at,
    sniff_image,
)

POST = "app.bsky.feed.post"
B32_SORT = "234567abcdefghijklmnopqrstuvwxyz"
TID_RE = regex.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
MAX_GRAPHEMES = 300
RATE_POLICY = "3000;w=300"

# @atproto/xrpc ResponseType names and messages by status
XRPC_ERRORS = {
    400: ("InvalidRequest", "Invalid Request"),
    401: ("AuthenticationRequired", "Authentication Required"),
    403: ("Forbidden", "Forbidden"),
    404: ("XRPCNotSupported", "XRPC Not Supported"),
    413: ("PayloadTooLarge", "Payload Too Large"),
    429: ("RateLimitExceeded", "Rate Limit Exceeded"),
    500: ("InternalServerError", "Internal Server Error"),
    501: ("MethodNotImplemented", "Method Not Implemented"),
    502: ("UpstreamFailure", "Upstream Failure"),
    503: ("NotEnoughResources", "Not Enough Resources"),
    504: ("UpstreamTimeout", "Upstream Timeout"),
}

MAX_IMAGES = 4  # app.bsky.embed.images: images maxLength
MAX_IMAGE_BYTES = 1_000_000  # app.bsky.embed.images#image / embed.external#external thumb: maxSize
MAX_UPLOAD_BYTES = 50_000_000  # the PDS's blob upload limit (a record then checks its own)
EMBED_IMAGES = "app.bsky.embed.images"
EMBED_EXTERNAL = "app.bsky.embed.external"

FEEDS = ("feeds",)
WRITE = ("write",)
BLOBS = ("blobs",)
AUTH = ("auth",)


def xrpc_error(status: int, error: str | None = None, message: str | None = None) -> JSONResponse:
    name, default_message = XRPC_ERRORS.get(status, ("InternalServerError", "Internal Server Error"))
    return JSONResponse({"error": error or name, "message": message or default_message}, status_code=status)


def fail(status: int, error: str | None = None, message: str | None = None) -> HTTPFailure:
    return HTTPFailure(xrpc_error(status, error, message))


def did_for(handle: str) -> str:
    digest = hashlib.sha256(handle.lower().encode()).digest()[:15]
    return "did:plc:" + base64.b32encode(digest).decode().lower()  # 24 chars


def make_cid(data: Any) -> str:
    """A CIDv1 (dag-cbor, sha2-256) string over the JSON of ``data``."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).digest()
    raw = bytes([0x01, 0x71, 0x12, 0x20]) + digest
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def blob_cid(data: bytes) -> str:
    """A CIDv1 (raw codec, sha2-256) string over the bytes, as a PDS names a blob."""
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TidClock:
    """Monotonic TIDs: 53 bits of microseconds + 10 bits clock id, base32-sortable."""

    def __init__(self) -> None:
        self._last = 0
        self._clock_id = secrets.randbelow(1024)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            micros = max(time.time_ns() // 1000, self._last + 1)
            self._last = micros
        value = (micros << 10) | self._clock_id
        return "".join(B32_SORT[(value >> (5 * i)) & 31] for i in range(12, -1, -1))


class BlueskyFake(FakeService):
    name = "bluesky"
    groups = ("feeds", "write", "blobs", "auth", "all")
    refusable = ("feeds",)

    def __init__(self) -> None:
        self.access_ttl: float = 2 * 3600
        self.refresh_ttl: float = 90 * 24 * 3600
        self.service_did = "did:web:sandbox.bsky.local"
        self._secret = os.urandom(32)
        self._tids = TidClock()
        self._accounts: dict[str, dict[str, Any]] = {}  # did -> account
        # (did, collection, rkey): collection, and rkey in lookups, are the request's JSON values as sent
        self._records: dict[tuple[str, Any, Any], dict[str, Any]] = {}
        self._blobs: dict[tuple[str, str], dict[str, Any]] = {}  # (did, cid) -> mimeType, size, data
        self._seq = 0
        self.session_creations: dict[str, int] = {}
        self._token_seq = 0  # every issued token carries its number ("n")
        self._revoked_upto: dict[str, int] = {}  # did -> tokens numbered up to this are revoked
        self._appview: ServerThread | None = None
        self.appview_port: int | None = None  # kept while "refused" has the listener down
        # Feed generators this network does not have: getFeed answers 400 UnknownFeed for them.
        self.unknown_feeds: set[str] = set()
        super().__init__()
        self.appview_asgi = _strip_trailing_slash(Starlette(routes=self.appview_routes()))

    # ---------------------------------------------------------------- public helpers
    def add_account(self, handle: str, password: str, display_name: str | None = None) -> str:
        """Create (or update the password of) an account; returns its DID."""
        handle = handle.lower()
        did = did_for(handle)
        with self.lock:
            self._accounts[did] = {
                "did": did,
                "handle": handle,
                "password": password,
                "display_name": display_name or handle.split(".")[0].title(),
                "created_at": now_iso(),
            }
        return did

    @property
    def posts(self) -> list[dict[str, Any]]:
        """Posts on the server in creation order (copies)."""
        with self.lock:
            return [self._post_view_dict(r) for r in self._records.values() if r["collection"] == POST]

    @property
    def blobs(self) -> list[dict[str, Any]]:
        """Blobs uploaded: did, cid, mimeType, size (not the bytes; see ``blob_bytes``)."""
        with self.lock:
            return [
                {"did": did, "cid": cid, "mimeType": b["mimeType"], "size": b["size"]}
                for (did, cid), b in self._blobs.items()
            ]

    def blob_bytes(self, did: str, cid: str) -> bytes:
        with self.lock:
            return bytes(self._blobs[(did, cid)]["data"])

    # ---------------------------------------------------------------- AppView listener
    def start_appview(self, port: int = 0) -> str | None:
        """Serve the AppView's endpoints on a port of their own too; returns its URL.

        Under a ``refused`` switch only a given port is noted (it opens when healed).
        """
        with self.lock:
            if self._appview and self._appview.running:
                return self.appview_url
            refused = self._refused()
        if refused:
            if port:
                self.appview_port = port
            return self.appview_url
        runner = ServerThread(self.appview_asgi, self.host, port or self.appview_port or 0, "bluesky-appview")
        runner.start()
        with self.lock:
            self._appview, self.appview_port = runner, runner.port
        return self.appview_url

    def stop_appview(self) -> None:
        """Stop the AppView listener for good (``heal`` will not bring it back)."""
        self._stop_appview_listener()
        self.appview_port = None

    @property
    def appview_url(self) -> str | None:
        if self.appview_port is None:
            return None
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.appview_port}"

    @property
    def appview_running(self) -> bool:
        return bool(self._appview and self._appview.running)

    def _stop_appview_listener(self) -> None:
        with self.lock:
            runner, self._appview = self._appview, None
        if runner:
            runner.stop()

    def _refused(self) -> bool:
        sw = self._switches.get("feeds")
        return bool(sw and sw.mode == "refused")

    def start(self, host: str = "127.0.0.1", port: int = 0) -> BlueskyFake:
        super().start(host, port)
        if self.appview_port is not None:  # a restart() brings the AppView back with the PDS
            self.start_appview(self.appview_port)
        return self

    def stop(self) -> None:
        super().stop()
        self._stop_appview_listener()

    def _switched(self, sw: Switch, on: bool) -> None:
        if sw.mode != "refused":
            return
        if on:
            self._stop_appview_listener()
        elif self.appview_port is not None and self._runner and self._runner.running and not self._closing:
            self.start_appview(self.appview_port)

    def revoke_sessions(self, handle: str) -> None:
        """Revoke every session of an account issued so far (an app password deleted, a logout
        everywhere): its access and refresh tokens answer 401 ``ExpiredToken``, as the PDS does
        for a revoked refresh token; tokens issued afterwards work."""
        account = self._resolve(handle)
        if account is None:
            raise KeyError(handle)
        with self.lock:
            self._revoked_upto[account["did"]] = self._token_seq

    def issue_tokens(self, did: str) -> dict[str, str]:
        """Access and refresh JWTs for an account (as createSession would answer)."""
        now = int(time.time())
        with self.lock:
            self._token_seq += 1
            seq = self._token_seq
        access = {
            "n": seq,
            "scope": "com.atproto.access",
            "sub": did,
            "aud": self.service_did,
            "jti": secrets.token_urlsafe(8),
            "iat": now,
            "exp": int(now + self.access_ttl),
        }
        refresh = {
            "n": seq,
            "scope": "com.atproto.refresh",
            "sub": did,
            "aud": self.service_did,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": int(now + self.refresh_ttl),
        }
        return {
            "accessJwt": self._jwt({"typ": "at+jwt", "alg": "HS256"}, access),
            "refreshJwt": self._jwt({"typ": "refresh+jwt", "alg": "HS256"}, refresh),
        }

    # ---------------------------------------------------------------- FakeService hooks
    def default_status(self, group: str) -> int:
        return 502 if group == "feeds" else 500

    def error_response(self, status: int, sw: Switch | None = None) -> Response:
        return xrpc_error(status, message=sw.message if sw else None)

    def refused_response(self, sw: Switch) -> Response:
        """The PDS's answer when its pipethrough cannot connect to the AppView."""
        return xrpc_error(502, "UpstreamFailure", sw.message)

    def account_key(self, call: Call) -> str:
        """The viewer's DID from the access token (unverified: only picks the accounts a
        ``fraction`` hits), else the ``actor`` asked about, else ""."""
        token = bearer_token(call.request)
        if token:
            try:
                sub = json.loads(_unb64(token.split(".")[1])).get("sub")
            except (ValueError, IndexError, AttributeError):
                sub = None
            if isinstance(sub, str) and sub:
                return sub
        actor = str(call.params.get("actor") or "")
        account = self._resolve(actor)
        return account["did"] if account else actor

    def state(self) -> dict[str, Any]:
        return {**super().state(), "appview_url": self.appview_url, "appview_running": self.appview_running}

    def rate_limit_response(self, retry_after: int, sw: Switch | None = None) -> Response:
        resp = xrpc_error(429, message=sw.message if sw else None)
        resp.headers.update(
            {
                "ratelimit-limit": "3000",
                "ratelimit-remaining": "0",
                "ratelimit-reset": str(retry_at(retry_after)),
                "ratelimit-policy": RATE_POLICY,
                "retry-after": str(retry_after),
            }
        )
        return resp

    def decorate(self, call: Call, response: Response) -> Response:
        if response.status_code != 429:
            response.headers.setdefault("ratelimit-limit", "3000")
            response.headers.setdefault("ratelimit-remaining", "2999")
            response.headers.setdefault("ratelimit-reset", str(retry_at(300)))
            response.headers.setdefault("ratelimit-policy", RATE_POLICY)
        return response

    def counts(self) -> dict[str, int]:
        return {
            "accounts": len(self._accounts),
            "posts": sum(1 for r in self._records.values() if r["collection"] == POST),
            "records": len(self._records),
            "blobs": len(self._blobs),
            "session_creations": sum(self.session_creations.values()),
        }

    def items(self) -> list[dict[str, Any]]:
        return self.posts

    def setup_actions(self) -> dict[str, Any]:
        def set_access_ttl(seconds: float) -> float:
            self.access_ttl = float(seconds)
            return self.access_ttl

        def set_unknown_feeds(uris: list[str]) -> list[str]:
            self.set_unknown_feeds(uris)
            return sorted(self.unknown_feeds)

        return {
            "add_account": self.add_account,
            "set_unknown_feeds": set_unknown_feeds,
            "revoke_sessions": self.revoke_sessions,
            "set_access_ttl": set_access_ttl,
            "start_appview": self.start_appview,
        }

    def set_unknown_feeds(self, uris: list[str] | set[str]) -> None:
        """Make these feed generators absent from this network (e.g. no Discover on a PDS of one's
        own): ``getFeed`` answers 400 ``UnknownFeed``, as the real AppView does. Empty: all back."""
        with self.lock:
            self.unknown_feeds = set(uris)

    def _clear(self) -> None:
        self.unknown_feeds = set()
        self._records.clear()
        self._blobs.clear()
        self.session_creations.clear()
        self._revoked_upto.clear()
        self.access_ttl = 2 * 3600

    def routes(self):
        q, p = ["GET"], ["POST"]
        table = [
            ("com.atproto.server.describeServer", self.describe_server, q, ()),
            ("com.atproto.server.createSession", self.create_session, p, AUTH),
            ("com.atproto.server.refreshSession", self.refresh_session, p, AUTH),
            ("com.atproto.server.getSession", self.get_session, q, AUTH),
            ("com.atproto.repo.createRecord", self.create_record, p, WRITE),
            ("com.atproto.repo.deleteRecord", self.delete_record, p, WRITE),
            ("com.atproto.repo.uploadBlob", self.upload_blob, p, BLOBS),
            ("com.atproto.repo.getRecord", self.get_record, q, ()),
            ("com.atproto.identity.resolveHandle", self.resolve_handle, q, ()),
            ("app.bsky.actor.getProfile", self.get_profile, q, FEEDS),
            ("app.bsky.feed.getTimeline", self.get_timeline, q, FEEDS),
            ("app.bsky.feed.getAuthorFeed", self.get_author_feed, q, FEEDS),
            ("app.bsky.feed.getFeed", self.get_feed, q, FEEDS),
        ]
        routes = [
            self.endpoint(f"/xrpc/{nsid}", handler, methods, groups, nsid)
            for nsid, handler, methods, groups in table
        ]
        routes.append(
            self.endpoint(
                "/xrpc/{nsid}",
                lambda call: xrpc_error(501),
                ["GET", "POST"],
                lambda r: FEEDS if r.path_params["nsid"].startswith("app.bsky.") else (),
                lambda r: r.path_params["nsid"],
            )
        )
        return routes

    def appview_routes(self) -> list[Route]:
        """The AppView's own listener: the ``feeds`` endpoints, reads public but the timeline."""
        q = ["GET"]
        table = [
            ("app.bsky.actor.getProfile", self.appview_profile),
            ("app.bsky.feed.getTimeline", self.get_timeline),
            ("app.bsky.feed.getAuthorFeed", self.appview_author_feed),
            ("app.bsky.feed.getFeed", self.appview_feed),
        ]
        routes = [self.endpoint(f"/xrpc/{nsid}", handler, q, FEEDS, nsid) for nsid, handler in table]
        routes.append(
            self.endpoint(
                "/xrpc/{nsid}",
                lambda call: xrpc_error(501),
                ["GET", "POST"],
                FEEDS,
                lambda r: r.path_params["nsid"],
            )
        )
        return routes

    # ---------------------------------------------------------------- tokens
    def _jwt(self, header: dict[str, Any], payload: dict[str, Any]) -> str:
        signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
        sig = hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(sig)

    def _verify(self, call: Call, scope: str) -> dict[str, Any]:
        token = bearer_token(call.request)
        if token is None:
            raise fail(401, "AuthenticationRequired", "Authentication Required")
        try:
            head, body, sig = token.split(".")
            expected = hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(sig)):
                raise ValueError("bad signature")
            payload = json.loads(_unb64(body))
        except ValueError as exc:
            raise fail(400, "InvalidToken", "Token could not be verified") from exc
        if payload.get("scope") != scope:
            message = "Invalid token type" if "refresh" in scope else "Bad token scope"
            raise fail(400, "InvalidToken", message)
        if payload.get("exp", 0) <= time.time():
            raise fail(400, "ExpiredToken", "Token has expired")
        with self.lock:
            account = self._accounts.get(payload.get("sub"))
            revoked = int(payload.get("n") or 0) <= self._revoked_upto.get(str(payload.get("sub")), 0)
        if account is None:
            raise fail(400, "AccountNotFound", "Account not found")
        if revoked:
            raise fail(401, "ExpiredToken", "Token has been revoked")
        return account

    def _auth(self, call: Call) -> dict[str, Any]:
        return self._verify(call, "com.atproto.access")

    def _resolve(self, actor: str | None) -> dict[str, Any] | None:
        if not actor:
            return None
        with self.lock:
            if actor in self._accounts:
                return self._accounts[actor]
            actor = actor.lower().lstrip("@")
            return next((a for a in self._accounts.values() if a["handle"] == actor), None)

    @staticmethod
    def _session_body(account: dict[str, Any]) -> dict[str, Any]:
        return {"handle": account["handle"], "did": account["did"], "active": True}

    # ---------------------------------------------------------------- com.atproto.server
    def describe_server(self, call: Call) -> Response:
        return JSONResponse(
            {
                "did": self.service_did,
                "availableUserDomains": [".test"],
                "inviteCodeRequired": False,
                "links": {},
                "contact": {},
            }
        )

    def create_session(self, call: Call) -> Response:
        params = call.body if isinstance(call.body, dict) else {}
        identifier = str(params.get("identifier") or "")
        account = self._resolve(identifier)
        key = account["handle"] if account else identifier.lower()
        with self.lock:
            self.session_creations[key] = self.session_creations.get(key, 0) + 1
        if not identifier or "password" not in params:
            raise fail(400, "InvalidRequest", 'Input must have the property "identifier"')
        if account is None or not hmac.compare_digest(str(params.get("password")), account["password"]):
            raise fail(401, "AuthenticationRequired", "Invalid identifier or password")
        return JSONResponse({**self.issue_tokens(account["did"]), **self._session_body(account)})

    def refresh_session(self, call: Call) -> Response:
        account = self._verify(call, "com.atproto.refresh")
        return JSONResponse({**self.issue_tokens(account["did"]), **self._session_body(account)})

    def get_session(self, call: Call) -> Response:
        return JSONResponse(self._session_body(self._auth(call)))

    # ---------------------------------------------------------------- com.atproto.repo
    def create_record(self, call: Call) -> Response:
        account = self._auth(call)
        data = call.body if isinstance(call.body, dict) else {}
        repo, collection, record = data.get("repo"), data.get("collection"), data.get("record")
        if not repo or not collection or not isinstance(record, dict):
            raise fail(400, "InvalidRequest", "Input must have the properties repo, collection, record")
        if self._resolve(repo) is not account:
            raise fail(400, "InvalidRequest", "Invalid repo")
        rkey = data.get("rkey")
        if collection == POST:
            if rkey is not None and not TID_RE.match(str(rkey)):
                raise fail(400, "InvalidRequest", "Invalid TID string")
            text = record.get("text")
            if not isinstance(text, str):
                raise fail(400, "InvalidRequest", 'Record must have the property "text"')
            if len(regex.findall(r"\X", text)) > MAX_GRAPHEMES:
                raise fail(
                    400, "InvalidRequest", f"Record/text must not be longer than {MAX_GRAPHEMES} graphemes"
                )
            if record.get("embed") is not None:
                self._check_embed(account["did"], record["embed"])
        record = {"$type": collection, **record}
        with self.lock:
            rkey = str(rkey) if rkey is not None else self._tids.next()
            key = (account["did"], collection, rkey)
            if key in self._records:
                raise fail(500, "InternalServerError", "Internal Server Error")
            self._seq += 1
            uri = f"at://{account['did']}/{collection}/{rkey}"
            cid = make_cid(record)
            self._records[key] = {
                "uri": uri,
                "cid": cid,
                "rkey": rkey,
                "did": account["did"],
                "handle": account["handle"],
                "collection": collection,
                "record": record,
                "indexedAt": now_iso(),
                "seq": self._seq,
            }
        commit = {"cid": make_cid([uri, self._seq]), "rev": self._tids.next()}
        return JSONResponse({"uri": uri, "cid": cid, "commit": commit, "validationStatus": "valid"})

    def upload_blob(self, call: Call) -> Response:
        """Store the body as a blob of this account; the PDS sniffs the type from the bytes."""
        account = self._auth(call)
        data = call.raw
        if not data:
            raise fail(400, "InvalidRequest", "Request body is empty")
        if len(data) > MAX_UPLOAD_BYTES:
            raise fail(413, "PayloadTooLarge", "request entity too large")
        declared = call.request.headers.get("content-type", "").split(";")[0].strip().lower()
        mime = sniff_image(data) or (
            declared if declared and "*" not in declared else "application/octet-stream"
        )
        cid = blob_cid(data)
        with self.lock:
            self._blobs[(account["did"], cid)] = {"mimeType": mime, "size": len(data), "data": data}
        return JSONResponse(
            {"blob": {"$type": "blob", "ref": {"$link": cid}, "mimeType": mime, "size": len(data)}}
        )

    def _check_blob(self, did: str, blob: Any, where: str) -> None:
        """A blob ref as the lexicon has it, to a blob this repo uploaded: an image, <= 1 MB."""
        link = (
            blob.get("ref", {}).get("$link")
            if isinstance(blob, dict) and isinstance(blob.get("ref"), dict)
            else None
        )
        if not isinstance(blob, dict) or blob.get("$type") != "blob" or not isinstance(link, str):
            raise fail(
                400, "InvalidRequest", f"Invalid app.bsky.feed.post record: {where} should be a blob ref"
            )
        with self.lock:
            stored = self._blobs.get((did, link))
        if stored is None:
            raise fail(400, "InvalidRequest", f"Could not find blob: {link}")
        if not str(stored["mimeType"]).startswith("image/") or blob.get("mimeType") != stored["mimeType"]:
            raise fail(
                400, "InvalidRequest", f"Invalid app.bsky.feed.post record: {where} has a wrong mimeType"
            )
        if stored["size"] > MAX_IMAGE_BYTES:
            raise fail(
                400,
                "InvalidRequest",
                f"Invalid app.bsky.feed.post record: {where} file too large "
                f"({stored['size']} > {MAX_IMAGE_BYTES})",
            )

    def _check_embed(self, did: str, embed: Any) -> None:
        """``app.bsky.embed.images`` and ``app.bsky.embed.external`` as their lexicons say."""
        bad = "Invalid app.bsky.feed.post record: "
        kind = embed.get("$type") if isinstance(embed, dict) else None
        if kind == EMBED_IMAGES:
            images = embed.get("images")
            if not isinstance(images, list) or not images:
                raise fail(400, "InvalidRequest", bad + "Record/embed/images must be a non-empty array")
            if len(images) > MAX_IMAGES:
                raise fail(
                    400,
                    "InvalidRequest",
                    bad + f"Record/embed/images must not have more than {MAX_IMAGES} elements",
                )
            for i, image in enumerate(images):
                where = f"Record/embed/images/{i}"
                if not isinstance(image, dict) or not isinstance(image.get("alt"), str):
                    raise fail(400, "InvalidRequest", bad + f'{where} must have the property "alt"')
                self._check_blob(did, image.get("image"), f"{where}/image")
                ratio = image.get("aspectRatio")
                if ratio is not None and not (
                    isinstance(ratio, dict)
                    and all(isinstance(ratio.get(k), int) and ratio[k] >= 1 for k in ("width", "height"))
                ):
                    raise fail(
                        400,
                        "InvalidRequest",
                        bad + f"{where}/aspectRatio needs integer width and height >= 1",
                    )
        elif kind == EMBED_EXTERNAL:
            external = embed.get("external")
            if not isinstance(external, dict):
                raise fail(400, "InvalidRequest", bad + 'Record/embed must have the property "external"')
            for key in ("uri", "title", "description"):
                if not isinstance(external.get(key), str):
                    raise fail(
                        400, "InvalidRequest", bad + f'Record/embed/external must have the property "{key}"'
                    )
            if external.get("thumb") is not None:
                self._check_blob(did, external["thumb"], "Record/embed/external/thumb")
        elif not isinstance(kind, str):
            raise fail(400, "InvalidRequest", bad + 'Record/embed must have the property "$type"')

    def get_record(self, call: Call) -> Response:
        self._auth(call)
        params = call.params
        repo = params.get("repo")
        account = self._resolve(repo)
        collection, rkey = params.get("collection"), params.get("rkey")
        if not repo or not collection or not rkey:
            raise fail(400, "InvalidRequest", "Params must have the properties repo, collection, rkey")
        did = account["did"] if account else repo
        uri = f"at://{did}/{collection}/{rkey}"
        with self.lock:
            rec = self._records.get((did, collection, rkey))
        if rec is None or (params.get("cid") and params["cid"] != rec["cid"]):
            raise fail(400, "RecordNotFound", f"Could not locate record: {uri}")
        return JSONResponse({"uri": rec["uri"], "cid": rec["cid"], "value": rec["record"]})

    def delete_record(self, call: Call) -> Response:
        account = self._auth(call)
        data = call.body if isinstance(call.body, dict) else {}
        if self._resolve(data.get("repo")) is not account:
            raise fail(400, "InvalidRequest", "Invalid repo")
        with self.lock:
            self._records.pop((account["did"], data.get("collection"), data.get("rkey")), None)
            self._seq += 1
        return JSONResponse({"commit": {"cid": make_cid(["del", self._seq]), "rev": self._tids.next()}})

    # ---------------------------------------------------------------- app.bsky (AppView)
    def resolve_handle(self, call: Call) -> Response:
        """Handle -> DID, as the PDS answers it (no auth); unknown handles are 400 InvalidRequest."""
        account = self._resolve(call.params.get("handle"))
        if account is None:
            raise fail(400, "InvalidRequest", "Unable to resolve handle")
        return JSONResponse({"did": account["did"]})

    def get_profile(self, call: Call) -> Response:
        self._auth(call)
        return self._profile(call)

    def appview_profile(self, call: Call) -> Response:
        self._optional_auth(call)
        return self._profile(call)

    def _optional_auth(self, call: Call) -> None:
        """Public AppView reads: no token is fine, a bad one is not."""
        if call.request.headers.get("authorization"):
            self._auth(call)

    def _profile(self, call: Call) -> Response:
        account = self._resolve(call.params.get("actor"))
        if account is None:
            raise fail(400, "InvalidRequest", "Profile not found")
        with self.lock:
            n_posts = sum(
                1 for r in self._records.values() if r["collection"] == POST and r["did"] == account["did"]
            )
        return JSONResponse(
            {
                **self._author(account),
                "description": "",
                "followersCount": 0,
                "followsCount": 0,
                "postsCount": n_posts,
                "indexedAt": account["created_at"],
                "createdAt": account["created_at"],
                "labels": [],
            }
        )

    def get_timeline(self, call: Call) -> Response:
        self._auth(call)
        return self._feed_page(call.params, None)

    def get_author_feed(self, call: Call) -> Response:
        self._auth(call)
        return self._author_feed(call)

    def appview_author_feed(self, call: Call) -> Response:
        self._optional_auth(call)
        return self._author_feed(call)

    def _author_feed(self, call: Call) -> Response:
        account = self._resolve(call.params.get("actor"))
        if account is None:
            raise fail(400, "InvalidRequest", "Profile not found")
        return self._feed_page(call.params, account["did"])

    def get_feed(self, call: Call) -> Response:
        self._auth(call)
        return self._feed(call)

    def appview_feed(self, call: Call) -> Response:
        self._optional_auth(call)
        return self._feed(call)

    def _feed(self, call: Call) -> Response:
        if not str(call.params.get("feed", "")).startswith("at://"):
            raise fail(400, "InvalidRequest", 'Error: Params must have the property "feed"')
        if call.params.get("feed") in self.unknown_feeds:
            raise fail(400, "UnknownFeed", "could not find feed")
        return self._feed_page(call.params, None)

    def _feed_page(self, params: dict[str, Any], did: str | None) -> Response:
        try:
            limit = int(params.get("limit") or 50)
            cursor = int(params["cursor"]) if params.get("cursor") else None
        except ValueError as exc:
            raise fail(400, "InvalidRequest", "Malformed cursor or limit") from exc
        if not 1 <= limit <= 100:
            raise fail(400, "InvalidRequest", "limit must be between 1 and 100")
        with self.lock:
            posts = sorted(
                (
                    r
                    for r in self._records.values()
                    if r["collection"] == POST
                    and (did is None or r["did"] == did)
                    and (cursor is None or r["seq"] < cursor)
                ),
                key=lambda r: r["seq"],
                reverse=True,
            )
            page = posts[:limit]
            feed = [{"post": self._post_view(r)} for r in page]
        body: dict[str, Any] = {"feed": feed}
        if len(posts) > limit:
            body["cursor"] = str(page[-1]["seq"])
        return JSONResponse(body)

    def _author(self, account: dict[str, Any]) -> dict[str, Any]:
        return {
            "did": account["did"],
            "handle": account["handle"],
            "displayName": account["display_name"],
        }

    def _post_view(self, r: dict[str, Any]) -> dict[str, Any]:
        account = self._accounts.get(r["did"]) or {
            "did": r["did"],
            "handle": r["handle"],
            "display_name": "",
        }
        return {
            "uri": r["uri"],
            "cid": r["cid"],
            "author": self._author(account),
            "record": r["record"],
            "indexedAt": r["indexedAt"],
            "replyCount": 0,
            "repostCount": 0,
            "likeCount": 0,
            "quoteCount": 0,
            "labels": [],
        }

    @staticmethod
    def _post_view_dict(r: dict[str, Any]) -> dict[str, Any]:
        record = r["record"]
        return {
            "uri": r["uri"],
            "cid": r["cid"],
            "rkey": r["rkey"],
            "did": r["did"],
            "handle": r["handle"],
            "text": record.get("text"),
            "facets": record.get("facets"),
            "createdAt": record.get("createdAt"),
            "record": json.loads(json.dumps(record)),
            "indexedAt": r["indexedAt"],
        }
