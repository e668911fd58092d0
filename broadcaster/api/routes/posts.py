"""Posts: queue, read, list, edit while scheduled, cancel while not dispatched."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response, status

from broadcaster.api.deps import BrandDep, SettingsDep, StoreDep
from broadcaster.api.schemas import (
    AUTH_RESPONSES,
    BODY_RESPONSES,
    MediaAttach,
    PostCreate,
    PostList,
    PostPublic,
    PostUpdate,
)
from broadcaster.common.queue import KICK_PENDING_MS, kick_dispatcher, kick_key, send_kick
from broadcaster.core import routing, shaping
from broadcaster.core.brands import Brand, Priority
from broadcaster.core.ids import new_post_id
from broadcaster.core.models import Delivery, MediaRef, Post, PostState, now_utc, post_state
from broadcaster.core.settings import Settings
from broadcaster.ledger.media import MediaLedger
from broadcaster.ledger.store import Conflict, Store
from channels.base import media_url

router = APIRouter(prefix="/v1/posts", tags=["posts"], responses=AUTH_RESPONSES)
log = logging.getLogger("broadcaster.api")

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Same key + same body = the same post; same key + other body = 409.",
    ),
]


def field_error(
    field: str | Sequence[str | int], msg: str, code: int = status.HTTP_422_UNPROCESSABLE_CONTENT
) -> HTTPException:
    """A 4xx shaped like FastAPI's validation errors, naming the field (or its path)."""
    loc = ["body", field] if isinstance(field, str) else ["body", *field]
    return HTTPException(code, [{"loc": loc, "msg": msg, "type": "value_error"}])


def _media_refs(brand: Brand, media: MediaLedger, attached: Sequence[MediaAttach]) -> list[MediaRef]:
    """The images a post names, as stored: each the brand's own upload, each with alt text
    unless the brand relaxed that rule."""
    found = media.load(brand.id, (m.id for m in attached))
    refs: list[MediaRef] = []
    for i, m in enumerate(attached):
        stored = found.get(m.id)
        if stored is None:
            raise field_error(("media", i, "id"), f"no image {m.id}: upload it with POST /v1/media first")
        if any(r.id == m.id for r in refs):
            raise field_error(("media", i, "id"), f"image {m.id} is attached twice")
        alt = m.alt.strip()
        if not alt and brand.require_alt_text:
            raise field_error(
                ("media", i, "alt"),
                "is required: describe the image for people who cannot see it "
                f"(brand {brand.id} requires alt text)",
            )
        refs.append(
            MediaRef(
                id=m.id, alt=alt, mime=stored.mime, width=stored.width, height=stored.height, size=stored.size
            )
        )
    return refs


def _check_channels(brand: Brand, channels: Sequence[str] | None) -> None:
    if channels:
        unknown = routing.unknown_channels(brand, channels)
        if unknown:
            raise field_error(
                "channels",
                f"brand {brand.id} has no {', '.join(unknown)} channel; it has {', '.join(brand.channels)}",
            )


def _check_text(
    brand: Brand,
    settings: Settings,
    text: str,
    link: str | None,
    channels: Sequence[str] | None,
    priority: int,
    variants: Mapping[str, str],
    media: Sequence[MediaRef] = (),
) -> None:
    """Reject at queue time what some channel this post may reach could not carry: its own
    channels and those a reroute would add, each with its variant (a 422 naming it) or the text."""
    for channel in variants:
        if channel not in brand.channels:
            raise field_error(("variants", channel), f"brand {brand.id} has no {channel} channel")
    reachable = routing.reachable_channels(brand, channels, priority)
    mms = bool(getattr(brand.sms, "mms", False))
    image_links = [] if mms else [media_url(settings, m.id) for m in media]
    # one pass, not one per channel
    found = shaping.validate_for_channels(
        reachable, text, link, brand, variants=variants, image_links=image_links
    )
    if found:
        channel, problem = found
        field: str | tuple[str, str] = ("variants", channel) if channel in variants else "text"
        raise field_error(field, f"{problem} [{channel}]")


def _check_time(settings, scheduled_at) -> None:
    if scheduled_at is not None and scheduled_at > now_utc() + timedelta(
        days=settings.max_schedule_ahead_days
    ):
        raise field_error("scheduled_at", f"is more than {settings.max_schedule_ahead_days} days ahead")


