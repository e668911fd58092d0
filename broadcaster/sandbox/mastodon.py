"""Fake Mastodon 4.3 instance (REST API under ``/api/v1`` and ``/api/v2``).

Imitates these real endpoints (shapes from the Mastodon OpenAPI spec):

* ``POST /api/v1/statuses`` (form or JSON; Bearer token; ``Idempotency-Key`` dedupe per
  account; 422 for blank text or over ``max_characters``, counted like Mastodon: grapheme
  clusters, each URL as ``characters_reserved_per_url``, remote mentions by local part,
  plus the content warning)
* ``POST /api/v2/media`` (multipart ``file`` and ``description``): 202 with ``url: null``
  while the attachment is processed; ``GET /api/v1/media/:id`` answers 206 until
  ``processing_s`` seconds have passed (asynchronously, as Mastodon's workers do), then 200 with
  the ``url``. 422 for a file that is not an image or a description over 1,500 characters.
* ``media_ids`` on ``POST /api/v1/statuses``: at most 4, each the account's own, processed
  (else 422 "Cannot attach files that have not finished processing") and not attached yet
* ``GET /api/v1/statuses/:id``, ``GET /api/v1/accounts/verify_credentials``
* ``GET /api/v1/instance`` and ``GET /api/v2/instance`` (``version`` 4.3.0, limits)

Every answer carries ``X-RateLimit-Limit/Remaining/Reset``. Failure groups: ``statuses``
(POST /api/v1/statuses), ``media`` (POST /api/v2/media, GET /api/v1/media/:id) and ``all``;
the default error is 503.
"""

from __future__ import annotations

import html
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, overload

import regex
from starlette.responses import JSONResponse, Response

from .server import Call, FakeService, HTTPFailure, Switch, bearer_token, sniff_image

VERSION = "4.3.0"
URL_RESERVED = 23
RATE_LIMIT = 300
RATE_WINDOW = 300  # seconds
IDEMPOTENCY_TTL = 3600
VISIBILITIES = ("public", "unlisted", "private", "direct")
URL_RE = regex.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:!?)\]'}]")
REMOTE_MENTION_RE = regex.compile(r"(@[\w.]+)@[\w.-]+\w")
MAX_MEDIA = 4
MAX_DESCRIPTION = 1500  # MediaAttachment::MAX_DESCRIPTION_LENGTH
PROCESSING_S = 0.3  # default time an upload takes to process
TAG_RE = regex.compile(r"(?<![\w/])#(\w*[^\W\d]\w*)")

MESSAGES = {
    401: "The access token is invalid",
    404: "Record not found",
    422: "Validation failed",
    429: "Too many requests",
    500: "We're sorry, but something went wrong on our end.",
    502: "Bad Gateway",
    503: "There was a temporary problem serving your request, please try again",
    504: "Gateway Timeout",
}


def error(status: int, message: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message or MESSAGES.get(status, "Error")}, status_code=status)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def countable_length(text: str) -> int:
    """Mastodon's StatusLengthValidator: URLs count 23, remote mentions by local part."""
    text = URL_RE.sub("x" * URL_RESERVED, text)
    text = REMOTE_MENTION_RE.sub(r"\1", text)
    return len(regex.findall(r"\X", text))


