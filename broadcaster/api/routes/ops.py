"""For operators and their tools: Prometheus `/metrics` and `/readyz` (is it really publishing?)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST

from broadcaster.api.deps import SettingsDep, bearer
from broadcaster.core.brands import BrandsFileError, load_brands
from broadcaster.core.settings import Settings
from broadcaster.ledger import metrics, readiness
from broadcaster.ledger.connection import get_redis

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def prometheus_metrics(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Response:
    """Deliveries, latency, failovers, backfills, probes and Bluesky health, in Prometheus format.

    Series per brand need the admin key (`Authorization: Bearer`, or `metrics_public_brands`);
    without it the counters are summed over the brands and no series names a brand."""
    admin = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""
    given = credentials.credentials if credentials else ""
    is_admin = bool(admin and given) and hmac.compare_digest(given.encode(), admin.encode())
    try:
        targets = [b.bluesky.target for b in load_brands(settings.brands_file)]
    except BrandsFileError:
        targets = []
    body = metrics.render(
        get_redis(settings), settings, targets, brands=is_admin or settings.metrics_public_brands
    )
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def brands_check(settings: Settings) -> readiness.Check:
    """Every route but the health ones answers 503 while the brands file cannot be read."""
    try:
        brands = load_brands(settings.brands_file)
    except BrandsFileError as e:
        return readiness.Check("brands", False, str(e))
    return readiness.Check("brands", True, f"{len(brands)} brands from {settings.brands_file}")


@router.get(
    "/readyz",
    responses={
        503: {"description": "Not ready: a check failed (brands file, Redis, worker, scheduler, schedule)"}
    },
)
def readyz(settings: SettingsDep) -> JSONResponse:
    """Ready only when the brands file reads, Redis answers, a worker and the scheduler are alive,
    and nothing is overdue. `reason` names what failed (for a broken brands file: the file and
    the error). `warnings` names what is wrong without stopping publishing: a probe feed that
    cannot succeed on its network (`checks.probes`)."""
    checks = [brands_check(settings), *readiness.check(get_redis(settings), settings)]
    ready = all(c.ok for c in checks if c.blocking)
    body: dict[str, object] = {
        "status": "ready" if ready else "not ready",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
    if warnings := [f"{c.name}: {c.detail}" for c in checks if not c.ok and not c.blocking]:
        body["warnings"] = warnings  # reported, but publishing works (a misconfigured probe feed)
    if not ready:
        body["reason"] = "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
    return JSONResponse(
        body, status_code=status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    )