def _body_hash(body: PostCreate) -> str:
    # Without media and variants when empty: a post queued before they existed hashes the same.
    empty = {name for name in ("media", "variants") if not getattr(body, name)}
    canonical = json.dumps(body.model_dump(mode="json", exclude=empty), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _load_own(store, brand: Brand, post_id: str) -> tuple[Post, dict[str, Delivery]]:
    loaded = store.load(post_id) if post_id.startswith("p_") and len(post_id) < 64 else None
    if loaded is None or loaded[0].brand != brand.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no post {post_id}")
    return loaded


def _kick(settings, kick=None) -> None:
    try:
        (kick or kick_dispatcher)(settings)
    except Exception:  # the beat dispatcher picks it up within a second anyway
        log.warning("could not kick the dispatcher; the beat schedule will", exc_info=True)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=PostPublic,
    responses={409: {"description": "Idempotency-Key reused with another body"}, **BODY_RESPONSES},
)
def queue_post(
    body: PostCreate,
    brand: BrandDep,
    store: StoreDep,
    settings: SettingsDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> PostPublic:
    """Queue a post for the brand; it is published when due."""
    priority = int(Priority[body.priority])
    link = str(body.link) if body.link else None
    _check_channels(brand, body.channels)
    _check_time(settings, body.scheduled_at)
    media = MediaLedger(store.r, settings) if body.media else None  # most posts have no images
    refs = _media_refs(brand, media, body.media) if media is not None else []
    variants = {str(channel): text for channel, text in body.variants.items()}
    _check_text(brand, settings, body.text, link, body.channels, priority, variants, refs)
    now = _now(store)
    post = Post(
        id=new_post_id(),
        brand=brand.id,
        text=body.text,
        link=link,
        priority=priority,
        scheduled_at=body.scheduled_at or now,
        created_at=now,
        channels=list(body.channels) if body.channels else None,
        idempotency_key=idempotency_key,
        # only a replay compares it: no key, no hash kept (bytes per post, docs/benchmarks.md)
        body_hash=_body_hash(body) if idempotency_key else None,
        media=refs,
        variants=variants,
    )
    # Linked before the post exists, so the images cannot be collected under it while it is stored.
    lost = media.attach(post.id, brand.id, [m.id for m in refs], store.now()) if media else None
    if lost is not None:
        raise field_error(("media", [m.id for m in refs].index(lost), "id"), f"no image {lost} (deleted)")
    deliveries = [Delivery(channel=c) for c in routing.channels_at_queue(brand, post.channels)]
    due = post.scheduled_at <= now
    # A due post kicks the dispatcher: the create script sets the kick marker in the same
    # round trip and the task is sent only if this post set it (see broadcaster.common.queue).
    existing_id = store.create_post(
        post,
        deliveries,
        idempotency_key,
        kick_key=kick_key(settings) if due else None,
        kick_ms=KICK_PENDING_MS,
        on_kick=lambda: _kick(settings, send_kick),
    )
    if existing_id is not None:
        existing = store.load(existing_id)
        if existing is None:  # pragma: no cover - the script only answers ids that exist
            raise HTTPException(status.HTTP_409_CONFLICT, "Idempotency-Key is being used")
        if existing[0].body_hash != post.body_hash:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "Idempotency-Key was already used with a different body",
            )
        response.headers["Idempotent-Replayed"] = "true"
        return PostPublic.of(*existing)
    if not due and post.scheduled_at <= _now(store):  # became due while it was being stored
        _kick(settings)
    return PostPublic.of(post, {d.channel: d for d in deliveries})


def _now(store: Store) -> datetime:
    """Now by the deployment's clock (Redis), which the dispatcher compares due times on."""
    return datetime.fromtimestamp(store.now(), UTC)


LIST_SCAN_BUDGET = 2_000  # posts one list request reads at most (bounds its time)


def _encode_cursor(score: float, post_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{post_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        score, post_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return float(score), post_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["query", "cursor"], "msg": "is not a cursor this API gave out", "type": "value_error"}],
        ) from None


