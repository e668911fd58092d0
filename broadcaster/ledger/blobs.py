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
import threading
from pathlib import Path
from typing import Any, Protocol

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


class S3BlobStore:
    """Blobs as objects in one S3 bucket (AWS, MinIO or any S3-compatible endpoint), by boto3.

    The client has explicit timeouts (boto3's default read timeout is 60 s) and botocore's
    standard retries; it is thread-safe, so one is shared by a process.
    """

    def __init__(self, client: Any, bucket: str):
        self.client = client
        self.bucket = bucket

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        # Imported here: boto3 takes a quarter of a second to import, which a deployment on the
        # local store (and every API and worker start) should not pay.
        import boto3
        from botocore.config import Config as BotoConfig

        access = os.environ.get(settings.s3_access_key_env)
        secret = os.environ.get(settings.s3_secret_key_env)
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            # None: boto3's own chain (its environment variables, a profile, an instance role).
            aws_access_key_id=access or None,
            aws_secret_access_key=secret or None,
            config=BotoConfig(
                connect_timeout=settings.http_connect_timeout_s,
                read_timeout=settings.http_read_timeout_s,
                retries={"mode": "standard", "max_attempts": 3},
            ),
        )
        return cls(client, settings.s3_bucket)

    def put(self, key: str, data: bytes, mime: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=mime)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobMissing(key) from None
            raise
        data: bytes = answer["Body"].read()
        return data

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)  # S3 answers 204 for a missing key too


_S3_STORES: dict[tuple[str | None, ...], S3BlobStore] = {}
_S3_LOCK = threading.Lock()


def open_blob_store(settings: Settings) -> BlobStore:
    """The deployment's blob store, as its settings choose (`blob_store`): one S3 client per
    process and configuration (building one costs milliseconds), a local store is free."""
    if settings.blob_store == "local":
        return LocalBlobStore(settings.media_path)
    config = (
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_bucket,
        os.environ.get(settings.s3_access_key_env),
        os.environ.get(settings.s3_secret_key_env),
    )
    with _S3_LOCK:
        store = _S3_STORES.get(config)
        if store is None:
            store = _S3_STORES[config] = S3BlobStore.from_settings(settings)
    return store
