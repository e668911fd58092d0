"""Hostile input (issue 15): bodies that lie about their size, values that cannot be encoded,
URLs with control characters. Each gets a short 4xx naming what is wrong, never a 500."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import ACME, auth
from tests.harness import free_port, wait_for

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def served(stack) -> Iterator[str]:
    """The app under a real uvicorn on 127.0.0.1, configured like the stack's workers."""
    from broadcaster.api import create_app

    with _serving(create_app()) as url:
        yield url


@contextlib.contextmanager
def _serving(app) -> Iterator[str]:
    """`app` under a real uvicorn on a free port of 127.0.0.1, for as long as the block runs."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def _chunked(head: bytes, filler: int, tail: bytes) -> Iterator[bytes]:
    """A body with no Content-Length: httpx sends a generator with Transfer-Encoding: chunked."""
    yield head
    for _ in range(filler // 65536):
        yield b"x" * 65536
    yield tail


BIG = 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/posts", auth(ACME) | JSON),
        ("POST", "/v1/posts", JSON),  # no API key: still never read past the limit
        ("DELETE", "/v1/sms/subscribers", auth(ACME) | JSON),
        ("POST", "/v1/webhooks/twilio/status?post=p_x", FORM),  # unauthenticated, form-encoded
    ],
)
def test_a_chunked_body_over_the_limit_is_413_with_a_short_answer(served, method, path, headers):
    with httpx.Client(base_url=served, timeout=30) as client:
        r = client.request(method, path, content=_chunked(b'{"text": "', BIG, b'"}'), headers=headers)
    assert r.status_code == 413, r.text[:200]
    assert r.json() == {"detail": f"request body is larger than {LIMIT} bytes"}


def test_a_chunked_body_that_is_not_json_is_415(served):
    with httpx.Client(base_url=served, timeout=30) as client:
        r = client.post(
            "/v1/posts",
            content=iter([b"text=", b"hi"]),
            headers=auth(ACME) | {"Content-Type": "text/plain"},
        )
    assert r.status_code == 415, r.text[:200]


def test_a_chunked_body_under_the_limit_reaches_the_route(served):
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    body = f'{{"text": "sent in chunks", "scheduled_at": "{later}"}}'.encode()
    with httpx.Client(base_url=served, timeout=30) as client:
        r = client.post("/v1/posts", content=iter([body[:7], body[7:]]), headers=auth(ACME) | JSON)
        assert r.status_code == 202, r.text
        assert r.json()["text"] == "sent in chunks"
        assert client.delete(f"/v1/posts/{r.json()['id']}", headers=auth(ACME)).status_code == 200


def test_the_413_comes_once_the_limit_is_read_while_the_body_is_still_open(served):
    """The server answers without waiting for the rest: the body never ends here."""
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(
            b"POST /v1/posts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 8192
        for _ in range(LIMIT // len(chunk) + 1):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = s.recv(4096)  # fails with a timeout if the server waits for the end of the body
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]


def test_a_422_echoes_only_a_short_prefix_of_the_input(api):
    r = api.post("/v1/posts", json={"text": "y" * 60_000}, headers=auth(ACME))
    assert r.status_code == 422
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "text"]
    assert error["input"].startswith("yyyy")
    assert len(error["input"]) <= 101
    assert len(r.content) < 1000


# ---- a lone surrogate: valid JSON, not valid Unicode ----------------------------------------------
def _json_body_routes() -> list[tuple[str, str, list[str]]]:
    """Every route taking a JSON body, with its body's top-level fields (from the OpenAPI schema)."""
    from broadcaster.api import create_app

    schema = create_app().openapi()
    components = schema["components"]["schemas"]
    found = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                body = content["application/json"]["schema"]
                if "$ref" in body:  # a model; POST /v1/media documents its two bodies inline
                    body = components[body["$ref"].rsplit("/", 1)[1]]
                found.append((method.upper(), path, sorted(body["properties"])))
    return found


BODY_ROUTES = _json_body_routes()


def test_the_body_routes_are_found():
    assert {(m, p) for m, p, _ in BODY_ROUTES} >= {
        ("POST", "/v1/posts"),
        ("PATCH", "/v1/posts/{post_id}"),
        ("POST", "/v1/media"),
        ("POST", "/v1/hooks"),
        ("POST", "/v1/sms/subscribers"),
        ("DELETE", "/v1/sms/subscribers"),
    }


