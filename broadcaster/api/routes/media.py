"""Images: upload one (or have it fetched from a URL) for posts to carry, and serve it publicly."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError
from starlette.datastructures import UploadFile

from broadcaster.api.deps import BrandDep, SettingsDep, StoreDep
from broadcaster.api.schemas import AUTH_RESPONSES, MediaPublic
from broadcaster.core.ids import MEDIA_ID_PATTERN, new_media_id
from broadcaster.ledger import media as media_ledger
from broadcaster.ledger.blobs import BlobMissing, open_blob_store

router = APIRouter(tags=["media"])
log = logging.getLogger("broadcaster.api")

_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"url": {"type": "string", "format": "uri", "maxLength": 2000}},
                "required": ["url"],
                "additionalProperties": False,
            }
        },
    },
}


class MediaFromUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[HttpUrl, Field(description="An image the server fetches (public addresses only).")]


def _refused(field: str, msg: str) -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, [{"loc": ["body", field], "msg": msg, "type": "value_error"}]
    )


@router.post(
    "/v1/media",
    status_code=status.HTTP_201_CREATED,
    response_model=MediaPublic,
    responses=AUTH_RESPONSES,
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def upload_media(
    request: Request, brand: BrandDep, store: StoreDep, settings: SettingsDep
) -> MediaPublic:
    """Store an image for posts to carry: a multipart upload (`file`) or JSON `{"url": ...}`.

    The type (JPEG, PNG, WebP, GIF) is read from the content; an image over Bluesky's
    1,000,000-byte limit is scaled down to fit, aspect ratio kept. The answer is what was stored.
    """
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        field = "file"
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise _refused("file", "send the image as the multipart field `file`")
        data = await upload.read(settings.media_max_upload_bytes + 1)
        if len(data) > settings.media_max_upload_bytes:
            raise _refused("file", f"is larger than {settings.media_max_upload_bytes:,} bytes")
    else:
        field = "url"
        try:
            url = str(MediaFromUrl.model_validate_json(await request.body()).url)
        except ValidationError as e:
            first = e.errors()[0]
            raise _refused(".".join(map(str, first["loc"])) or "url", first["msg"]) from None
        try:
            data = await run_in_threadpool(media_ledger.fetch, url, settings)
        except media_ledger.MediaRejected as e:
            raise _refused("url", str(e)) from None
    media = media_ledger.MediaLedger(store.r, settings)
    try:
        stored = await run_in_threadpool(
            media_ledger.ingest, media, open_blob_store(settings), brand.id, data, new_media_id(), store.now()
        )
    except media_ledger.MediaRejected as e:
        raise _refused(field, str(e)) from None
    except media_ledger.BlobStoreFailed as e:
        raise _store_unavailable(e) from None
    return MediaPublic.of(stored, settings.public_base_url)


def _store_unavailable(e: Exception) -> HTTPException:
    log.warning("the blob store failed: %s", e.__cause__ or e)
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the image store is unavailable; nothing was stored, retry shortly",
        headers={"Retry-After": "5"},
    )


@router.get(
    "/media/{media_id}",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}, 404: {"description": "No such image"}},
)
def serve_media(
    media_id: Annotated[str, Path(pattern=MEDIA_ID_PATTERN)], store: StoreDep, settings: SettingsDep
) -> Response:
    """An image posts carry (public: channels and feed readers fetch it; ids are unguessable)."""
    found = media_ledger.MediaLedger(store.r, settings).load_public(media_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image {media_id}")
    try:
        data = open_blob_store(settings).get(store.keys.media_blob(media_id))
    except BlobMissing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image {media_id}") from None
    except Exception as e:  # S3 down, a full disk, wrong credentials: an operator's problem, not a 500
        raise _store_unavailable(e) from None
    # An id's bytes never change: caches may keep them as long as they like.
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
    return Response(content=data, media_type=found.mime, headers=headers)
