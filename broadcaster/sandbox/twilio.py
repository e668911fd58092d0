"""Fake Twilio REST API 2010-04-01 (Basic auth with Account SID + auth token).

Imitates these real endpoints (shapes from Twilio's ``twilio_api_v2010`` OpenAPI spec):

* ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (form: To, From or
  MessagingServiceSid, Body, StatusCallback, ...): 201 Message resource with ``num_segments``
  computed for GSM-7 / UCS-2; ``MediaUrl`` (repeated, up to 10 http(s) URLs: an MMS, with
  ``num_media``); errors 21211 (invalid To), 21610 (opted-out recipient),
  21602/21603/21604/21617, 21620 (a media URL that is not http(s)), 21623 (more than 10)
* ``GET /2010-04-01/Accounts/{Sid}.json`` (account; a credentials check)
* ``GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json``

With ``callbacks_enabled`` a message walks queued -> sent -> delivered and each status is
POSTed to its ``StatusCallback`` URL, signed with ``X-Twilio-Signature`` by
``twilio.request_validator.RequestValidator``. Errors are ``{code, message, more_info,
status}``. Failure groups: ``messages`` (the Messages resources) and ``all``; default 500.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
import threading
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response
from twilio.request_validator import RequestValidator

from .server import Call, FakeService, HTTPFailure, Switch

API = "2010-04-01"
E164 = re.compile(r"^\+[1-9]\d{1,14}$")
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
MAX_MEDIA = 10
GSM7_EXTENDED = set("^{}\\[~]|€\f")
MESSAGES = {
    401: (20003, "Authenticate"),
    404: (20404, "The requested resource was not found"),
    429: (20429, "Too Many Requests"),
    500: (20500, "An internal server error has occurred"),
    502: (20500, "Bad Gateway"),
    503: (20503, "Service Unavailable"),
    504: (20504, "Gateway Timeout"),
}


def tw_error(status: int, code: int | None = None, message: str | None = None) -> JSONResponse:
    default_code, default_message = MESSAGES.get(status, (status, "Error"))
    code = code or default_code
    return JSONResponse(
        {
            "code": code,
            "message": message or default_message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status_code=status,
    )


def num_segments(body: str) -> int:
    """SMS segments: GSM-7 160/153 (extension chars count 2), else UCS-2 70/67 (UTF-16)."""
    if not body:
        return 1
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in body):
        units, single, multi = sum(2 if ch in GSM7_EXTENDED else 1 for ch in body), 160, 153
    else:
        units, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def rfc2822(dt: datetime | None = None) -> str:
    return format_datetime((dt or datetime.now(UTC)).replace(microsecond=0))


class TwilioFake(FakeService):
    name = "twilio"
    groups = ("messages", "all")

    def __init__(self) -> None:
        self.callbacks_enabled = False
        self.callback_delay = 0.05  # seconds between status steps
        self._accounts: dict[str, dict[str, Any]] = {}
        self._opted_out: set[str] = set()
        self._messages: dict[str, dict[str, Any]] = {}  # sid -> resource
        self._order: list[str] = []
        self._callbacks: list[dict[str, Any]] = []
        self._stop = threading.Event()
        super().__init__()

    # ---------------------------------------------------------------- public helpers
    def add_account(
        self, account_sid: str, auth_token: str, friendly_name: str = "Sandbox"
    ) -> dict[str, Any]:
        now = rfc2822()
        account = {
            "sid": account_sid,
            "auth_token": auth_token,
            "friendly_name": friendly_name,
            "owner_account_sid": account_sid,
            "status": "active",
            "type": "Full",
            "date_created": now,
            "date_updated": now,
            "uri": f"/{API}/Accounts/{account_sid}.json",
            "subresource_uris": {"messages": f"/{API}/Accounts/{account_sid}/Messages.json"},
        }
        with self.lock:
            self._accounts[account_sid] = account
        return dict(account)

    def opt_out(self, number: str) -> None:
        """The recipient texted STOP: sending to it answers 400 / 21610."""
        with self.lock:
            self._opted_out.add(number)

    def opt_in(self, number: str) -> None:
        with self.lock:
            self._opted_out.discard(number)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Messages created, in order: sid, to, from_, messaging_service_sid, body,
        status_callback, account_sid, status, num_segments, media_url (a list)."""
        with self.lock:
            return [self._summary(self._messages[sid]) for sid in self._order]

    @property
    def callbacks(self) -> list[dict[str, Any]]:
        """Status callbacks attempted: url, params, signature, status_code or error."""
        with self.lock:
            return [dict(c) for c in self._callbacks]

    def stop(self) -> None:
        self._stop.set()
        super().stop()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> TwilioFake:
        self._stop.clear()
        super().start(host, port)
        return self

    # ---------------------------------------------------------------- FakeService hooks
    def error_response(self, status: int, sw: Switch | None = None) -> Response:
        return tw_error(status, message=sw.message if sw else None)

    def rate_limit_response(self, retry_after: int, sw: Switch | None = None) -> Response:
        resp = tw_error(429, message=sw.message if sw else None)
        resp.headers["Retry-After"] = str(retry_after)
        return resp

    def counts(self) -> dict[str, int]:
        return {
            "accounts": len(self._accounts),
            "messages": len(self._messages),
            "callbacks": len(self._callbacks),
            "opted_out": len(self._opted_out),
        }

    def items(self) -> list[dict[str, Any]]:
        return self.messages

    def setup_actions(self) -> dict[str, Any]:
        def set_callbacks(enabled: bool = True) -> bool:
            self.callbacks_enabled = bool(enabled)
            return self.callbacks_enabled

        return {
            "add_account": self.add_account,
            "opt_out": self.opt_out,
            "opt_in": self.opt_in,
            "set_callbacks": set_callbacks,
        }

    def _clear(self) -> None:
        self._messages.clear()
        self._order.clear()
        self._callbacks.clear()
        self._opted_out.clear()
        self.callbacks_enabled = False

    def routes(self):
        base = f"/{API}/Accounts"
        msgs = ("messages",)
        return [
            self.endpoint(f"{base}/{{sid}}.json", self.fetch_account, ["GET"], (), "accounts.fetch"),
            self.endpoint(
                f"{base}/{{sid}}/Messages.json", self.create_message, ["POST"], msgs, "messages.create"
            ),
            self.endpoint(
                f"{base}/{{sid}}/Messages/{{msid}}.json", self.fetch_message, ["GET"], msgs, "messages.fetch"
            ),
            self.endpoint(
                "/{rest:path}", lambda call: tw_error(404), ["GET", "POST", "DELETE"], (), "unknown"
            ),
        ]

    # ---------------------------------------------------------------- helpers
    def _auth(self, call: Call) -> dict[str, Any]:
        scheme, _, encoded = call.request.headers.get("authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        with self.lock:
            account = self._accounts.get(user)
        if (
            scheme.lower() != "basic"
            or account is None
            or not secrets.compare_digest(password, account["auth_token"])
        ):
            raise HTTPFailure(tw_error(401))
        if call.request.path_params["sid"] != user:
            raise HTTPFailure(tw_error(404))
        return account

    @staticmethod
    def _summary(m: dict[str, Any]) -> dict[str, Any]:
        return {
            "sid": m["sid"],
            "to": m["to"],
            "from_": m["from"],
            "messaging_service_sid": m["messaging_service_sid"],
            "body": m["body"],
            "status_callback": m["_status_callback"],
            "account_sid": m["account_sid"],
            "status": m["status"],
            "num_segments": m["num_segments"],
            "media_url": list(m["_media_url"]),
        }

    @staticmethod
    def _public(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if not k.startswith("_")}

    # ---------------------------------------------------------------- endpoints
    def fetch_account(self, call: Call) -> Response:
        return JSONResponse(self._auth(call))

    def fetch_message(self, call: Call) -> Response:
        account = self._auth(call)
        with self.lock:
            m = self._messages.get(call.request.path_params["msid"])
            if m is None or m["account_sid"] != account["sid"]:
                raise HTTPFailure(
                    tw_error(404, message=f"The requested resource {call.request.url.path} was not found")
                )
            return JSONResponse(self._public(m))

    def create_message(self, call: Call) -> Response:
        account = self._auth(call)
        p = call.body if isinstance(call.body, dict) else {}
        to, from_ = p.get("To"), p.get("From") or None
        service = p.get("MessagingServiceSid") or None
        body = p.get("Body") or ""
        raw_media = p.get("MediaUrl")
        media: list[str] = [str(u) for u in (raw_media if isinstance(raw_media, list) else [raw_media]) if u]
        if not to:
            raise HTTPFailure(tw_error(400, 21604, "A 'To' phone number is required."))
        if not from_ and not service:
            raise HTTPFailure(tw_error(400, 21603, "A 'From' phone number is required."))
        if not body and not media and not p.get("ContentSid"):
            raise HTTPFailure(tw_error(400, 21602, "Message body is required."))
        if not E164.match(to.removeprefix("whatsapp:")):
            raise HTTPFailure(tw_error(400, 21211, f"The 'To' number {to} is not a valid phone number."))
        if service and not re.fullmatch(r"MG[0-9a-fA-F]{32}", service):
            raise HTTPFailure(tw_error(400, 21701, f"The Messaging Service Sid {service} is invalid."))
        if len(media) > MAX_MEDIA:
            raise HTTPFailure(
                tw_error(400, 21623, f"Number of media files exceeds allowed limit of {MAX_MEDIA}.")
            )
        if any(not re.match(r"^https?://[^\s/]+", u) for u in media):
            raise HTTPFailure(tw_error(400, 21620, "Invalid media URL(s)."))
        if len(body) > 1600:
            raise HTTPFailure(
                tw_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
            )
        with self.lock:
            if to in self._opted_out:
                raise HTTPFailure(tw_error(400, 21610, "Attempt to send to unsubscribed recipient"))
            sid = "SM" + secrets.token_hex(16)
            now = rfc2822()
            uri = f"/{API}/Accounts/{account['sid']}/Messages/{sid}.json"
            m = {
                "sid": sid,
                "account_sid": account["sid"],
                "api_version": API,
                "body": body,
                "date_created": now,
                "date_updated": now,
                "date_sent": None,
                "direction": "outbound-api",
                "error_code": None,
                "error_message": None,
                "from": from_,
                "to": to,
                "messaging_service_sid": service,
                "num_media": str(len(media)),
                "num_segments": str(num_segments(body)),
                "price": None,
                "price_unit": "USD",
                "status": "queued",
                "uri": uri,
                "subresource_uris": {"media": uri.removesuffix(".json") + "/Media.json"},
                "_status_callback": p.get("StatusCallback") or None,
                "_media_url": media,
            }
            self._messages[sid] = m
            self._order.append(sid)
            response = self._public(m)
        if self.callbacks_enabled:
            threading.Thread(
                target=self._progress, args=(sid, account["auth_token"]), daemon=True, name=f"twilio-cb-{sid}"
            ).start()
        return JSONResponse(response, status_code=201)

    # ---------------------------------------------------------------- status callbacks
    def _progress(self, sid: str, auth_token: str) -> None:
        validator = RequestValidator(auth_token)
        with httpx.Client(timeout=5.0) as client:
            for status in ("queued", "sent", "delivered"):
                if self._stop.wait(self.callback_delay):
                    return
                with self.lock:
                    m = self._messages.get(sid)
                    if m is None:
                        return
                    m["status"] = status
                    m["date_updated"] = rfc2822()
                    if status == "sent":
                        m["date_sent"] = m["date_updated"]
                    url = m["_status_callback"]
                    params = {
                        "AccountSid": m["account_sid"],
                        "ApiVersion": API,
                        "From": m["from"] or "",
                        "MessageSid": sid,
                        "MessageStatus": status,
                        "SmsSid": sid,
                        "SmsStatus": status,
                        "To": m["to"],
                    }
                    if m["messaging_service_sid"]:
                        params["MessagingServiceSid"] = m["messaging_service_sid"]
                if not url:
                    continue
                signature = validator.compute_signature(url, params)
                entry: dict[str, Any] = {"url": url, "params": params, "signature": signature}
                try:
                    resp = client.post(url, data=params, headers={"X-Twilio-Signature": signature})
                    entry["status_code"] = resp.status_code
                except httpx.HTTPError as exc:
                    entry["error"] = repr(exc)
                with self.lock:
                    self._callbacks.append(entry)