@pytest.mark.parametrize(("method", "path", "fields"), BODY_ROUTES, ids=lambda v: str(v))
def test_a_lone_surrogate_in_any_field_of_any_body_route_is_a_422_naming_it(api, method, path, fields):
    url = path.replace("{post_id}", "p_01ABCDEFGHJKMNPQRSTVWXYZ00").replace("{target}", "bsky.social")
    for field in fields:
        for value in ('"x\\ud800"', '["x\\udfff"]'):
            body = f'{{"{field}": {value}}}'.encode()
            r = api.request(method, url, content=body, headers=auth(ACME) | JSON)
            assert r.status_code == 422, (field, value, r.status_code, r.text[:300])
            locs = [e["loc"] for e in r.json()["detail"]]
            assert ["body", field] in locs or ["body", field, 0] in locs, (field, value, locs)
    r = api.request(method, url, content=b'{"\\ud800": 1}', headers=auth(ACME) | JSON)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["detail"][0]["loc"] == ["body", "\\ud800"]


def test_a_surrogate_pair_is_one_character_and_welcome(api):
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    body = f'{{"text": "smile \\ud83d\\ude00", "scheduled_at": "{later}"}}'.encode()
    r = api.post("/v1/posts", content=body, headers=auth(ACME) | JSON)
    assert r.status_code == 202, r.text
    assert r.json()["text"] == "smile \U0001f600"
    assert api.delete(f"/v1/posts/{r.json()['id']}", headers=auth(ACME)).status_code == 200


# ---- webhook URLs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook\r\nX-Injected: 1",
        "http://127.0.0.1:9/hook\n",
        "http://127.0.0.1:9/a b",
        "http://127.0.0.1:9/hook\x01",
    ],
)
def test_a_webhook_url_with_whitespace_or_control_characters_is_a_422_naming_url(api, url):
    r = api.post("/v1/hooks", json={"url": url, "events": ["post.failed"]}, headers=auth(ACME))
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["loc"] == ["body", "url"]
    assert "whitespace or control characters" in error["msg"]


@pytest.fixture
def served_with_two_slots(stack, monkeypatch) -> Iterator[str]:
    """The app under a real uvicorn, admitting two requests at a time."""
    from broadcaster.api import create_app
    from broadcaster.core.settings import reset_settings_cache

    monkeypatch.setenv("BROADCASTER_API_MAX_IN_FLIGHT", "2")
    reset_settings_cache()
    app = create_app()
    monkeypatch.delenv("BROADCASTER_API_MAX_IN_FLIGHT")
    reset_settings_cache()
    with _serving(app) as url:
        yield url


def test_past_its_bound_the_api_answers_503_at_once_and_a_keyed_retry_is_safe(served_with_two_slots):
    url = served_with_two_slots
    port = int(url.rsplit(":", 1)[1])
    body = b'{"text": "a slow upload", "channels": ["rss"]}'
    head = (
        f"POST /v1/posts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ACME.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
    try:
        for s in slow:  # two uploads under way hold both slots
            s.sendall(head + body[:10])
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_for(
                lambda: client.get("/v1/posts?limit=1", headers=auth(ACME)).status_code == 503,
                what="both slots taken",
            )
            key = {"Idempotency-Key": f"busy-{uuid.uuid4().hex}"}
            text = f"refused while busy {uuid.uuid4().hex[:8]}"
            busy = client.post("/v1/posts", json={"text": text}, headers=auth(ACME) | key)
            assert busy.status_code == 503
            assert busy.headers["Retry-After"] == "1"
            assert "busy" in busy.json()["detail"]
            assert client.get("/healthz").status_code == 200  # liveness answers regardless
            for s in slow:  # the admitted uploads finish and are answered
                s.sendall(body[10:])
                assert s.recv(65536).startswith(b"HTTP/1.1 202")
            first = client.post("/v1/posts", json={"text": text}, headers=auth(ACME) | key)
            again = client.post("/v1/posts", json={"text": text}, headers=auth(ACME) | key)
        assert first.status_code == again.status_code == 202
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json()["id"] == first.json()["id"]  # the retry made one post
    finally:
        for s in slow:
            s.close()
