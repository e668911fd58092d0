"""A brand's outgoing webhooks: register a URL for some events, list, delete, see outcomes.

Under `/v1/hooks` (not `/v1/webhooks/`, where providers such as Twilio call *us*).
The signing secret is shown once, in the answer to the registration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, Field

from broadcaster.api.deps import BrandDep, SettingsDep, StoreDep
from broadcaster.ledger import hooks as webhooks
from broadcaster.ledger.hooks import EventName, Hook, HookDelivery, HookStore, WebhookURLError

router = APIRouter(prefix="/v1/hooks", tags=["webhooks"])


class HookCreate(BaseModel):
    url: str = Field(max_length=2000, examples=["https://hooks.acme.example/broadcaster"])
    events: list[EventName] = Field(min_length=1, examples=[["post.failed", "bluesky.down"]])


class HookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: datetime

    @classmethod
    def of(cls, hook: Hook) -> HookPublic:
        return cls(id=hook.id, url=hook.url, events=hook.events, created_at=hook.created_at)


class HookCreated(HookPublic):
    secret: str = Field(description="HMAC-SHA256 key for X-Broadcaster-Signature; shown only now")


class HookDeliveryPublic(BaseModel):
    id: str
    event: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None

    @classmethod
    def of(cls, d: HookDelivery) -> HookDeliveryPublic:
        return cls(**d.model_dump(include=set(cls.model_fields)))


def _hooks(store) -> HookStore:
    return HookStore(store.r, store.settings)


def _own(store, brand, hook_id: str) -> Hook:
    hook = _hooks(store).get(brand.id, hook_id) if len(hook_id) < 64 else None
    if hook is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook {hook_id}")
    return hook


@router.post("", status_code=status.HTTP_201_CREATED, response_model=HookCreated)
def register(body: HookCreate, brand: BrandDep, store: StoreDep, settings: SettingsDep) -> HookCreated:
    """Register a URL to receive the chosen events, signed with the secret returned here."""
    try:
        webhooks.check_url(body.url, settings.webhooks_allow_private)
    except WebhookURLError as e:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "url"], "msg": str(e), "type": "value_error"}],
        ) from None
    hooks = _hooks(store)
    if hooks.count(brand.id) >= settings.webhooks_per_brand:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"a brand may have {settings.webhooks_per_brand} webhooks; delete one"
        )
    hook = hooks.create(brand.id, body.url, body.events)
    return HookCreated(**HookPublic.of(hook).model_dump(), secret=hook.secret)


@router.get("", response_model=list[HookPublic])
def list_hooks(brand: BrandDep, store: StoreDep) -> list[HookPublic]:
    """The brand's webhooks (secrets are never shown again)."""
    return [HookPublic.of(h) for h in _hooks(store).list(brand.id)]


@router.get("/{hook_id}", response_model=HookPublic, responses={404: {"description": "No such webhook"}})
def get_hook(hook_id: str, brand: BrandDep, store: StoreDep) -> HookPublic:
    return HookPublic.of(_own(store, brand, hook_id))


@router.delete("/{hook_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_hook(hook_id: str, brand: BrandDep, store: StoreDep) -> Response:
    """Stop sending to this URL (deliveries still queued are dropped)."""
    _own(store, brand, hook_id)
    _hooks(store).delete(brand.id, hook_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{hook_id}/deliveries", response_model=list[HookDeliveryPublic])
def deliveries(
    hook_id: str,
    brand: BrandDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[HookDeliveryPublic]:
    """Recent deliveries to this webhook, newest first, with their outcome."""
    _own(store, brand, hook_id)
    return [HookDeliveryPublic.of(d) for d in _hooks(store).deliveries(brand.id, hook_id, limit)]
