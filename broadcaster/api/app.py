"""The FastAPI application: routers, error handling that never leaks a traceback, body limits."""

from __future__ import annotations

import logging

import redis
from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broadcaster import __version__
from broadcaster.api.admission import Admission, busy
from broadcaster.api.deps import valid_unicode_body
from broadcaster.api.errors import validation_failed
from broadcaster.api.routes import feeds, media, pages, posts, system
from broadcaster.api.routes import health as health_routes
from broadcaster.api.routes import ops as ops_routes
from broadcaster.api.routes import sms as sms_routes
from broadcaster.api.routes import webhooks as webhook_routes
from broadcaster.core.brands import BrandsFileError
from broadcaster.core.settings import get_settings

log = logging.getLogger("broadcaster.api")

MAX_BODY_BYTES = 64 * 1024
MEDIA_PATH = "/v1/media"
UPLOAD_RETRY_AFTER_S = 2


def create_app() -> FastAPI:
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from the installed package
    # (served under /static-offline-docs), so the API docs work without internet.
    app = FastAPIOffline(
        title="Failover Broadcaster",
        version=__version__,
        description=(
            "Queue a brand's posts for Bluesky; when Bluesky's feeds fail they go to the "
            "brand's failover channels and are backfilled on recovery. Authenticate with "
            "`Authorization: Bearer <brand API key>`."
        ),
        dependencies=[Depends(valid_unicode_body)],
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
    )
    app.include_router(posts.router)
    app.include_router(media.router)
    app.include_router(feeds.router)
    app.include_router(system.router)
    app.include_router(ops_routes.router)
    app.include_router(webhook_routes.router)
    app.include_router(sms_routes.router)
    app.include_router(health_routes.router)
    app.include_router(pages.router)

    # An image upload may be larger than a post: its own cap, plus room for the multipart framing.
    settings = get_settings()
    app.add_middleware(
        LimitBody,
        media_limit=settings.media_max_upload_bytes + MAX_BODY_BYTES,
        max_uploads=settings.media_max_concurrent_uploads,
    )
    app.add_middleware(Admission, limit=get_settings().api_max_in_flight)  # outermost: added last
    app.add_exception_handler(RequestValidationError, validation_failed)

    @app.exception_handler(redis.RedisError)
    async def redis_unavailable(request: Request, exc: redis.RedisError):
        log.warning(
            "Redis unavailable during %s %s: %s", request.method, request.url.path, type(exc).__name__
        )
        return JSONResponse(
            {"detail": "the ledger (Redis) is unavailable; nothing was changed, retry shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(BrandsFileError)
    async def brands_broken(request: Request, exc: BrandsFileError):
        log.error("brands file problem: %s", exc)
        return JSONResponse(
            {"detail": "the brands configuration cannot be read; an operator must fix it"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    _document_common_errors(app, get_settings().media_max_upload_bytes + MAX_BODY_BYTES)
    return app


def create_served_app() -> FastAPI:
    """The app as `broadcaster api` serves it (`uvicorn --factory`): logging set up first.

    With several workers each is a process of its own (uvicorn spawns them), so the
    redacting log handler must be installed in each, not only in the parent.
    """
    from broadcaster.common.logs import configure_logging

    configure_logging(get_settings(), "api")
    return create_app()


class LimitBody:
    """Read each request body here, at most 64 KiB, before any route or parser sees a byte of it.

    `Content-Length` is not trusted (a chunked body has none): the body is counted as it streams
    in, and the first byte past the limit answers 413 without reading the rest. A body on /v1/
    must be JSON (415), except under /v1/webhooks/ where providers post forms. `POST /v1/media`
    (an image) has its own, larger cap and may be multipart; at most `max_uploads` of them are
    held at once (body, decoding and storing), so memory stays bounded whatever the clients
    send: past it a 503 with Retry-After, before a byte is read. The app then reads the
    buffered body through `receive` as usual.

    A plain ASGI middleware: `@app.middleware("http")` (Starlette's BaseHTTPMiddleware) wraps
    every request in a task group and memory streams, which cost more CPU than a bare route.
    """

    def __init__(self, app: ASGIApp, media_limit: int = MAX_BODY_BYTES, max_uploads: int = 4):
        self.app = app
        self.media_limit = media_limit
        self.max_uploads = max_uploads
        self.uploads = 0  # in this process (one event loop: no lock needed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        if length is None and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body at all (a GET, a bare DELETE)
            return
        if scope["path"] != MEDIA_PATH:
            await self._buffered(scope, receive, send, MAX_BODY_BYTES)
            return
        if self.uploads >= self.max_uploads:
            detail = f"{self.uploads} image uploads are in progress here, the most at once; retry"
            await busy(detail, UPLOAD_RETRY_AFTER_S)(scope, receive, send)
            return
        self.uploads += 1
        try:
            await self._buffered(scope, receive, send, self.media_limit)
        finally:
            self.uploads -= 1

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        path = scope["path"]
        upload = path == MEDIA_PATH
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(scope, receive, send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away: nobody to answer
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(scope, receive, send, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        content_type = headers.get("content-type", "")
        wants_json = path.startswith("/v1/") and not path.startswith("/v1/webhooks/")
        multipart_ok = upload and content_type.startswith("multipart/form-data")
        if body and wants_json and "json" not in content_type and not multipart_ok:
            await JSONResponse(
                {"detail": "send the body as JSON (Content-Type: application/json)"},
                status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            )(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app: the whole buffered body first, then the client's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = JSONResponse(
        {"detail": f"request body is larger than {limit} bytes"},
        status_code=status.HTTP_413_CONTENT_TOO_LARGE,
    )
    await response(scope, receive, send)


def _document_common_errors(app: FastAPI, media_limit: int = MAX_BODY_BYTES) -> None:
    """Every route can answer these; say so in the OpenAPI schema once, for all routers."""
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    common = {
        "503": "Redis is unavailable or the configuration cannot be read; retry later",
    }
    secured = {"401": "Missing, unknown or revoked API key", "403": "Not allowed with this key"}
    with_body = {
        "400": "The body could not be parsed",
        "413": "The body is larger than 64 KiB",
        "415": "The body is not JSON",
        "422": "A field is invalid; `detail[].loc` names it",
    }
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = {
            "title": "Problem",
            "type": "object",
            "properties": {"detail": {"title": "Detail"}},
            "required": ["detail"],
        }
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                extra = dict(common) if path not in ("/healthz",) else {}
                if op.get("security"):
                    extra |= secured
                if op.get("requestBody"):
                    extra |= with_body
                    if path == "/v1/media":  # an image has its own, larger cap
                        extra["413"] = (
                            f"The body is larger than {media_limit:,} bytes (the image cap, "
                            "BROADCASTER_MEDIA_MAX_UPLOAD_BYTES, plus 64 KiB); a smaller image "
                            "over the cap gets a 422 naming `body.file`"
                        )
                if op.get("parameters"):
                    extra["422"] = with_body["422"]
                if "{" in path:
                    extra["404"] = "No such resource (or not this key's)"
                for code, description in extra.items():
                    op["responses"].setdefault(code, {"description": description, "content": problem})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