@router.get("", response_model=PostList)
def list_posts(
    brand: BrandDep,
    store: StoreDep,
    state: PostState | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> PostList:
    """The brand's posts, newest first, optionally only those in one state.

    A request reads at most `LIST_SCAN_BUDGET` posts: a rare state can answer a page with fewer
    items than `limit` (even none) and a `next_cursor` to go on from; only the last page has no
    cursor, so following the cursors returns every match.
    """
    position = _decode_cursor(cursor) if cursor else None
    items: list[PostPublic] = []
    scanned = 0
    end = False
    size = max(limit, 100)
    while len(items) < limit and scanned < LIST_SCAN_BUDGET:
        page = store.list_posts(brand.id, position, limit=size)
        scanned += len(page)
        stopped_at: int | None = None
        loaded = {p.id: (p, d) for p, d in store.load_many([pid for _, pid in page])}
        for i, (score, pid) in enumerate(page):
            position = (score, pid)
            if pid not in loaded:
                continue  # expired by retention
            post, deliveries = loaded[pid]
            if state is None or post_state(post, deliveries) == state:
                items.append(PostPublic.of(post, deliveries))
                if len(items) == limit:
                    stopped_at = i
                    break
        if len(page) < size and (stopped_at is None or stopped_at == len(page) - 1):
            end = True  # nothing older is left
            break
    next_cursor = _encode_cursor(*position) if position is not None and not end else None
    return PostList(items=items, next_cursor=next_cursor)


@router.get("/{post_id}", response_model=PostPublic, responses={404: {"description": "No such post"}})
def get_post(post_id: str, brand: BrandDep, store: StoreDep) -> PostPublic:
    """A post with its delivery to each channel."""
    return PostPublic.of(*_load_own(store, brand, post_id))


@router.patch(
    "/{post_id}",
    response_model=PostPublic,
    responses={
        404: {"description": "No such post"},
        409: {"description": "Already dispatched"},
        **BODY_RESPONSES,
    },
)
def edit_post(
    post_id: str, body: PostUpdate, brand: BrandDep, store: StoreDep, settings: SettingsDep
) -> PostPublic:
    """Change text, link, time, channels, images or variants while the post is still scheduled."""
    post, deliveries = _load_own(store, brand, post_id)
    if post_state(post, deliveries) != PostState.scheduled:
        raise HTTPException(status.HTTP_409_CONFLICT, "only a scheduled post can be edited")
    changes = body.model_dump(exclude_unset=True)
    if "text" in changes and changes["text"] is None:
        raise field_error("text", "must not be null")
    if "link" in changes:
        changes["link"] = str(changes["link"]) if changes["link"] else None
    if changes.get("scheduled_at") is None:
        changes.pop("scheduled_at", None)
    _check_channels(brand, changes.get("channels"))
    _check_time(settings, changes.get("scheduled_at"))
    if "variants" in changes:
        changes["variants"] = {str(c): t for c, t in (body.variants or {}).items()}
    media = MediaLedger(store.r, settings) if body.media else None
    if "media" in changes:
        changes["media"] = _media_refs(brand, media, body.media or []) if media is not None else []
    new = post.model_copy(update=changes)
    _check_text(brand, settings, new.text, new.link, new.channels, new.priority, new.variants, new.media)
    if media is not None:  # linked before the edit is stored, as at creation
        lost = media.attach(post.id, brand.id, [m.id for m in new.media], store.now())
        if lost is not None:
            raise field_error(("media", [m.id for m in new.media].index(lost), "id"), f"no image {lost}")
    new_deliveries = None
    if "channels" in changes:
        new_deliveries = [Delivery(channel=c) for c in routing.channels_at_queue(brand, new.channels)]
    try:
        store.edit_scheduled(new, new_deliveries)
    except Conflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    if new.scheduled_at <= _now(store):
        _kick(settings)
    return PostPublic.of(*_load_own(store, brand, post_id))


@router.delete(
    "/{post_id}",
    response_model=PostPublic,
    responses={404: {"description": "No such post"}, 409: {"description": "Already dispatched"}},
)
def cancel_post(post_id: str, brand: BrandDep, store: StoreDep) -> PostPublic:
    """Cancel a post that has not been dispatched yet."""
    post, deliveries = _load_own(store, brand, post_id)
    if post.canceled_at is not None:
        return PostPublic.of(post, deliveries)
    try:
        store.cancel(post, deliveries)
    except Conflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from None
    return PostPublic.of(*_load_own(store, brand, post_id))
