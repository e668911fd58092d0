"""Shared dependencies, as `Annotated` aliases so a route's signature reads as domain language.

They are `async def` although none awaits: FastAPI runs a plain `def` dependency in its
thread pool, a thread hop per dependency per request (profiled: with four of them on
`POST /v1/posts`, more CPU than the route's own work). None of them blocks: the settings
are cached, a `Store` only wraps the pooled connection, and the brands file is re-read only
when its modification time changes (a `stat` per request otherwise).
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broadcaster.core.brands import Brand, Brands, load_brands
from broadcaster.core.settings import Settings, get_settings
from broadcaster.ledger.connection import get_redis
from broadcaster.ledger.store import Store

bearer = HTTPBearer(auto_error=False, description="A brand's API key")


async def settings_dep() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(settings_dep)]


async def store_dep(settings: SettingsDep) -> Store:
    return Store(get_redis(settings), settings)


StoreDep = Annotated[Store, Depends(store_dep)]


async def brands_dep(settings: SettingsDep) -> Brands:
    return load_brands(settings.brands_file)


BrandsDep = Annotated[Brands, Depends(brands_dep)]

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def brand_dep(
    brands: BrandsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Brand:
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API key: send 'Authorization: Bearer <brand key>'",
            headers=_UNAUTHORIZED,
        )
    brand = brands.by_api_key(credentials.credentials)
    if brand is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key", headers=_UNAUTHORIZED)
    return brand


BrandDep = Annotated[Brand, Depends(brand_dep)]


async def admin_dep(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    expected = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""
    if not expected:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "admin endpoints are off: set BROADCASTER_ADMIN_API_KEY"
        )
    given = credentials.credentials if credentials else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "admin API key required", headers=_UNAUTHORIZED)


AdminDep = Annotated[None, Depends(admin_dep)]


async def viewer(
    settings: SettingsDep,
    brands: BrandsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Brand | None:
    """The brand whose key was given, or None for the admin key (an operator sees every brand)."""
    given = credentials.credentials if credentials else ""
    admin = settings.admin_api_key.get_secret_value() if settings.admin_api_key else ""
    if admin and given and hmac.compare_digest(given.encode(), admin.encode()):
        return None
    brand = brands.by_api_key(given) if given else None
    if brand is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "send 'Authorization: Bearer <brand or admin key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return brand


ViewerDep = Annotated[Brand | None, Depends(viewer)]


def request_id(request: Request) -> str:
    return request.headers.get("x-request-id", "")


# ---- bodies every route refuses ------------------------------------------------------------------
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_at(value: Any) -> tuple[tuple[str | int, ...], str] | None:
    """Where a parsed JSON value holds a lone surrogate (`"\\ud800"` decodes to one), and that
    string (a value or a key), or None.

    UTF-8 cannot encode it: Redis, the logs and our own 422 would all fail on it. A valid pair
    (an emoji written as two escapes) is decoded to one character and is fine.
    """
    todo: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while todo:  # no recursion: a deeply nested body must not exhaust the stack
        path, v = todo.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return path, v
        elif isinstance(v, dict):
            for key, item in v.items():
                if _SURROGATE.search(key):
                    return (*path, key), key
                todo.append(((*path, key), item))
        elif isinstance(v, list):
            todo.extend(((*path, i), item) for i, item in enumerate(v))
    return None


async def valid_unicode_body(request: Request) -> None:
    """Refuse a JSON body holding a lone surrogate with a 422 naming the field, on every route."""
    if "json" not in request.headers.get("content-type", "") or not await request.body():
        return
    try:
        parsed = await request.json()  # parsed once: FastAPI has already done it, Starlette caches it
    except ValueError:
        return  # FastAPI answers a body that is not JSON itself
    found = lone_surrogate_at(parsed)
    if found is not None:
        path, text = found
        raise RequestValidationError(
            [
                {
                    "type": "string_unicode",
                    "loc": ("body", *path),
                    "msg": "must be valid Unicode text: a lone surrogate (U+D800 to U+DFFF) cannot be stored",
                    "input": text,
                }
            ]
        )
