"""Bluesky health per target: state, recent probes, history, and the operator's override.

Reading: a brand's key sees the target its Bluesky account depends on; the admin key
sees every target. Overriding takes the admin key.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from broadcaster.api.deps import AdminDep, BrandsDep, SettingsDep, ViewerDep
from broadcaster.common.queue import producer
from broadcaster.core.brands import Brand
from broadcaster.core.health import Health, Override
from broadcaster.core.settings import Settings
from broadcaster.ledger import health as health_store
from broadcaster.ledger.connection import get_redis

router = APIRouter(prefix="/v1/health", tags=["health"])
log = logging.getLogger("broadcaster.api")

TargetPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:\-]{1,255}$", description="e.g. bsky.social")]


class OverrideCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["down", "up", "auto"] = Field(
        description="`down`: reroute now; `up`: keep sending to Bluesky; `auto`: the probes decide."
    )
    reason: str = Field(min_length=1, max_length=500, description="Why; shown in the history and the logs.")


class OverridePublic(BaseModel):
    mode: str
    reason: str
    at: datetime | None


class TargetHealth(BaseModel):
    target: str
    pds_url: str | None
    brands: list[str]
    state: str = Field(
        description="What the probes and failed sends say: up, degraded, partial (some vantage points "
        "fail, fewer than the quorum) or down."
    )
    since: datetime | None
    effective: str = Field(description="What routing uses: the override if set, else `state`.")
    effective_since: datetime | None
    override: OverridePublic | None
    outages: int = Field(description="How many times this target went down (for the effective state).")
    window: dict[str, int] = Field(description="Recent signals: how many were seen and how many failed.")
    last_probes: list[dict]
    vantages: dict[str, dict] = Field(
        default_factory=dict,
        description="Each vantage point's last verdict (`brand`: a brand's session, `watcher:<id>`, "
        "`appview`): `ok` true, false or null (could not tell), with its error.",
    )
    misconfigured: dict[str, dict] = Field(
        default_factory=dict,
        description="Probe feeds that answer 4xx (not on this network): left out of the verdict.",
    )


class HealthList(BaseModel):
    targets: list[TargetHealth]


def _when(ts: float) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts else None


def _public(settings: Settings, target: str, h: Health, on_target: list[Brand], admin: bool) -> TargetHealth:
    r = get_redis(settings)
    override = None
    if h.override != Override.auto:
        override = OverridePublic(mode=h.override.value, reason=h.override_reason, at=_when(h.override_at))
    return TargetHealth(
        target=target,
        pds_url=on_target[0].bluesky.pds_url if on_target else None,
        brands=[b.id for b in on_target] if admin else [],
        state=h.state.value,
        since=_when(h.since),
        effective=h.effective.value,
        effective_since=_when(h.effective_since),
        override=override,
        outages=h.outage,
        window={"seen": len(h.window), "failed": h.failures},
        # Which brand's session probed is operator detail; a brand sees the outcomes only.
        last_probes=[
            p if admin else {k: v for k, v in p.items() if k != "brand"}
            for p in health_store.last_probes(r, settings, target)
        ],
        vantages={
            name: {k: v for k, v in rec.items() if k in ("at", "ok", "error", "latency_ms")}
            for name, rec in health_store.vantage_verdicts(r, settings, target).items()
        },
        misconfigured=health_store.misconfigured_checks(r, settings, target),
    )


def _targets(brands: BrandsDep) -> dict[str, list[Brand]]:
    out: dict[str, list[Brand]] = {}
    for b in sorted(brands, key=lambda b: b.id):
        out.setdefault(b.bluesky.target, []).append(b)
    return out


def _visible(target: str, who: Brand | None, targets: dict[str, list[Brand]]) -> list[Brand]:
    if target not in targets or (who is not None and who.bluesky.target != target):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no Bluesky target {target}")
    return targets[target]


@router.get("", response_model=HealthList)
def list_health(who: ViewerDep, settings: SettingsDep, brands: BrandsDep) -> HealthList:
    """Each Bluesky target's state, since when, the last probes and any override."""
    targets = _targets(brands)
    shown = sorted(targets) if who is None else [who.bluesky.target]
    r = get_redis(settings)
    return HealthList(
        targets=[
            _public(settings, t, health_store.load(r, settings, t), targets[t], who is None) for t in shown
        ]
    )


@router.get("/{target}", response_model=TargetHealth, responses={404: {"description": "Unknown target"}})
def get_health(target: TargetPath, who: ViewerDep, settings: SettingsDep, brands: BrandsDep) -> TargetHealth:
    on_target = _visible(target, who, _targets(brands))
    h = health_store.load(get_redis(settings), settings, target)
    return _public(settings, target, h, on_target, who is None)


@router.get("/{target}/history", responses={404: {"description": "Unknown target"}})
def get_history(
    target: TargetPath,
    who: ViewerDep,
    settings: SettingsDep,
    brands: BrandsDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict:
    """Transitions and overrides of the target, newest first."""
    _visible(target, who, _targets(brands))
    return {"items": health_store.history(get_redis(settings), settings, target, limit)}


@router.post(
    "/{target}/override",
    response_model=TargetHealth,
    responses={404: {"description": "Unknown target"}, 401: {"description": "Admin key required"}},
)
def set_override(
    target: TargetPath, body: OverrideCreate, _: AdminDep, settings: SettingsDep, brands: BrandsDep
) -> TargetHealth:
    """Force a target `down` (reroute now) or `up`, or hand it back to the probes with `auto`."""
    on_target = _visible(target, None, _targets(brands))
    r = get_redis(settings)
    h, transition = health_store.override(
        r, settings, target, Override(body.mode), body.reason, [b.id for b in on_target]
    )
    if transition is not None:
        try:  # act now; the next probe would catch up anyway
            producer(settings).send_task("broadcaster.health_actions", (target,), expires=60)
        except Exception:
            log.warning("could not ask the workers to act on the override of %s", target, exc_info=True)
    return _public(settings, target, h, on_target, True)
