"""SMS: the brand's subscriber list, and Twilio's delivery reports.

Subscribers are managed with the brand's API key; numbers are validated and stored as
E.164, and an invalid number rejects the whole request with a 422 naming it. These
answers are the only place full numbers are shown, and only to the brand that owns them.

Twilio POSTs each message's status (queued -> sent -> delivered / undelivered) to
`/v1/webhooks/twilio/status?post=<id>`, signed with `X-Twilio-Signature` (HMAC-SHA1 of
the full URL and the form fields, keyed by the account's auth token). The URL checked is
`BROADCASTER_PUBLIC_BASE_URL` + path, i.e. what Twilio was told to call; an unsigned or
wrongly signed request gets 403 and changes nothing.
"""

from __future__ import annotations

import logging
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from twilio.request_validator import RequestValidator

from broadcaster.api.deps import BrandDep, BrandsDep, SettingsDep, StoreDep
from broadcaster.core.brands import Brand, Brands, MissingSecret, SmsConfig, read_secret
from broadcaster.ledger.recipients import Recipients
from broadcaster.ledger.subscribers import InvalidNumbers, Subscribers, normalize_all

router = APIRouter(tags=["sms"])
log = logging.getLogger("broadcaster.api")

STATUS_PATH = "/v1/webhooks/twilio/status"


NO_SMS: dict[int | str, dict] = {404: {"description": "The brand has no SMS channel configured"}}


class NumbersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    numbers: list[Annotated[str, Field(max_length=40)]] = Field(
        min_length=1,
        max_length=1000,
        description="Phone numbers, E.164 (+15551230123) or national with the brand's default region.",
    )


class SubscribersAdded(BaseModel):
    added: list[str]
    already: list[str]
    count: int


class SubscribersRemoved(BaseModel):
    removed: list[str]
    not_subscribed: list[str]
    count: int


class SubscriberList(BaseModel):
    count: int
    numbers: list[str]


def _sms(brand: Brand) -> SmsConfig:
    if brand.sms is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"brand {brand.id} has no SMS channel configured")
    return brand.sms


def _normalized(cfg: SmsConfig, numbers: list[str]) -> list[str]:
    try:
        return normalize_all(numbers, cfg.default_region)
    except InvalidNumbers as e:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [
                {"loc": ["body", "numbers", i], "msg": f"{raw!r} {e.problems[raw]}", "type": "value_error"}
                for i, raw in enumerate(numbers)
                if raw in e.problems
            ],
        ) from None


@router.post("/v1/sms/subscribers", responses=NO_SMS, response_model=SubscribersAdded)
def add_subscribers(
    body: NumbersIn, brand: BrandDep, store: StoreDep, settings: SettingsDep
) -> SubscribersAdded:
    """Subscribe numbers to the brand's SMS alerts (all or none: one invalid number rejects the request)."""
    numbers = _normalized(_sms(brand), body.numbers)
    change = Subscribers(store.r, settings, brand.id).add(numbers)
    store.add_event("sms.subscribed", brand=brand.id, count=str(len(change.changed)))
    return SubscribersAdded(added=change.changed, already=change.unchanged, count=change.count)


@router.delete("/v1/sms/subscribers", responses=NO_SMS, response_model=SubscribersRemoved)
def remove_subscribers(
    body: NumbersIn, brand: BrandDep, store: StoreDep, settings: SettingsDep
) -> SubscribersRemoved:
    """Unsubscribe numbers (send them in the JSON body, like for adding)."""
    numbers = _normalized(_sms(brand), body.numbers)
    change = Subscribers(store.r, settings, brand.id).remove(numbers)
    store.add_event("sms.unsubscribed", brand=brand.id, count=str(len(change.changed)))
    return SubscribersRemoved(removed=change.changed, not_subscribed=change.unchanged, count=change.count)


@router.get("/v1/sms/subscribers", responses=NO_SMS, response_model=SubscriberList)
def list_subscribers(brand: BrandDep, store: StoreDep, settings: SettingsDep) -> SubscriberList:
    """The brand's subscribers (full numbers: this answer goes only to the brand itself)."""
    _sms(brand)
    numbers = Subscribers(store.r, settings, brand.id).all()
    return SubscriberList(count=len(numbers), numbers=numbers)


# ---- Twilio status callbacks -------------------------------------------------------------------
async def form_fields(request: Request) -> dict[str, str]:
    """Twilio posts application/x-www-form-urlencoded; parsed here, no multipart dependency."""
    raw = await request.body()
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def _forbidden(why: str) -> HTTPException:
    return HTTPException(status.HTTP_403_FORBIDDEN, f"not a valid Twilio request: {why}")


def _auth_token(brands: Brands, account_sid: str) -> str | None:
    for brand in brands:
        if brand.sms is not None and brand.sms.account_sid == account_sid:
            try:
                return read_secret(brand.sms.auth_token_env, f"Twilio auth token of {brand.id}")
            except MissingSecret:
                log.error("cannot verify Twilio callbacks for %s: its auth token is not set", brand.id)
                return None
    return None


@router.post(
    STATUS_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: {"description": "Missing or wrong X-Twilio-Signature"}},
)
def twilio_status(
    request: Request,
    fields: Annotated[dict[str, str], Depends(form_fields)],
    brands: BrandsDep,
    store: StoreDep,
    settings: SettingsDep,
) -> Response:
    """Twilio's report on one message: updates that recipient's status on the post's SMS delivery."""
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature:
        raise _forbidden("X-Twilio-Signature is missing")
    token = _auth_token(brands, fields.get("AccountSid", ""))
    url = settings.public_base_url.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    if token is None or not RequestValidator(token).validate(url, fields, signature):
        raise _forbidden("X-Twilio-Signature does not match")
    post_id = request.query_params.get("post", "")
    loaded = store.load(post_id) if post_id.startswith("p_") and len(post_id) < 64 else None
    brand = brands.get(loaded[0].brand) if loaded else None
    if not (loaded and brand and brand.sms and brand.sms.account_sid == fields.get("AccountSid")):
        log.info("Twilio status for an unknown post or another account; ignored")
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    rc = Recipients(store.r, settings, post_id, "sms")
    if rc.set_status(fields.get("To", ""), fields.get("MessageStatus", ""), fields.get("ErrorCode") or None):
        summary = rc.public(settings.recipients_shown)
        store.set_recipients(post_id, "sms", summary)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
