"""The S3 blob store against a real S3 API server on loopback (moto's server mode, not a mock
of the client): boto3 speaks HTTP to it exactly as to AWS or MinIO. Then the whole media path
(upload, serve, collect) with `blob_store = s3`."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import boto3
import pytest
from PIL import Image

from broadcaster.core.settings import Settings, reset_settings_cache
from broadcaster.ledger.blobs import BlobMissing, S3BlobStore, open_blob_store
from tests.conftest import ACME, auth
from tests.harness import free_port

pytestmark = pytest.mark.integration

BUCKET = "broadcaster-test-media"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", **_lower(CREDENTIALS)).create_bucket(
        Bucket=BUCKET
    )
    yield url
    server.stop()


def _lower(creds: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> str:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    return s3_server


def _settings(url: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, blob_store="s3", s3_endpoint_url=url, s3_bucket=BUCKET, s3_region="us-east-1"
    )


def test_the_s3_store_puts_gets_and_deletes_objects_on_a_real_s3_api(s3_env):
    store = open_blob_store(_settings(s3_env))
    assert isinstance(store, S3BlobStore)
    store.put("fbtest:media:med_1", b"\x89PNG bytes", "image/png")
    raw = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1", **_lower(CREDENTIALS))
    head = raw.head_object(Bucket=BUCKET, Key="fbtest:media:med_1")
    assert head["ContentType"] == "image/png"
    assert store.get("fbtest:media:med_1") == b"\x89PNG bytes"
    store.delete("fbtest:media:med_1")
    with pytest.raises(BlobMissing):
        store.get("fbtest:media:med_1")
    store.delete("fbtest:media:med_1")  # deleting what is gone is not an error


def test_a_missing_bucket_is_an_error_not_a_missing_blob(s3_env):
    from botocore.exceptions import ClientError

    store = open_blob_store(_settings(s3_env).model_copy(update={"s3_bucket": "no-such-bucket"}))
    with pytest.raises(ClientError) as raised:
        store.get("fbtest:media:med_x")
    assert raised.value.response["Error"]["Code"] == "NoSuchBucket"


def test_an_unused_upload_is_deleted_from_the_bucket(s3_env, direct_redis):
    from broadcaster.core.images import ImageInfo
    from broadcaster.ledger.keys import Keys
    from broadcaster.ledger.media import MediaLedger
    from tests import channel_direct

    settings = _settings(s3_env).model_copy(
        update={"key_prefix": channel_direct.PREFIX, "media_unattached_ttl_s": 60.0}
    )
    store = open_blob_store(settings)
    ledger = MediaLedger(direct_redis, settings)
    key = Keys(channel_direct.PREFIX).media_blob("med_s3gc")
    store.put(key, b"bytes", "image/png")
    ledger.record("med_s3gc", "acme", ImageInfo("image/png", 1, 1, 5), now=1000)
    assert ledger.collect(store, now=1030) == 0
    assert store.get(key) == b"bytes"
    assert ledger.collect(store, now=1061) == 1
    with pytest.raises(BlobMissing):
        store.get(key)


def test_the_media_api_stores_and_serves_images_from_s3(stack, s3_env, monkeypatch):
    from fastapi.testclient import TestClient

    from broadcaster.api import create_app

    monkeypatch.setenv("BROADCASTER_BLOB_STORE", "s3")
    monkeypatch.setenv("BROADCASTER_S3_ENDPOINT_URL", s3_env)
    monkeypatch.setenv("BROADCASTER_S3_BUCKET", BUCKET)
    reset_settings_cache()
    try:
        buf = io.BytesIO()
        Image.new("RGB", (20, 10), (1, 2, 3)).save(buf, "WEBP")
        with TestClient(create_app()) as api:
            r = api.post(
                "/v1/media", files={"file": ("x.webp", buf.getvalue(), "image/webp")}, headers=auth(ACME)
            )
            assert r.status_code == 201, r.text
            media_id = r.json()["id"]
            served = api.get(f"/media/{media_id}")
            assert served.status_code == 200
            assert served.content == buf.getvalue()
        key = f"{os.environ['BROADCASTER_KEY_PREFIX']}media:{media_id}"
        raw = boto3.client("s3", endpoint_url=s3_env, region_name="us-east-1", **_lower(CREDENTIALS))
        assert raw.get_object(Bucket=BUCKET, Key=key)["Body"].read() == buf.getvalue()
    finally:
        monkeypatch.undo()
        reset_settings_cache()


def test_an_unreachable_store_is_a_503_and_nothing_is_recorded(stack, monkeypatch):
    from fastapi.testclient import TestClient

    from broadcaster.api import create_app

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BROADCASTER_BLOB_STORE", "s3")
    monkeypatch.setenv("BROADCASTER_S3_ENDPOINT_URL", dead)
    reset_settings_cache()
    try:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "PNG")
        # This stack's media records only (other xdist workers upload beside it); a set, since
        # its worker may collect an old upload meanwhile: what matters is that none is added.
        metas = stack.store().keys.media_meta("*")
        before = set(stack.redis.scan_iter(match=metas))
        with TestClient(create_app()) as api:
            r = api.post(
                "/v1/media", files={"file": ("x.png", buf.getvalue(), "image/png")}, headers=auth(ACME)
            )
            assert r.status_code == 503, r.text
            assert "image store is unavailable" in r.json()["detail"]
            assert r.headers["retry-after"] == "5"
            served = api.get("/media/med_00000000000000000000000000")
            assert served.status_code == 404  # an unknown id is answered from Redis alone
        assert set(stack.redis.scan_iter(match=metas)) - before == set()
    finally:
        monkeypatch.undo()
        reset_settings_cache()
