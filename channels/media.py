"""The images of a post, as a channel sends them: each `MediaRef` with its bytes.

The bytes live in the deployment's blob store (`broadcaster.ledger.blobs`), written by the API
at upload. A missing blob (deleted, or a store that the worker cannot see) fails the post's
delivery with a message naming the image, rather than sending the post without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from broadcaster.core.models import MediaRef
from broadcaster.core.settings import Settings
from broadcaster.ledger.blobs import BlobMissing, open_blob_store
from broadcaster.ledger.keys import Keys
from channels.base import Outbound, PermanentError

EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}


@dataclass(frozen=True)
class Image:
    ref: MediaRef
    data: bytes

    @property
    def filename(self) -> str:
        return f"{self.ref.id}.{EXTENSIONS.get(self.ref.mime, 'img')}"


def load_images(settings: Settings, message: Outbound, channel: str) -> list[Image]:
    """The post's images in order, with their bytes (none: an empty list, no store opened)."""
    if not message.media:
        return []
    store = open_blob_store(settings)
    keys = Keys(settings.key_prefix)
    images = []
    for ref in message.media:
        try:
            images.append(Image(ref, store.get(keys.media_blob(ref.id))))
        except BlobMissing:
            raise PermanentError(
                f"image {ref.id} of post {message.post_id} is no longer in the blob store; "
                f"the post was not sent to {channel} without it"
            ) from None
    return images
