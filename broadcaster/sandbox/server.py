"""Shared machinery for the sandbox fakes: no real endpoint of its own.

* ``ServerThread`` runs a Starlette app under uvicorn in a background thread with its own
  event loop, on a pre-bound socket (port 0 = a free port, known before the thread starts).
* ``RequestLog`` / ``RecordedRequest``: the thread-safe log of what a fake received.
* ``Switch`` and ``FakeService``: failure switches per endpoint group, the recording wrapper
  every endpoint goes through, and the control API under ``/_sandbox/`` (fail, heal, reset,
  state, requests, items, setup, latency) so another process can break and heal a fake.
  ``fail(group, mode, **opts)`` or ``POST /_sandbox/fail {"group": g, "mode": m, ...opts}``;
  ``heal(group)`` or ``POST /_sandbox/heal {"group": g}``. Modes, and what a client sees:

  - ``error``: an HTTP error in the service's shape (``status``, default per group).
  - ``rate_limit``: 429 with the service's rate-limit headers and ``Retry-After:
    retry_after``; ``retry_after=None`` leaves the Retry-After header out.
  - ``slow``: the normal answer, ``delay`` seconds late.
  - ``hang``: accepts and reads the request, never answers; held until healed (then the
    normal answer), until the client goes away, until ``cap`` seconds (then 504) or until
    the fake stops (then 503), so a stop is never held up by a hang.
  - ``flaky``: ``error`` for a seeded random ``rate`` of the requests.
  - ``reset``: reads the request, then resets the TCP connection (RST, no HTTP answer): the
    client sees "connection reset by peer" (httpx ``ReadError``). The request is not acted on.
  - ``drop_after``: reads the request and acts on it (the message is created, as a real
    service would), then closes the connection (FIN) without answering: requests sees
    ``ConnectionError(RemoteDisconnected)``, httpx ``RemoteProtocolError``. The request left;
    only the answer was lost.
  - ``html_error``: a 5xx (``status``, default 502) with an HTML page, as a proxy or load
    balancer in front of the service answers; the service never saw the request.
  - ``partial``: ``error`` for a ``fraction`` (default 0.5) of the accounts only.
  - ``refused``: connection refused; only where a fake has a separate listener for that
    group (the Bluesky AppView), see that fake.

  Every mode but ``refused`` takes ``count`` (the next N requests only) and ``fraction``
  (only the accounts whose key hashes below it: ``in_fraction``, ``FakeService.account_key``;
  the same accounts each time, the others get normal answers).
* Response latency: every request to a real endpoint (not the control API) waits
  ``latency_ms`` before it is answered, as a remote API would. The wait is an
  ``asyncio.sleep`` on the fake's loop, so concurrent requests overlap (one connection's
  wait does not hold up another's). Default 0, or ``SANDBOX_LATENCY_MS`` /
  ``SANDBOX_<SERVICE>_LATENCY_MS`` from the environment; change it with
  ``set_latency(ms)`` or ``POST /_sandbox/latency {"ms": 100}``. ``reset()`` keeps it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

MODES = (
    "error",
    "hang",
    "slow",
    "rate_limit",
    "flaky",
    "reset",
    "drop_after",
    "html_error",
    "partial",
    "refused",
    "odd_headers",
)
PROXY_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
RETRY_AFTER = 5  # seconds, the default of rate_limit
PARTIAL_FRACTION = 0.5  # the April 2026 Bluesky outage hit about half of the accounts
LATENCY_ENV = "SANDBOX_LATENCY_MS"
HANG_CAP = 120.0  # seconds a "hang" holds a request at most, so servers still shut down
_POLL = 0.05


# --------------------------------------------------------------------------- request log
@dataclass
class RecordedRequest:
    """One request a fake received (control-API requests are not recorded)."""

    method: str
    path: str
    query: dict[str, Any]
    headers: dict[str, str]
    body: Any  # dict for JSON / form bodies, str for other text, None when empty
    t: float  # time.monotonic() on arrival
    at: float  # time.time() on arrival
    endpoint: str = ""  # e.g. "com.atproto.repo.createRecord", "sendMessage"
    groups: tuple[str, ...] = ()
    status: int | None = None  # None while in flight, or when a hung client went away
    injected: str | None = None  # failure mode applied to this request, if any
    duration: float | None = None
    latency: float = 0.0  # seconds of configured response latency this request waited

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestLog:
    """Thread-safe, append-only list of ``RecordedRequest``; reads return snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def append(self, item: RecordedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def where(self, endpoint: str | None = None, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests for one endpoint name (and/or HTTP method)."""
        return [
            r
            for r in self.snapshot()
            if (endpoint is None or r.endpoint == endpoint) and (method is None or r.method == method.upper())
        ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[RecordedRequest]:
        return iter(self.snapshot())

    def __getitem__(self, index):  # int or slice
        with self._lock:
            return self._items[index]

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        return f"RequestLog({len(self)} requests)"


# --------------------------------------------------------------------------- body parsing
def parse_body(content_type: str, raw: bytes) -> Any:
    """JSON, form (urlencoded or multipart) or text. Repeated form keys become lists."""
    if not raw:
        return None
    ctype = (content_type or "").lower()
    if "json" in ctype:
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")
    if "x-www-form-urlencoded" in ctype:
        return _pairs_to_dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    if "multipart/form-data" in ctype:
        msg = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
        )
        pairs: list[tuple[str, str]] = []
        for part in msg.iter_parts():
            # The HTTP policy parses and decodes the header: a str, never an RFC 2231 tuple.
            name = cast("str | None", part.get_param("name", header="content-disposition"))
            if name is None:
                continue
            # decode=True: the part's bytes (None only for a multipart part), never a Message
            payload = cast("bytes | None", part.get_payload(decode=True)) or b""
            if part.get_filename():
                pairs.append((name, f"<file {part.get_filename()} {len(payload)} bytes>"))
            else:
                pairs.append((name, payload.decode("utf-8", "replace")))
        return _pairs_to_dict(pairs)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(raw)} bytes>"


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart upload."""

    filename: str
    content_type: str
    data: bytes


def multipart_files(content_type: str, raw: bytes) -> dict[str, UploadedFile]:
    """The file parts (those with a filename) of a multipart/form-data body, by field name."""
    if "multipart/form-data" not in (content_type or "").lower() or not raw:
        return {}
    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    out: dict[str, UploadedFile] = {}
    for part in msg.iter_parts():
        name = cast("str | None", part.get_param("name", header="content-disposition"))
        if name is None or not part.get_filename():
            continue
        payload = cast("bytes | None", part.get_payload(decode=True)) or b""
        out[name] = UploadedFile(str(part.get_filename()), part.get_content_type(), payload)
    return out


def sniff_image(data: bytes) -> str | None:
    """The image type by its magic bytes, as a server checks an upload (None: not an image)."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG, GIF or JPEG header; (0, 0) when it cannot be read here."""
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data) and data[i] == 0xFF:
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(width), int(height)
            i += 2 + length
    return 0, 0


def _pairs_to_dict(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            if not isinstance(out[key], list):
                out[key] = [out[key]]
            out[key].append(value)
        else:
            out[key] = value
    return out


def bearer_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# --------------------------------------------------------------------------- switches
@dataclass
class Switch:
    """One failure switch. ``count`` None = until healed; otherwise the next N requests."""

    group: str
    mode: str
    status: int | None = None
    body: Any = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 1.0
    retry_after: int | None = RETRY_AFTER  # None: a 429 without a Retry-After header
    rate: float = 0.1
    seed: int | None = None
    count: int | None = None
    fraction: float | None = None  # None: every account; see in_fraction
    cap: float = HANG_CAP
    applied: int = 0
    healed: bool = False
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def describe(self) -> dict[str, Any]:
        skip = ("rng", "healed")
        return {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in skip}


@dataclass
class Call:
    """What an endpoint handler gets: the request, its parsed body and merged params."""

    request: Request
    body: Any
    record: RecordedRequest
    # `odd_headers`: set on the normal answer after it is made (e.g. a malformed rate-limit reset)
    extra_headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""  # the request body as received (uploads: the file's bytes)

    @property
    def files(self) -> dict[str, UploadedFile]:
        """The file parts of a multipart body, by field name (empty for any other body)."""
        return multipart_files(self.request.headers.get("content-type", ""), self.raw)

    @property
    def params(self) -> dict[str, Any]:
        """Query parameters merged with a dict body (body wins)."""
        merged: dict[str, Any] = dict(self.record.query)
        if isinstance(self.body, dict):
            merged.update(self.body)
        return merged


Handler = Callable[[Call], Response]


def in_fraction(key: str, fraction: float) -> bool:
    """Whether the account ``key`` is among the ``fraction`` of accounts a switch hits.

    A hash, not a random draw: the same accounts are hit on every request and in every run,
    as in a real partial outage (one shard down), and tests can pick an account on each side.
    """
    if fraction >= 1:
        return True
    if fraction <= 0:
        return False
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class HTTPFailure(Exception):
    """Raise from a handler to answer with a ready-made response."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


# --------------------------------------------------------------------------- server thread
def _tracking_h11(transports: dict[tuple[str, int], asyncio.Transport]) -> type[H11Protocol]:
    """uvicorn's h11 protocol, keeping each open connection's transport by client address.

    ASGI gives a handler no way to its socket; ``reset`` needs it (to close with an RST).
    """

    class TrackingH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if self.client:
                transports[self.client] = transport

        def connection_lost(self, exc: Exception | None) -> None:
            if self.client and transports.get(self.client) is self.transport:
                del transports[self.client]
            super().connection_lost(exc)

    return TrackingH11


class ServerThread:
    """uvicorn serving one ASGI app in a daemon thread (own event loop, no signal handlers).

    Each HTTP scope gets ``scope["sandbox.runner"]`` (this object), so a handler can find its
    connection's transport (``transport_for``) and see that its server is stopping.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, name: str = "") -> None:
        self.app, self.host, self.requested_port, self.name = app, host, port, name
        self.port: int | None = None
        self.server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._transports: dict[tuple[str, int], asyncio.Transport] = {}  # touched on its loop only

    def start(self, timeout: float = 10.0) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto=IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted connections
        # (with proto 0 it does not, and Nagle + delayed ACK add ~40 ms per request)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http=_tracking_h11(self._transports),
            ws="none",
            # An idle connection stays open 75 s (nginx's default, and most API front ends'),
            # not uvicorn's 5 s: a client reusing its connection just as the server closes it
            # cannot tell whether its request arrived, so a send counts as uncertain. With 5 s
            # that race came up in the suite (an SMS recipient never texted, counted uncertain).
            timeout_keep_alive=75,
            timeout_graceful_shutdown=1,
            date_header=False,  # `_asgi` dates each answer, so a test can send a `Date` of its own
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"sandbox-{self.name}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError(f"sandbox {self.name} did not start: {self.error!r}")
            time.sleep(0.01)
        return self.port

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["sandbox.runner"] = self

        async def dated(message: dict[str, Any]) -> None:
            """A `Date` on every answer, as uvicorn would add it, unless the answer has one
            (`odd_headers`: a server clock that is off, a malformed date)."""
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"date" for name, _ in headers):
                    headers.append((b"date", formatdate(usegmt=True).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, dated)

    def transport_for(self, scope: dict[str, Any]) -> asyncio.Transport | None:
        """The transport of the connection a request came on (call on the server's loop)."""
        client = scope.get("client")
        return self._transports.get(tuple(client)) if client else None

    @property
    def stopping(self) -> bool:
        return bool(self.server and self.server.should_exit)

    def _run(self, sock: socket.socket) -> None:
        try:
            assert self.server is not None  # start() sets it before starting this thread
            self.server.run(sockets=[sock])
        except BaseException as exc:  # pragma: no cover - surfaced by start()
            self.error = exc

    def stop(self, timeout: float = 5.0) -> None:
        if not self._thread or not self.server:
            return
        self.server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - stuck connection
            self.server.force_exit = True
            self._thread.join(2.0)

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())


# --------------------------------------------------------------------------- latency
def latency_from_env(service: str, environ: dict[str, str] | None = None) -> float:
    """Milliseconds of response latency for ``service`` from the environment (0 if unset).

    ``SANDBOX_<SERVICE>_LATENCY_MS`` (e.g. ``SANDBOX_MASTODON_LATENCY_MS``) wins over
    ``SANDBOX_LATENCY_MS``.
    """
    env = os.environ if environ is None else environ
    for name in (f"SANDBOX_{service.upper()}_LATENCY_MS", LATENCY_ENV):
        raw = env.get(name, "").strip()
        if raw:
            return check_latency(float(raw), name)
    return 0.0


def check_latency(ms: Any, what: str = "latency_ms") -> float:
    value = float(ms)
    if not 0 <= value <= HANG_CAP * 1000:
        raise ValueError(f"{what} must be between 0 and {HANG_CAP * 1000:.0f} ms, not {ms!r}")
    return value


# --------------------------------------------------------------------------- base fake
class FakeService:
    """Base of the four fakes: routing, recording, failure switches, control API, thread.

    Subclasses set ``name``, ``groups`` and implement ``routes()``, ``error_response()``,
    ``rate_limit_response()``, ``counts()``, ``items()``, ``_clear()``; optionally
    ``default_status()``, ``decorate()`` and ``setup_actions()``.
    """

    name = "fake"
    groups: tuple[str, ...] = ("all",)
    refusable: tuple[str, ...] = ()  # groups served by a listener of their own ("refused")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.requests = RequestLog()
        self._switches: dict[str, Switch] = {}
        self._exhausted: list[Switch] = []  # used up by ``count``; hangs on them still wait
        self._closing = False
        self._runner: ServerThread | None = None
        self.host = "127.0.0.1"
        self.latency_ms = latency_from_env(self.name)
        self.app = Starlette(routes=self._control_routes() + self.routes())
        self.asgi = _strip_trailing_slash(self.app)

    # ---- subclass hooks
    def routes(self) -> list[Route]:
        raise NotImplementedError

    def default_status(self, group: str) -> int:
        return 500

    def error_response(self, status: int, sw: Switch | None = None) -> Response:
        raise NotImplementedError

    def rate_limit_response(self, retry_after: int, sw: Switch | None = None) -> Response:
        raise NotImplementedError

    def decorate(self, call: Call, response: Response) -> Response:
        return response

    def counts(self) -> dict[str, int]:
        return {}

    def items(self) -> list[dict[str, Any]]:
        return []

    def setup_actions(self) -> dict[str, Callable[..., Any]]:
        return {}

    def account_key(self, call: Call) -> str:
        """Who a request is from, for ``fraction``: the bearer token by default ("" if none)."""
        return bearer_token(call.request) or ""

    def _switched(self, sw: Switch, on: bool) -> None:
        """A switch was turned on, or off (healed or replaced); called outside ``lock``."""

    def _clear(self) -> None:
        """Clear recorded items (not accounts)."""

    # ---- lifecycle
    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeService:
        self._closing = False
        self.host = host
        self._runner = ServerThread(self.asgi, host, port, self.name)
        self._runner.start()
        return self

    def stop(self) -> None:
        self._closing = True
        if self._runner:
            self._runner.stop()

    def restart(self) -> None:
        """Stop and start again on the same port (between the two: connection refused)."""
        port = self.port or 0
        self.stop()
        self.start(self.host, port)

    @property
    def port(self) -> int | None:
        return self._runner.port if self._runner else None

    @property
    def url(self) -> str:
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def set_latency(self, ms: float) -> float:
        """Answer every request to a real endpoint ``ms`` milliseconds late (0 = at once)."""
        self.latency_ms = check_latency(ms)
        return self.latency_ms

    async def _wait_latency(self, record: RecordedRequest) -> None:
        """The configured response latency: an asyncio sleep, so other requests go on meanwhile."""
        delay = self.latency_ms / 1000
        if delay <= 0:
            return
        record.latency = delay
        deadline = time.monotonic() + delay
        while not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 1.0))

    def reset(self) -> None:
        """Clear recorded requests, recorded items and switches; accounts (and latency) stay."""
        self.heal()
        self.requests.clear()
        with self.lock:
            self._clear()

    # ---- switches
    def fail(self, group: str = "all", mode: str = "error", **opts: Any) -> dict[str, Any]:
        """Turn on a failure switch for an endpoint group (replaces that group's switch).

        Options: status, body, message, headers (error/flaky/partial); delay (slow);
        retry_after (rate_limit; None = no Retry-After header); rate, seed (flaky); cap (hang);
        fraction (partial: default 0.5; any other mode but refused: default every account);
        count (all modes but refused).
        """
        if group not in self.groups:
            raise ValueError(f"unknown group {group!r} for {self.name}; one of {self.groups}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        known = set(Switch.__dataclass_fields__) - {"group", "mode", "applied", "healed", "rng"}
        unknown = set(opts) - known
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; known {sorted(known)}")
        sw = Switch(group=group, mode=mode, **opts)
        sw.rng = random.Random(sw.seed)
        if sw.count is not None and sw.count < 1:
            raise ValueError("count must be >= 1")
        if mode == "html_error" and not 500 <= int(sw.status or 502) <= 599:
            raise ValueError(f"html_error takes a 5xx status, not {sw.status!r}")
        if mode == "partial" and sw.fraction is None:
            sw.fraction = PARTIAL_FRACTION
        if sw.fraction is not None and not 0 <= float(sw.fraction) <= 1:
            raise ValueError(f"fraction must be between 0 and 1, not {sw.fraction!r}")
        if mode == "refused":
            if group not in self.refusable:
                raise ValueError(
                    f"{self.name} has no listener of its own for {group!r} (refusable: "
                    f"{self.refusable}); stop() the whole fake for connection refused"
                )
            if sw.count is not None or sw.fraction is not None:
                raise ValueError("refused takes neither count nor fraction: the listener is down")
        with self.lock:
            old = self._switches.get(group)
            if old:
                old.healed = True
            self._switches[group] = sw
        if old:
            self._switched(old, on=False)
        self._switched(sw, on=True)
        return sw.describe()

    def heal(self, group: str | None = None) -> None:
        """Turn off one group's switch, or all of them; releases requests hanging on them."""
        healed: list[Switch] = []
        with self.lock:
            names = list(self._switches) if group is None else [group]
            for name in names:
                sw = self._switches.pop(name, None)
                if sw:
                    sw.healed = True
                    healed.append(sw)
            for sw in self._exhausted:
                if group is None or sw.group == group:
                    sw.healed = True
            self._exhausted = [sw for sw in self._exhausted if not sw.healed]
        for sw in healed:
            self._switched(sw, on=False)

    @property
    def switches(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {g: sw.describe() for g, sw in self._switches.items()}

    def _take_switch(self, groups: tuple[str, ...], call: Call | None = None) -> Switch | None:
        """The switch a request meets; with a ``fraction`` an account left out gets None and
        is marked ``<mode>:pass`` (it does not count towards ``count``)."""
        with self.lock:
            for group in (*groups, "all"):
                sw = self._switches.get(group)
                if sw is None:
                    continue
                if (
                    sw.fraction is not None
                    and call is not None
                    and not in_fraction(self.account_key(call), float(sw.fraction))
                ):
                    call.record.injected = f"{sw.mode}:pass"
                    return None
                sw.applied += 1
                if sw.count is not None and sw.applied >= sw.count:
                    del self._switches[group]  # exhausted, not healed: hangs keep hanging
                    if sw.mode == "hang":
                        self._exhausted.append(sw)
                return sw
        return None

    # ---- endpoint wrapper
    def endpoint(
        self,
        path: str,
        handler: Handler,
        methods: list[str],
        groups: tuple[str, ...] | Callable[[Request], tuple[str, ...]] = (),
        name: str | Callable[[Request], str] = "",
    ) -> Route:
        async def asgi_endpoint(request: Request) -> Response:
            raw = await request.body()
            body = parse_body(request.headers.get("content-type", ""), raw)
            grp = groups(request) if callable(groups) else groups
            ep = name(request) if callable(name) else (name or path)
            record = RecordedRequest(
                method=request.method,
                path=request.scope.get("sandbox.path", request.url.path),
                query=_pairs_to_dict(list(request.query_params.multi_items())),
                headers={k.lower(): v for k, v in _joined_headers(request).items()},
                body=body,
                t=time.monotonic(),
                at=time.time(),
                endpoint=ep,
                groups=tuple(grp),
            )
            self.requests.append(record)
            call = Call(request, body, record, raw=raw)
            await self._wait_latency(record)
            response = await self._apply_switch(call, grp)
            if response is None or response is _DROP:
                try:
                    answer = handler(call)
                except HTTPFailure as failure:
                    answer = failure.response
                except Exception:  # a bug in a fake: answer in the service's error shape
                    logger.exception("sandbox %s: %s failed", self.name, ep)
                    answer = self.error_response(500)
                response = answer if response is None else response  # drop_after: the work, no answer
            if not isinstance(response, _Abandoned):
                response = self.decorate(call, response)
                response.headers.update(call.extra_headers)
                record.status = response.status_code
            record.duration = time.monotonic() - record.t
            return response

        return Route(path, asgi_endpoint, methods=methods)

    async def _apply_switch(self, call: Call, groups: tuple[str, ...]) -> Response | None:
        sw = self._take_switch(groups, call)
        if sw is None:
            return None
        call.record.injected = sw.mode
        group = sw.group
        if sw.mode in ("error", "partial"):
            return self._error_for(sw, group)
        if sw.mode == "refused":
            return self.refused_response(sw)
        if sw.mode == "reset":
            return _RESET
        if sw.mode == "drop_after":
            return _DROP
        if sw.mode == "odd_headers":  # the work and a normal answer, with these headers on it
            call.extra_headers = dict(sw.headers)
            return None
        if sw.mode == "html_error":
            return proxy_error_page(int(sw.status or 502), sw.headers)
        if sw.mode == "rate_limit":
            hint = sw.retry_after
            resp = self.rate_limit_response(int(hint if hint is not None else RETRY_AFTER), sw)
            if hint is None:
                del resp.headers["retry-after"]
            resp.headers.update(sw.headers)
            return resp
        if sw.mode == "flaky":
            with self.lock:
                hit = sw.rng.random() < sw.rate
            if hit:
                return self._error_for(sw, group)
            call.record.injected = "flaky:pass"
            return None
        runner: ServerThread | None = call.request.scope.get("sandbox.runner")

        def closing() -> bool:
            return self._closing or bool(runner and runner.stopping)

        if sw.mode == "slow":
            deadline = time.monotonic() + float(sw.delay)
            while time.monotonic() < deadline and not closing():
                await asyncio.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
            return None  # a slow server still does the work, even if the client gave up
        # hang: a black hole. Hold until healed (then answer normally if the client is still
        # there), until the client goes away (then do nothing), or until the cap / shutdown.
        deadline = time.monotonic() + float(sw.cap)
        while not sw.healed and not closing() and time.monotonic() < deadline:
            if await call.request.is_disconnected():
                call.record.injected = "hang:abandoned"
                return _ABANDONED
            await asyncio.sleep(_POLL)
        if await call.request.is_disconnected():
            call.record.injected = "hang:abandoned"
            return _ABANDONED
        if sw.healed and not closing():
            call.record.injected = "hang:healed"
            return None
        return self._error_for(sw, group, 504 if not closing() else 503)

    def refused_response(self, sw: Switch) -> Response:
        """What the fake's main listener answers for a group whose own listener is refusing."""
        return self._error_for(sw, sw.group)

    def _error_for(self, sw: Switch, group: str, status: int | None = None) -> Response:
        status = int(sw.status or status or self.default_status(group))
        if sw.body is not None:
            resp: Response = JSONResponse(sw.body, status_code=status)
        else:
            resp = self.error_response(status, sw)
        resp.headers.update(sw.headers)
        return resp

    # ---- control API
    def _control_routes(self) -> list[Route]:
        return [
            Route("/_sandbox/fail", self._ctl_fail, methods=["POST"]),
            Route("/_sandbox/heal", self._ctl_heal, methods=["POST"]),
            Route("/_sandbox/reset", self._ctl_reset, methods=["POST"]),
            Route("/_sandbox/state", self._ctl_state, methods=["GET"]),
            Route("/_sandbox/requests", self._ctl_requests, methods=["GET"]),
            Route("/_sandbox/items", self._ctl_items, methods=["GET"]),
            Route("/_sandbox/setup", self._ctl_setup, methods=["POST"]),
            Route("/_sandbox/latency", self._ctl_latency, methods=["POST"]),
        ]

    async def _json(self, request: Request) -> dict[str, Any]:
        body = parse_body(request.headers.get("content-type", "application/json"), await request.body())
        if body is None:
            return dict(request.query_params)
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        return body

    async def _ctl_fail(self, request: Request) -> Response:
        try:
            opts = await self._json(request)
            group = opts.pop("group", "all")
            mode = opts.pop("mode", "error")
            sw = await asyncio.to_thread(self.fail, group, mode, **opts)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True, "switch": sw})

    async def _ctl_heal(self, request: Request) -> Response:
        try:
            opts = await self._json(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        await asyncio.to_thread(self.heal, opts.get("group"))
        return JSONResponse({"ok": True, "switches": self.switches})

    async def _ctl_latency(self, request: Request) -> Response:
        try:
            opts = await self._json(request)
            ms = self.set_latency(opts["ms"])
        except KeyError:
            return JSONResponse({"error": "need {'ms': milliseconds}"}, status_code=400)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True, "latency_ms": ms})

    async def _ctl_reset(self, request: Request) -> Response:
        await asyncio.to_thread(self.reset)
        return JSONResponse({"ok": True})

    def state(self) -> dict[str, Any]:
        with self.lock:
            counts = {"requests": len(self.requests), **self.counts()}
        return {
            "service": self.name,
            "url": self.url,
            "groups": list(self.groups),
            "switches": self.switches,
            "latency_ms": self.latency_ms,
            "counts": counts,
        }

    async def _ctl_state(self, request: Request) -> Response:
        return JSONResponse(self.state())

    async def _ctl_requests(self, request: Request) -> Response:
        limit = int(request.query_params.get("limit", "100"))
        items = [r.to_dict() for r in self.requests.snapshot()[-limit:]] if limit > 0 else []
        return JSONResponse({"requests": items})

    async def _ctl_items(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse({"items": self.items()})

    async def _ctl_setup(self, request: Request) -> Response:
        try:
            opts = await self._json(request)
            action = opts.pop("action")
            func = self.setup_actions()[action]
        except (KeyError, ValueError):
            return JSONResponse(
                {"error": "need {'action': one of " + repr(sorted(self.setup_actions())) + "}"},
                status_code=400,
            )
        try:
            result = await asyncio.to_thread(func, **opts)  # start_appview waits for a listener
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True, "result": result})


