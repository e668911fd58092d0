"""Public RSS and Atom feeds of each brand, with ETag and Last-Modified for cheap polling."""

from __future__ import annotations

from email.utils import format_datetime, parsedate_to_datetime

from fastapi import APIRouter, HTTPException, Request, Response, status

from broadcaster.api.deps import BrandsDep, SettingsDep, StoreDep
from broadcaster.core.feeds import Format, build_feed, feed_etag, last_modified

router = APIRouter(tags=["feeds"])

FEED_RESPONSES: dict[int | str, dict] = {
    304: {"description": "Not modified since the ETag / date you sent"},
    404: {"description": "No such brand"},
    503: {"description": "Redis is unavailable; retry later"},
}
MEDIA = {"rss": "application/rss+xml; charset=utf-8", "atom": "application/atom+xml; charset=utf-8"}


def _serve(brand_id: str, fmt: Format, request: Request, brands, store, settings) -> Response:
    brand = brands.get(brand_id)
    if brand is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no feed for brand {brand_id}")
    entries = store.rss_entries(brand.id, settings.rss_max_entries)
    etag = feed_etag(brand.id, entries, fmt)
    modified = last_modified(entries)
    headers = {
        "ETag": etag,
        "Last-Modified": format_datetime(modified, usegmt=True),
        "Cache-Control": "public, max-age=60",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        if etag in [t.strip() for t in if_none_match.split(",")] or if_none_match.strip() == "*":
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
    elif since := request.headers.get("if-modified-since"):
        try:
            if modified <= parsedate_to_datetime(since):
                return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        except (TypeError, ValueError):
            pass  # an unreadable date is ignored, as RFC 9110 says
    body = build_feed(brand, entries, settings.public_base_url, fmt)
    return Response(content=body, media_type=MEDIA[fmt], headers=headers)


@router.get(
    "/feeds/{brand_id}.rss",
    response_class=Response,
    responses=FEED_RESPONSES | {200: {"content": {"application/rss+xml": {}}}},
)
def rss_feed(brand_id: str, request: Request, brands: BrandsDep, store: StoreDep, settings: SettingsDep):
    """The brand's RSS 2.0 feed, newest first."""
    return _serve(brand_id, "rss", request, brands, store, settings)


@router.get(
    "/feeds/{brand_id}.atom",
    response_class=Response,
    responses=FEED_RESPONSES | {200: {"content": {"application/atom+xml": {}}}},
)
def atom_feed(brand_id: str, request: Request, brands: BrandsDep, store: StoreDep, settings: SettingsDep):
    """The brand's Atom feed, newest first."""
    return _serve(brand_id, "atom", request, brands, store, settings)
