"""Process health and the event stream."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from broadcaster.api.deps import BrandDep, StoreDep
from broadcaster.api.schemas import AUTH_RESPONSES

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process is up (says nothing about Redis or workers: see /readyz)."""
    return {"status": "ok"}


@router.get("/v1/events", responses=AUTH_RESPONSES)
def events(
    brand: BrandDep,
    store: StoreDep,
    after: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$", description="A stream id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict:
    """The brand's events (post and delivery state changes), oldest first, after a stream id."""
    if after is not None and any(int(part) >= 2**64 for part in after.split("-")):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["query", "after"], "msg": "is not a stream id (64-bit parts)", "type": "value_error"}],
        )
    own: dict[str, bool] = {}

    def mine(e: dict) -> bool:
        if e.get("brand"):
            return e["brand"] == brand.id
        pid = e.get("post")
        if not pid:
            return False
        if pid not in own:
            loaded = store.load(pid)
            own[pid] = loaded is not None and loaded[0].brand == brand.id
        return own[pid]

    items = store.events(after=after, limit=limit, match=mine)
    return {"items": items, "next_after": items[-1]["id"] if items else after}