class _Abandoned(Response):
    """Marker: the client of a hung request went away; nothing is sent."""


_ABANDONED = _Abandoned(status_code=499)


class _Reset(_Abandoned):
    """Sends nothing: resets the connection (SO_LINGER 0, then close = RST, not FIN)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        runner: ServerThread | None = scope.get("sandbox.runner")
        transport = runner.transport_for(scope) if runner else None
        if transport is None:
            raise RuntimeError("reset: no transport for this connection")
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # uvicorn marks the request disconnected once the loop has run connection_lost;
        # returning before that would make it log "returned without starting response"
        while (await receive())["type"] != "http.disconnect":
            pass


_RESET = _Reset(status_code=499)


class _Drop(_Abandoned):
    """Sends nothing: closes the connection (FIN) after the request was read and acted on."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        runner: ServerThread | None = scope.get("sandbox.runner")
        transport = runner.transport_for(scope) if runner else None
        if transport is None:
            raise RuntimeError("drop_after: no transport for this connection")
        transport.close()
        while (await receive())["type"] != "http.disconnect":  # see _Reset
            pass


_DROP = _Drop(status_code=499)


def proxy_error_page(status: int, headers: dict[str, str] | None = None) -> Response:
    """A proxy's own error page (nginx's): HTML, not the service's error shape."""
    if not 500 <= status <= 599:
        raise ValueError(f"html_error takes a 5xx status, not {status}")
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    page = PROXY_PAGE.format(status=status, reason=reason)
    resp = Response(page, status_code=status, media_type="text/html")
    resp.headers.update(headers or {})
    return resp


def _strip_trailing_slash(app: Any) -> Any:
    """Serve ``/path/`` as ``/path`` (Mastodon.py asks for ``/api/v1/instance/``)."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and len(path) > 1 and path.endswith("/"):
            scope = {**scope, "path": path.rstrip("/") or "/", "sandbox.path": path}
            scope.pop("raw_path", None)
        await app(scope, receive, send)

    return asgi


def _joined_headers(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.headers.items():
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def retry_at(retry_after: float) -> int:
    """Epoch seconds ``retry_after`` from now (for reset headers)."""
    return int(time.time() + retry_after + 0.999)
