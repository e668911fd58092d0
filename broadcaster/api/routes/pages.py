"""The brand's public page, `/b/<brand>`: HTML for followers, no key, no JavaScript.

Short-lived public caching (`max-age` below) keeps a crowd arriving from an outage notice off
Redis, while the status it shows is at most that many seconds old.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from broadcaster.api.deps import BrandsDep, SettingsDep, StoreDep
from broadcaster.core import brand_page
from broadcaster.ledger import health as health_store
from broadcaster.ledger.connection import get_redis

router = APIRouter(tags=["pages"])

MAX_AGE_S = 30
POSTS_SHOWN = 10
_templates = Environment(
    loader=PackageLoader("broadcaster.api", "templates"), autoescape=select_autoescape(default=True)
)
_templates.globals.update(when=brand_page.when, iso=brand_page.iso)


@router.get(
    "/b/{brand_id}",
    response_class=HTMLResponse,
    responses={404: {"description": "No such brand (an HTML page says so)"}},
)
def brand_page_html(
    brand_id: str, request: Request, brands: BrandsDep, store: StoreDep, settings: SettingsDep
) -> HTMLResponse:
    """The brand's public page: is Bluesky working for it, where to read it now, its latest posts."""
    brand = brands.get(brand_id)
    if brand is None:
        body = _templates.get_template("not_found.html").render(lang="en", brand_id=brand_id)
        return HTMLResponse(body, status_code=404, headers={"Cache-Control": f"public, max-age={MAX_AGE_S}"})
    h = health_store.load(get_redis(settings), settings, brand.bluesky.target)
    status = brand_page.status(brand, h.effective, h.effective_since)
    posts = _latest_posts(store, brand.id)
    updated = max([status.since, *(p["at"] for p in posts)])
    body = _templates.get_template("brand.html").render(
        lang=brand.rss.language,
        brand=brand,
        status=status,
        links=brand_page.where_to_find(brand, f"/feeds/{brand.id}.rss"),
        posts=posts,
        updated=updated,
    )
    return HTMLResponse(body, headers={"Cache-Control": f"public, max-age={MAX_AGE_S}"})


def _latest_posts(store, brand_id: str) -> list[dict[str, Any]]:
    """The newest posts that reached the audience somewhere, newest first (media if the model has it)."""
    ids = [pid for _, pid in store.list_posts(brand_id, None, POSTS_SHOWN * 3)]
    shown = []
    for post, deliveries in store.load_many(ids):
        at = brand_page.published_at(post, deliveries)
        if at is not None:
            shown.append(
                {"text": post.text, "link": post.link, "at": at, "media": getattr(post, "media", [])}
            )
    return sorted(shown, key=lambda p: p["at"], reverse=True)[:POSTS_SHOWN]
