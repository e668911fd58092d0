"""Process health and the event stream."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from broadcaster.api.deps import StoreDep, ViewerDep
from broadcaster.api.schemas import AUTH_RESPONSES

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The API process is up (says nothing about Redis or workers: see /readyz)."""
    return {"status": "ok"}


@router.get("/v1/events", responses=AUTH_RESPONSES)
def events(
    who: ViewerDep,
    store: StoreDep,
    after: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$", description="A stream id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict:
    """The brand's events (post and delivery changes, and `bluesky.*` health changes of its target),
    oldest first, after a stream id. With the admin key: every event of the deployment."""
    if after is not None and any(int(part) >= 2**64 for part in after.split("-")):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["query", "after"], "msg": "is not a stream id (64-bit parts)", "type": "value_error"}],
        )
    # The brand's own stream (same ids as the deployment's): a page costs one read, however
    # many events other brands have, and every item is the brand's, so the cursor always moves.
    items = store.events(after=after, limit=limit, brand=who.id if who is not None else None)
    return {"items": items, "next_after": items[-1]["id"] if items else after}