def to_html(text: str) -> str:
    """Plain text to Mastodon-style HTML: paragraphs, <br />, linked URLs, escaped."""
    paragraphs = [p for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    out = []
    for para in paragraphs:
        pieces, last = [], 0
        for m in URL_RE.finditer(para):
            pieces.append(html.escape(para[last : m.start()], quote=False))
            url = html.escape(m.group(0))
            pieces.append(
                f'<a href="{url}" target="_blank" rel="nofollow noopener noreferrer" translate="no">{url}</a>'
            )
            last = m.end()
        pieces.append(html.escape(para[last:], quote=False))
        out.append("<p>" + "".join(pieces).replace("\n", "<br />") + "</p>")
    return "".join(out)


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


class MastodonFake(FakeService):
    name = "mastodon"
    groups = ("statuses", "media", "all")

    def __init__(self) -> None:
        self.max_characters = 500
        self.processing_s = PROCESSING_S
        self._media: dict[str, dict[str, Any]] = {}  # id -> attachment (and its owner, ready time)
        self._tokens: dict[str, dict[str, Any]] = {}  # token -> account
        self._accounts: dict[str, dict[str, Any]] = {}  # username -> account
        self._statuses: dict[str, dict[str, Any]] = {}  # id -> stored status
        self._per_account: dict[str, int] = {}  # account id -> statuses (constant-time reads)
        self._idempotency: dict[tuple[str, str], tuple[str, float]] = {}
        self._windows: dict[str, tuple[float, int]] = {}
        self._id_lock = threading.Lock()
        self._last_id = 0
        super().__init__()

    # ---------------------------------------------------------------- public helpers
    def add_token(self, token: str, username: str = "brand") -> dict[str, Any]:
        """Make ``token`` a valid access token of account ``username``; returns the account."""
        with self.lock:
            account = self._accounts.get(username)
            if account is None:
                account = {
                    "id": str(110_000_000_000_000_000 + len(self._accounts) + 1),
                    "username": username,
                    "created_at": iso(datetime.now(UTC)),
                }
                self._accounts[username] = account
            self._tokens[token] = account
            return dict(account)

    @property
    def statuses(self) -> list[dict[str, Any]]:
        """Statuses created, in creation order (copies)."""
        with self.lock:
            return [dict(s["item"]) for s in self._statuses.values()]

    @property
    def media(self) -> list[dict[str, Any]]:
        """Media uploaded, in order: id, account_id, description, mime, size, status_id."""
        with self.lock:
            return [{k: v for k, v in m.items() if k != "data"} for m in self._media.values()]

    # ---------------------------------------------------------------- FakeService hooks
    def default_status(self, group: str) -> int:
        return 503

    def error_response(self, status: int, sw: Switch | None = None) -> Response:
        return error(status, sw.message if sw else None)

    def rate_limit_response(self, retry_after: int, sw: Switch | None = None) -> Response:
        reset = datetime.now(UTC) + timedelta(seconds=retry_after)
        resp = error(429, sw.message if sw else None)
        resp.headers.update(
            {
                "X-RateLimit-Limit": str(RATE_LIMIT),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": iso(reset),
                "Retry-After": str(retry_after),
            }
        )
        return resp

    def decorate(self, call: Call, response: Response) -> Response:
        if "x-ratelimit-limit" in response.headers:
            return response
        key = bearer_token(call.request) or f"ip:{call.request.client.host if call.request.client else ''}"
        now = time.time()
        with self.lock:
            start, used = self._windows.get(key, (now, 0))
            if now - start >= RATE_WINDOW:
                start, used = now, 0
            used += 1
            self._windows[key] = (start, used)
        reset = datetime.fromtimestamp(start + RATE_WINDOW, UTC)
        response.headers["X-RateLimit-Limit"] = str(RATE_LIMIT)
        response.headers["X-RateLimit-Remaining"] = str(max(0, RATE_LIMIT - used))
        response.headers["X-RateLimit-Reset"] = iso(reset)
        return response

    def counts(self) -> dict[str, int]:
        return {
            "accounts": len(self._accounts),
            "tokens": len(self._tokens),
            "statuses": len(self._statuses),
            "media": len(self._media),
        }

    def items(self) -> list[dict[str, Any]]:
        return self.statuses

    def setup_actions(self) -> dict[str, Any]:
        def set_max_characters(value: int) -> int:
            self.max_characters = int(value)
            return self.max_characters

        def set_processing_s(value: float) -> float:
            self.processing_s = float(value)
            return self.processing_s

        return {
            "add_token": self.add_token,
            "set_max_characters": set_max_characters,
            "set_processing_s": set_processing_s,
        }

    def _clear(self) -> None:
        self._statuses.clear()
        self._media.clear()
        self.processing_s = PROCESSING_S
        self._per_account.clear()
        self._idempotency.clear()
        self._windows.clear()
        self.max_characters = 500

    def routes(self):
        return [
            self.endpoint("/api/v1/statuses", self.post_status, ["POST"], ("statuses",), "statuses.create"),
            self.endpoint("/api/v1/statuses/{id}", self.get_status, ["GET"], (), "statuses.get"),
            self.endpoint("/api/v2/media", self.post_media, ["POST"], ("media",), "media.create"),
            self.endpoint("/api/v1/media/{id}", self.get_media, ["GET"], ("media",), "media.get"),
            self.endpoint(
                "/api/v1/accounts/verify_credentials",
                self.verify_credentials,
                ["GET"],
                (),
                "accounts.verify_credentials",
            ),
            self.endpoint("/api/v1/instance", self.instance_v1, ["GET"], (), "instance.v1"),
            self.endpoint("/api/v2/instance", self.instance_v2, ["GET"], (), "instance.v2"),
            self.endpoint(
                "/api/{rest:path}", lambda call: error(404), ["GET", "POST", "PUT", "DELETE"], (), "unknown"
            ),
        ]

    # ---------------------------------------------------------------- helpers
    @overload
    def _auth(self, call: Call, required: Literal[True] = True) -> dict[str, Any]: ...
    @overload
    def _auth(self, call: Call, required: bool) -> dict[str, Any] | None: ...

    def _auth(self, call: Call, required: bool = True) -> dict[str, Any] | None:
        token = bearer_token(call.request)
        if token is None and not required:
            return None
        with self.lock:
            account = self._tokens.get(token or "")
        if account is None:
            raise HTTPFailure(error(401))
        return account

    def _next_id(self) -> str:
        with self._id_lock:
            candidate = (int(time.time() * 1000) << 16) + 1
            self._last_id = max(candidate, self._last_id + 1)
            return str(self._last_id)

    def _base(self, call: Call) -> str:
        return f"{call.request.url.scheme}://{call.request.url.netloc}"

    def _account_json(self, call: Call, account: dict[str, Any], statuses: int = 0) -> dict[str, Any]:
        base = self._base(call)
        avatar = f"{base}/avatars/original/missing.png"
        return {
            "id": account["id"],
            "username": account["username"],
            "acct": account["username"],
            "display_name": account["username"].title(),
            "locked": False,
            "bot": False,
            "discoverable": True,
            "indexable": True,
            "group": False,
            "created_at": account["created_at"],
            "note": "",
            "url": f"{base}/@{account['username']}",
            "uri": f"{base}/users/{account['username']}",
            "avatar": avatar,
            "avatar_static": avatar,
            "header": f"{base}/headers/original/missing.png",
            "header_static": f"{base}/headers/original/missing.png",
            "followers_count": 0,
            "following_count": 0,
            "statuses_count": statuses,
            "last_status_at": None,
            "emojis": [],
            "fields": [],
        }

    def _status_json(self, call: Call, stored: dict[str, Any]) -> dict[str, Any]:
        item, account = stored["item"], stored["account"]
        base = self._base(call)
        with self.lock:
            n = self._per_account.get(account["id"], 0)
            parent = self._statuses.get(item["in_reply_to_id"] or "")
            attached = [dict(self._media[m]) for m in item.get("media_ids", []) if m in self._media]
        return {
            "id": item["id"],
            "uri": f"{base}/users/{account['username']}/statuses/{item['id']}",
            "url": f"{base}/@{account['username']}/{item['id']}",
            "created_at": stored["created_at"],
            "edited_at": None,
            "account": self._account_json(call, account, n),
            "content": to_html(item["text"]),
            "visibility": item["visibility"],
            "sensitive": item["sensitive"],
            "spoiler_text": item["spoiler_text"],
            "media_attachments": [self._media_json(call, m) for m in attached],
            "application": {"name": "Sandbox", "website": None},
            "mentions": [],
            "tags": [
                {"name": t.lower(), "url": f"{base}/tags/{t.lower()}"} for t in TAG_RE.findall(item["text"])
            ],
            "emojis": [],
            "reblogs_count": 0,
            "favourites_count": 0,
            "replies_count": 0,
            "quotes_count": 0,
            "in_reply_to_id": item["in_reply_to_id"],
            "in_reply_to_account_id": parent["account"]["id"] if parent else None,
            "reblog": None,
            "poll": None,
            "card": None,
            "language": item["language"],
            "favourited": False,
            "reblogged": False,
            "muted": False,
            "bookmarked": False,
            "pinned": False,
            "filtered": [],
        }

    # ---------------------------------------------------------------- endpoints
    def post_status(self, call: Call) -> Response:
        account = self._auth(call)
        p = call.body if isinstance(call.body, dict) else {}
        key = call.request.headers.get("idempotency-key")
        now = time.time()
        if key:
            with self.lock:
                hit = self._idempotency.get((account["id"], key))
                if hit and now - hit[1] < IDEMPOTENCY_TTL and hit[0] in self._statuses:
                    return JSONResponse(self._status_json(call, self._statuses[hit[0]]))
        text = str(p.get("status") or "")
        spoiler = str(p.get("spoiler_text") or "")
        visibility = str(p.get("visibility") or "public")
        reply_to = p.get("in_reply_to_id") or None
        if not text.strip() and not self._media_ids(p):
            raise HTTPFailure(error(422, "Validation failed: Text can't be blank"))
        if visibility not in VISIBILITIES:
            raise HTTPFailure(error(422, "Validation failed: Visibility is not included in the list"))
        if countable_length(text) + countable_length(spoiler) > self.max_characters:
            raise HTTPFailure(
                error(422, f"Validation failed: Text character limit of {self.max_characters} exceeded")
            )
        media_ids = self._media_ids(p)
        with self.lock:
            if reply_to is not None and str(reply_to) not in self._statuses:
                raise HTTPFailure(error(404))
            self._check_attachable(account, media_ids)
            status_id = self._next_id()
            for media_id in media_ids:
                self._media[media_id]["status_id"] = status_id
            item = {
                "id": status_id,
                "text": text,
                "visibility": visibility,
                "spoiler_text": spoiler,
                "sensitive": _truthy(p.get("sensitive", False)) or bool(spoiler),
                "language": p.get("language") or "en",
                "in_reply_to_id": str(reply_to) if reply_to is not None else None,
                "media_ids": media_ids,
                "idempotency_key": key,
                "token": bearer_token(call.request),
            }
            stored = {"item": item, "account": account, "created_at": iso(datetime.now(UTC))}
            self._statuses[status_id] = stored
            self._per_account[account["id"]] = self._per_account.get(account["id"], 0) + 1
            if key:
                self._idempotency[(account["id"], key)] = (status_id, now)
        return JSONResponse(self._status_json(call, stored))

    @staticmethod
    def _media_ids(p: dict[str, Any]) -> list[str]:
        raw = p.get("media_ids[]", p.get("media_ids")) or []
        return [str(m) for m in (raw if isinstance(raw, list) else [raw]) if str(m)]

    def _check_attachable(self, account: dict[str, Any], media_ids: list[str]) -> None:
        """As Mastodon: at most 4, the account's own and unattached, and processed."""
        if len(media_ids) > MAX_MEDIA:
            raise HTTPFailure(error(422, f"Cannot attach more than {MAX_MEDIA} files"))
        missing = [
            m
            for m in media_ids
            if m not in self._media
            or self._media[m]["account_id"] != account["id"]
            or self._media[m]["status_id"] is not None
        ]
        if missing:
            raise HTTPFailure(
                error(422, f"Media {', '.join(missing)} not found or already attached to another post")
            )
        if any(time.monotonic() < self._media[m]["ready_at"] for m in media_ids):
            raise HTTPFailure(
                error(422, "Cannot attach files that have not finished processing. Try again in a moment!")
            )

    def _media_json(self, call: Call, m: dict[str, Any], processing: bool = False) -> dict[str, Any]:
        base = self._base(call)
        ext = m["mime"].split("/")[-1]
        path = f"/system/media_attachments/files/{m['id']}"
        return {
            "id": m["id"],
            "type": "gifv" if m["mime"] == "image/gif" else "image",
            "url": None if processing else f"{base}{path}/original/{m['id']}.{ext}",
            "preview_url": f"{base}{path}/small/{m['id']}.{ext}",
            "remote_url": None,
            "text_url": None,
            "meta": {},
            "description": m["description"],
            "blurhash": None,
        }

    def post_media(self, call: Call) -> Response:
        """Media upload v2: accepted at once, processed after ``processing_s`` (202, url null)."""
        account = self._auth(call)
        upload = call.files.get("file")
        if upload is None:
            raise HTTPFailure(error(422, "Validation failed: File can't be blank"))
        mime = sniff_image(upload.data)
        if mime is None:
            raise HTTPFailure(error(422, "Validation failed: File content type is invalid, File is invalid"))
        p = call.body if isinstance(call.body, dict) else {}
        description = str(p.get("description") or "")
        if len(description) > MAX_DESCRIPTION:
            raise HTTPFailure(
                error(
                    422,
                    f"Validation failed: Description is too long (maximum is {MAX_DESCRIPTION} characters)",
                )
            )
        with self.lock:
            media_id = self._next_id()
            m = {
                "id": media_id,
                "account_id": account["id"],
                "description": description,
                "mime": mime,
                "size": len(upload.data),
                "status_id": None,
                "ready_at": time.monotonic() + self.processing_s,
            }
            self._media[media_id] = m
        ready = self.processing_s <= 0
        return JSONResponse(
            self._media_json(call, m, processing=not ready), status_code=200 if ready else 202
        )

    def get_media(self, call: Call) -> Response:
        """206 (url null) while processing, then 200 with the url; only the owner sees it."""
        account = self._auth(call)
        with self.lock:
            m = self._media.get(call.request.path_params["id"])
        if m is None or m["account_id"] != account["id"]:
            raise HTTPFailure(error(404))
        processing = time.monotonic() < m["ready_at"]
        return JSONResponse(self._media_json(call, m, processing), status_code=206 if processing else 200)

    def get_status(self, call: Call) -> Response:
        self._auth(call, required=False)
        with self.lock:
            stored = self._statuses.get(call.request.path_params["id"])
        if stored is None:
            raise HTTPFailure(error(404))
        return JSONResponse(self._status_json(call, stored))

    def verify_credentials(self, call: Call) -> Response:
        account = self._auth(call)
        with self.lock:
            n = self._per_account.get(account["id"], 0)
        body = self._account_json(call, account, n)
        body["source"] = {
            "privacy": "public",
            "sensitive": False,
            "language": "en",
            "note": "",
            "fields": [],
            "follow_requests_count": 0,
        }
        body["role"] = {"id": "-99", "name": "", "permissions": "0", "color": "", "highlighted": False}
        return JSONResponse(body)

    def _limits(self) -> dict[str, Any]:
        return {
            "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
            "statuses": {
                "max_characters": self.max_characters,
                "max_media_attachments": 4,
                "characters_reserved_per_url": URL_RESERVED,
            },
            "media_attachments": {
                "supported_mime_types": ["image/jpeg", "image/png", "image/gif", "image/webp"],
                "image_size_limit": 16777216,
                "image_matrix_limit": 33177600,
                "video_size_limit": 103809024,
                "video_frame_rate_limit": 120,
                "video_matrix_limit": 8294400,
            },
            "polls": {
                "max_options": 4,
                "max_characters_per_option": 50,
                "min_expiration": 300,
                "max_expiration": 2629746,
            },
        }

    def instance_v1(self, call: Call) -> Response:
        netloc = call.request.url.netloc
        with self.lock:
            stats = {"user_count": len(self._accounts), "status_count": len(self._statuses)}
        return JSONResponse(
            {
                "uri": netloc,
                "title": "Sandbox Mastodon",
                "short_description": "Local fake Mastodon",
                "description": "Local fake Mastodon for tests and demos",
                "email": "admin@example.invalid",
                "version": VERSION,
                "urls": {"streaming_api": f"ws://{netloc}"},
                "stats": {**stats, "domain_count": 1},
                "thumbnail": None,
                "languages": ["en"],
                "registrations": False,
                "approval_required": False,
                "invites_enabled": False,
                "configuration": self._limits(),
                "contact_account": None,
                "rules": [],
            }
        )

    def instance_v2(self, call: Call) -> Response:
        base, netloc = self._base(call), call.request.url.netloc
        with self.lock:
            users = len(self._accounts)
        config = self._limits()
        config["urls"] = {"streaming": f"ws://{netloc}", "status": None}
        config["translation"] = {"enabled": False}
        config["accounts"]["max_display_name_length"] = 30
        return JSONResponse(
            {
                "domain": netloc,
                "title": "Sandbox Mastodon",
                "version": VERSION,
                "source_url": "https://github.com/mastodon/mastodon",
                "description": "Local fake Mastodon for tests and demos",
                "usage": {"users": {"active_month": users}},
                "thumbnail": {"url": f"{base}/packs/media/images/preview.png"},
                "icon": [],
                "languages": ["en"],
                "configuration": config,
                "registrations": {"enabled": False, "approval_required": False, "message": None},
                "api_versions": {"mastodon": 2},
                "contact": {"email": "admin@example.invalid", "account": None},
                "rules": [],
            }
        )
