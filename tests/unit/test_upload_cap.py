"""`POST /v1/media` holds at most `media_max_concurrent_uploads` images at once per API process:
past it a 503 with Retry-After before a byte is read; a finished upload frees its place."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from broadcaster.api.app import create_app
from broadcaster.core.settings import reset_settings_cache


@pytest.fixture
def one_upload_at_a_time(monkeypatch):
    monkeypatch.setenv("BROADCASTER_MEDIA_MAX_CONCURRENT_UPLOADS", "1")
    reset_settings_cache()
    yield create_app()
    monkeypatch.delenv("BROADCASTER_MEDIA_MAX_CONCURRENT_UPLOADS")
    reset_settings_cache()


def test_an_upload_past_the_cap_gets_503_at_once_and_a_finished_one_frees_its_place(one_upload_at_a_time):
    app = one_upload_at_a_time

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        release = asyncio.Event()
        started = asyncio.Event()

        async def slow_body():
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            started.set()
            await release.wait()  # the first upload is still streaming its image
            yield b"\x89PNG not really\r\n--b--\r\n"

        multipart = {"Content-Type": "multipart/form-data; boundary=b"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            first = asyncio.create_task(client.post("/v1/media", content=slow_body(), headers=multipart))
            await started.wait()
            second = await client.post("/v1/media", content=b"x" * 10, headers=multipart)
            release.set()
            done = await first
            third = await client.post("/v1/media", content=b"x" * 10, headers=multipart)
        return second, done, third

    second, first, third = asyncio.run(scenario())
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "2"
    assert "image uploads are in progress" in second.json()["detail"]
    # The others went through to the app (which answers what it answers: no brands file here).
    assert "image uploads are in progress" not in first.text
    assert "image uploads are in progress" not in third.text  # the first one's place is free again
