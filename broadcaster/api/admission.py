"""Admission control: a bounded number of requests in flight per API process.

Past the bound a request is answered at once with 503 and `Retry-After` instead of waiting in a
queue nobody bounds: offered 300 requests/s on a busy machine, the API without it queued
requests for up to 90 s and created about 90 posts whose answer never reached the client. A
refused request changed nothing, and a post retried with its `Idempotency-Key` is created once,
so the client's retry is safe. The bound sits below the thread pool that runs the routes (40
threads by default), so an admitted request starts at once.

Plain ASGI (see `LimitBody` for why); it is the outermost middleware, so a request counts from
its first byte, body upload included. Liveness and readiness answer regardless.
"""

from __future__ import annotations

from fastapi import status
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

EXEMPT = frozenset({"/healthz", "/readyz"})
RETRY_AFTER_S = 1


def busy(detail: str, retry_after_s: int) -> JSONResponse:
    """A refusal that changed nothing: 503 with the wait in `Retry-After`, so the client retries."""
    return JSONResponse(
        {"detail": detail},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(retry_after_s)},
    )


class Admission:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0  # one event loop per process: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            detail = f"busy: {self.limit} requests in flight; retry after {RETRY_AFTER_S} s"
            await busy(detail, RETRY_AFTER_S)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
