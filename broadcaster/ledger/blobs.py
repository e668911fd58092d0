"""Where image bytes live: a local directory on one machine, S3-compatible storage for several.

Redis keeps each image's metadata (`broadcaster.ledger.media`); the bytes go to a blob store
under `Keys.media_blob(media_id)`. The API writes them at upload and serves them at
`GET /media/{id}`; the channels read them when they send. Every process of a deployment must
see the same store: one machine can use the local directory (`media_dir`); API and workers
on several machines need shared object storage (`blob_store = "s3"`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from broadcaster.core.settings import Settings


class BlobMissing(KeyError):
    """Raised by `get` for a key the store does not hold (never written, or deleted)."""


class BlobStore(Protocol):
    """Bytes by key. `put` overwrites; `delete` of a missing key is not an error."""

    def put(self, key: str, data: bytes, mime: str) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...


class LocalBlobStore:
    """Blobs as files under one directory (a key's `:` become `/`), written atomically."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, key: str) -> Path:
        parts = [p for p in key.replace(":", "/").split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root.joinpath(*parts)

    def put(self, key: str, data: bytes, mime: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader never sees half an image, a crash leaves no torn file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def open_blob_store(settings: Settings) -> BlobStore:
    """The deployment's blob store, as its settings choose (`blob_store`)."""
    return LocalBlobStore(settings.media_path)
