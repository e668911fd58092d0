"""Fake Telegram Bot API server: ``/bot<token>/<method>`` (GET or POST; form or JSON).

Imitates these real methods (shapes from the Bot API spec, as python-telegram-bot posts):

* ``getMe``: the bot's ``User``
* ``sendMessage``: ``{"ok": true, "result": Message}`` with ``message_id`` increasing per
  chat; ``parse_mode`` HTML / MarkdownV2 / Markdown parsed like Telegram (plain text plus
  UTF-16 ``entities``, see ``telegram_format``), 4096-character limit after parsing,
  "chat not found", blocked chats (403), unknown token (401 -> ``InvalidToken``)
* ``sendPhoto``: ``photo`` as a multipart file (or a file_id / URL string), ``caption`` parsed
  like ``text`` and at most 1,024 characters after parsing ("Bad Request: message caption is
  too long", as the Bot API answers); the Message carries ``photo`` sizes and ``caption``
* ``sendMediaGroup``: ``media`` a JSON array of 2-10 ``InputMediaPhoto`` whose ``media`` is
  ``attach://<part>`` (a file part of the request), a file_id or a URL; each caption as above;
  answers an array of Messages sharing a ``media_group_id``

Errors are ``{"ok": false, "error_code": N, "description": "..."}``. Failure groups: ``send``
(sendMessage, sendPhoto, sendMediaGroup) and ``all``; the default error is 500.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

from starlette.responses import JSONResponse, Response

from .server import Call, FakeService, HTTPFailure, Switch, UploadedFile, image_size, sniff_image
from .telegram_format import EntityParseError, finish, parse_html, parse_markdown, utf16_len

MAX_TEXT = 4096
MAX_CAPTION = 1024
SEND_METHODS = ("sendmessage", "sendphoto", "sendmediagroup")
DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def tg_error(status: int, description: str | None = None, **extra: Any) -> JSONResponse:
    body = {
        "ok": False,
        "error_code": status,
        "description": description or DESCRIPTIONS.get(status, "Error"),
    }
    body.update(extra)
    return JSONResponse(body, status_code=status)


def bad_request(description: str) -> HTTPFailure:
    return HTTPFailure(tg_error(400, f"Bad Request: {description}"))


def _json_param(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as exc:
            raise bad_request("can't parse JSON object") from exc
    return value


def _bool_param(value: Any) -> bool | None:
    if value is None:
        return None
    return str(value).lower() in ("true", "1")


def _parse(raw: str, parse_mode: str | None, given: Any) -> tuple[str, list[dict[str, Any]]]:
    """A text or caption as Telegram parses it: plain text and its UTF-16 entities."""
    try:
        if given is not None:
            text, entities = raw, [dict(e) for e in given]
        elif parse_mode is None:
            text, entities = raw, []
        elif parse_mode.lower() == "html":
            text, entities = parse_html(raw)
        elif parse_mode.lower() == "markdownv2":
            text, entities = parse_markdown(raw, v2=True)
        elif parse_mode.lower() == "markdown":
            text, entities = parse_markdown(raw, v2=False)
        else:
            raise bad_request(f"unsupported parse_mode {parse_mode!r}")
    except EntityParseError as exc:
        raise bad_request(f"can't parse entities: {exc}") from exc
    return finish(text, entities)


class TelegramFake(FakeService):
    name = "telegram"
    groups = ("send", "all")

    def __init__(self) -> None:
        self._bots: dict[str, dict[str, Any]] = {}  # token -> User
        self._chats: dict[int, dict[str, Any]] = {}  # id -> Chat
        self._usernames: dict[str, int] = {}  # "name" (no @, lower) -> id
        self._blocked: set[int] = set()
        self._next_id: dict[int, int] = {}
        self._messages: list[dict[str, Any]] = []
        super().__init__()

    # ---------------------------------------------------------------- public helpers
    def add_bot(
        self, token: str, username: str = "brand_bot", first_name: str | None = None
    ) -> dict[str, Any]:
        """Register a bot token; returns the bot's User object."""
        prefix = token.split(":", 1)[0]
        bot_id = int(prefix) if prefix.isdigit() else int(hashlib.sha256(token.encode()).hexdigest()[:9], 16)
        user = {
            "id": bot_id,
            "is_bot": True,
            "first_name": first_name or username.removesuffix("_bot").replace("_", " ").title() or "Bot",
            "username": username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        with self.lock:
            self._bots[token] = user
        return dict(user)

    def add_chat(
        self,
        chat_id: int | str,
        title: str | None = None,
        type: str | None = None,
        username: str | None = None,
    ) -> dict[str, Any]:
        """Make a chat known. ``"@name"`` makes a channel; an int > 0 a private chat, < 0 a
        group ("-100..." a supergroup). Returns the Chat object."""
        if isinstance(chat_id, str) and chat_id.startswith("@"):
            username = username or chat_id[1:]
            numeric = -(
                1_000_000_000_000 + int(hashlib.sha256(username.lower().encode()).hexdigest()[:8], 16)
            )
            kind = type or "channel"
        else:
            numeric = int(chat_id)
            kind = type or (
                "private" if numeric > 0 else "supergroup" if str(numeric).startswith("-100") else "group"
            )
        chat: dict[str, Any] = {"id": numeric, "type": kind}
        if kind == "private":
            chat["first_name"] = title or "User"
        else:
            chat["title"] = title or (username or f"Chat {numeric}")
        if username:
            chat["username"] = username
        with self.lock:
            self._chats[numeric] = chat
            if username:
                self._usernames[username.lower()] = numeric
        return dict(chat)

    def block_chat(self, chat_id: int | str) -> None:
        """Sending to this chat now answers 403 (bot blocked / not a member)."""
        with self.lock:
            chat = self._find_chat(chat_id)
            if chat is None:
                chat = self.add_chat(chat_id)
            self._blocked.add(chat["id"])

    def unblock_chat(self, chat_id: int | str) -> None:
        with self.lock:
            chat = self._find_chat(chat_id)
            if chat:
                self._blocked.discard(chat["id"])

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Messages sent, in order (copies)."""
        with self.lock:
            return [dict(m) for m in self._messages]

    # ---------------------------------------------------------------- FakeService hooks
    def error_response(self, status: int, sw: Switch | None = None) -> Response:
        return tg_error(status, sw.message if sw else None)

    def rate_limit_response(self, retry_after: int, sw: Switch | None = None) -> Response:
        resp = tg_error(
            429,
            (sw.message if sw and sw.message else f"Too Many Requests: retry after {retry_after}"),
            parameters={"retry_after": retry_after},
        )
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def counts(self) -> dict[str, int]:
        return {"bots": len(self._bots), "chats": len(self._chats), "messages": len(self._messages)}

    def items(self) -> list[dict[str, Any]]:
        return self.messages

    def setup_actions(self) -> dict[str, Any]:
        return {
            "add_bot": self.add_bot,
            "add_chat": self.add_chat,
            "block_chat": self.block_chat,
            "unblock_chat": self.unblock_chat,
        }

    def _clear(self) -> None:
        self._messages.clear()
        self._next_id.clear()
        self._blocked.clear()

    def routes(self):
        return [
            self.endpoint(
                "/bot{token}/{method}",
                self.dispatch,
                ["GET", "POST"],
                lambda r: ("send",) if r.path_params["method"].lower() in SEND_METHODS else (),
                lambda r: r.path_params["method"],
            )
        ]

    # ---------------------------------------------------------------- dispatch
    def _find_chat(self, ref: Any) -> dict[str, Any] | None:
        with self.lock:
            if isinstance(ref, str) and ref.startswith("@"):
                numeric = self._usernames.get(ref[1:].lower())
                return self._chats.get(numeric) if numeric is not None else None
            try:
                return self._chats.get(int(ref))
            except (TypeError, ValueError):
                return None

    def dispatch(self, call: Call) -> Response:
        token = call.request.path_params["token"]
        with self.lock:
            bot = self._bots.get(token)
        if bot is None:
            return tg_error(401)
        method = call.request.path_params["method"].lower()
        if method == "getme":
            return JSONResponse({"ok": True, "result": bot})
        if method == "sendmessage":
            return JSONResponse({"ok": True, "result": self.send_message(call, token, bot)})
        if method == "sendphoto":
            return JSONResponse({"ok": True, "result": self.send_photo(call, token, bot)})
        if method == "sendmediagroup":
            return JSONResponse({"ok": True, "result": self.send_media_group(call, token, bot)})
        return tg_error(404)

    def _chat_for(self, call: Call) -> dict[str, Any]:
        ref = call.params.get("chat_id")
        if ref in (None, ""):
            raise bad_request("chat_id is empty")
        if isinstance(ref, str) and re.fullmatch(r"-?\d+", ref):
            ref = int(ref)
        chat = self._find_chat(ref)
        if chat is None:
            raise bad_request("chat not found")
        if chat["id"] in self._blocked:
            raise HTTPFailure(tg_error(403, self._blocked_description(chat)))
        return chat

    @staticmethod
    def _caption(raw: Any, parse_mode: str | None, given: Any = None) -> tuple[str, list[dict[str, Any]]]:
        """A caption parsed like a message text, at most 1,024 characters after parsing."""
        if raw is None or raw == "":
            return "", []
        text, entities = _parse(str(raw), parse_mode, _json_param(given) if given else None)
        if utf16_len(text) > MAX_CAPTION:
            raise bad_request("message caption is too long")
        return text, entities

    @staticmethod
    def _photo(ref: Any, files: dict[str, UploadedFile], field: str) -> dict[str, Any]:
        """The photo a request names: an uploaded part (checked to be an image) or a file_id/URL."""
        if isinstance(ref, str) and ref.startswith("attach://"):
            upload = files.get(ref.removeprefix("attach://"))
            if upload is None:
                raise bad_request(f"can't find the attached file {ref}")
        else:
            upload = files.get(field) if ref is None or str(ref).startswith("<file ") else None
            if upload is None:
                if not ref:
                    raise bad_request("there is no photo in the request")
                return {"source": "reference", "ref": str(ref), "size": 0, "width": 0, "height": 0}
        if sniff_image(upload.data) is None:
            raise bad_request("IMAGE_PROCESS_FAILED")
        width, height = image_size(upload.data)
        return {
            "source": "upload",
            "filename": upload.filename,
            "mime": sniff_image(upload.data),
            "size": len(upload.data),
            "width": width,
            "height": height,
            "sha256": hashlib.sha256(upload.data).hexdigest(),
        }

    def _store(
        self,
        chat: dict[str, Any],
        bot: dict[str, Any],
        token: str,
        entry: dict[str, Any],
        message_fields: dict[str, Any],
    ) -> dict[str, Any]:
        """Number, record and shape one Message (the caller holds the lock)."""
        message_id = self._next_id.get(chat["id"], 0) + 1
        self._next_id[chat["id"]] = message_id
        date = int(time.time())
        self._messages.append(
            {"chat_id": chat["id"], "message_id": message_id, "date": date, "token": token, **entry}
        )
        message: dict[str, Any] = {"message_id": message_id, "date": date, "chat": dict(chat)}
        if chat["type"] == "channel":
            message["sender_chat"] = dict(chat)
        else:
            message["from"] = {k: bot[k] for k in ("id", "is_bot", "first_name", "username")}
        message.update(message_fields)
        return message

    @staticmethod
    def _photo_sizes(photo: dict[str, Any], unique: str) -> list[dict[str, Any]]:
        return [
            {
                "file_id": f"AgAC{unique}",
                "file_unique_id": unique[:16],
                "width": photo["width"],
                "height": photo["height"],
                "file_size": photo["size"],
            }
        ]

    def send_photo(self, call: Call, token: str, bot: dict[str, Any]) -> dict[str, Any]:
        p = call.params
        chat = self._chat_for(call)
        parse_mode = p.get("parse_mode") or None
        caption, entities = self._caption(p.get("caption"), parse_mode, p.get("caption_entities"))
        photo = self._photo(p.get("photo"), call.files, "photo")
        with self.lock:
            return self._store_photo(chat, bot, token, p, (photo, caption, entities, parse_mode), None)

    def _store_photo(
        self,
        chat: Any,
        bot: dict[str, Any],
        token: str,
        p: dict[str, Any],
        item: tuple[Any, str | None, Any, str | None],
        group_id: str | None,
    ) -> dict[str, Any]:
        """One photo message (alone, or one of an album's), stored as Telegram would answer it."""
        photo, caption, entities, parse_mode = item
        fields: dict[str, Any] = {
            "photo": self._photo_sizes(photo, hashlib.sha256(repr(photo).encode()).hexdigest())
        }
        if group_id is not None:
            fields = {"media_group_id": group_id} | fields
        if caption:
            fields["caption"] = caption
        if entities:
            fields["caption_entities"] = entities
        entry = {
            "chat_ref": p.get("chat_id"),
            "kind": "photo",
            "text": caption,  # what a reader sees as the message's text
            "caption": caption,
            "entities": entities,
            "parse_mode": parse_mode,
            "photo": photo,
            "media_group_id": group_id,
            "disable_notification": _bool_param(p.get("disable_notification")),
        }
        return self._store(chat, bot, token, entry, fields)

    def send_media_group(self, call: Call, token: str, bot: dict[str, Any]) -> list[dict[str, Any]]:
        p = call.params
        chat = self._chat_for(call)
        media = _json_param(p.get("media"))
        if not isinstance(media, list) or not 2 <= len(media) <= 10:
            raise bad_request("media group must include 2-10 items")
        items = []
        for i, item in enumerate(media):
            if not isinstance(item, dict) or item.get("type") != "photo":
                raise bad_request(f"unsupported media type in item #{i + 1}: only photos here")
            parse_mode = item.get("parse_mode") or None
            caption, entities = self._caption(item.get("caption"), parse_mode, item.get("caption_entities"))
            items.append((self._photo(item.get("media"), call.files, ""), caption, entities, parse_mode))
        group_id = str(int(time.time() * 1000) * 1000 + len(self._messages))
        with self.lock:
            return [self._store_photo(chat, bot, token, p, item, group_id) for item in items]

    def send_message(self, call: Call, token: str, bot: dict[str, Any]) -> dict[str, Any]:
        p = call.params
        ref = p.get("chat_id")
        if ref in (None, ""):
            raise bad_request("chat_id is empty")
        if isinstance(ref, str) and re.fullmatch(r"-?\d+", ref):
            ref = int(ref)
        chat = self._find_chat(ref)
        if chat is None:
            raise bad_request("chat not found")
        if chat["id"] in self._blocked:
            raise HTTPFailure(tg_error(403, self._blocked_description(chat)))
        raw = p.get("text")
        if raw is None or raw == "":
            raise bad_request("message text is empty")
        raw = str(raw)
        parse_mode = p.get("parse_mode") or None
        given = _json_param(p.get("entities")) if p.get("entities") else None
        text, entities = _parse(raw, parse_mode, given)
        if not text:
            raise bad_request("message text is empty")
        if utf16_len(text) > MAX_TEXT:
            raise bad_request("message is too long")
        link_preview = _json_param(p["link_preview_options"]) if p.get("link_preview_options") else None
        with self.lock:
            message_id = self._next_id.get(chat["id"], 0) + 1
            self._next_id[chat["id"]] = message_id
            date = int(time.time())
            self._messages.append(
                {
                    "chat_id": chat["id"],
                    "chat_ref": p.get("chat_id"),
                    "message_id": message_id,
                    "date": date,
                    "kind": "text",
                    "text": text,
                    "entities": entities,
                    "parse_mode": parse_mode,
                    "raw_text": raw,
                    "link_preview_options": link_preview,
                    "disable_notification": _bool_param(p.get("disable_notification")),
                    "token": token,
                }
            )
        message: dict[str, Any] = {"message_id": message_id, "date": date, "chat": dict(chat), "text": text}
        if chat["type"] == "channel":
            message["sender_chat"] = dict(chat)
        else:
            message["from"] = {k: bot[k] for k in ("id", "is_bot", "first_name", "username")}
        if entities:
            message["entities"] = entities
        if link_preview:
            message["link_preview_options"] = link_preview
        return message

    @staticmethod
    def _blocked_description(chat: dict[str, Any]) -> str:
        if chat["type"] == "channel":
            return "Forbidden: bot is not a member of the channel chat"
        if chat["type"] in ("group", "supergroup"):
            return f"Forbidden: bot was kicked from the {chat['type']} chat"
        return "Forbidden: bot was blocked by the user"
