"""An API process refuses what it cannot hold at once, with 503 and Retry-After, before reading
a byte: more than `api_max_in_flight` requests, more than `media_max_concurrent_uploads` image
uploads. A finished request frees its place; liveness and readiness always answer."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from broadcaster.api.app import create_app
from broadcaster.core.settings import reset_settings_cache


def _app_with(monkeypatch, name: str, value: str):
    monkeypatch.setenv(name, value)
    reset_settings_cache()
    yield create_app()
    monkeypatch.delenv(name)
    reset_settings_cache()


@pytest.fixture
def one_upload_at_a_time(monkeypatch):
    yield from _app_with(monkeypatch, "BROADCASTER_MEDIA_MAX_CONCURRENT_UPLOADS", "1")


@pytest.fixture
def one_request_at_a_time(monkeypatch):
    yield from _app_with(monkeypatch, "BROADCASTER_API_MAX_IN_FLIGHT", "1")


async def _while_one_is_held(app, path: str, head: bytes, tail: bytes, headers: dict, again: bytes):
    """One request held mid-body at `path`; meanwhile another (`again`) and `/healthz`; then the
    first finishes and another comes. Returns (meanwhile, health, first, after)."""
    release, started = asyncio.Event(), asyncio.Event()

    async def slow_body():
        yield head
        started.set()
        await release.wait()  # the first request is still sending its body
        yield tail

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        first = asyncio.create_task(client.post(path, content=slow_body(), headers=headers))
        await started.wait()
        meanwhile = await client.post(path, content=again, headers=headers)
        health = await client.get("/healthz")
        release.set()
        done = await first
        after = await client.post(path, content=again, headers=headers)
    return meanwhile, health, done, after


def test_a_request_past_the_in_flight_bound_gets_503_at_once_and_health_still_answers(one_request_at_a_time):
    json_body = {"Content-Type": "application/json"}
    second, health, first, third = asyncio.run(
        _while_one_is_held(
            one_request_at_a_time, "/v1/posts", b'{"text": ', b'"hello"}', json_body, b'{"text": "hi"}'
        )
    )
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "1"
    assert second.json()["detail"] == "busy: 1 requests in flight; retry after 1 s"
    assert health.status_code == 200  # exempt
    assert "requests in flight" not in first.text
    assert "requests in flight" not in third.text  # the first one's place is free again


def test_an_upload_past_the_cap_gets_503_at_once_and_a_finished_one_frees_its_place(one_upload_at_a_time):
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    second, _, first, third = asyncio.run(
        _while_one_is_held(
            one_upload_at_a_time, "/v1/media", head, b"\x89PNG not really\r\n--b--\r\n", multipart, b"x" * 10
        )
    )
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "2"
    assert "image uploads are in progress" in second.json()["detail"]
    # The others went through to the app (which answers what it answers: no brands file here).
    assert "image uploads are in progress" not in first.text
    assert "image uploads are in progress" not in third.text  # the first one's place is free again
