"""The cheaper `POST /v1/posts` path keeps the old behaviour: the same validation verdicts and
messages (text checked in one pass), the same 413/415 refusals (now a plain ASGI middleware),
and the API served by several uvicorn worker processes built by a factory."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient

from broadcaster.core import shaping
from broadcaster.core.brands import Brand


def _reference(channel: str, text: str, link: str | None, brand) -> str | None:
    """The per-channel check as it was before the one-pass version (exact counts every time)."""
    B = shaping
    if channel == "bluesky":
        n = B.graphemes(B.bluesky_text(text, link))
        if n > B.BLUESKY_MAX_GRAPHEMES:
            return (
                f"is {n} graphemes with its link; Bluesky allows {B.BLUESKY_MAX_GRAPHEMES} "
                "(shorten it, or leave bluesky out of channels)"
            )
        size = len(B.bluesky_text(text, link).encode())
        if size > B.BLUESKY_MAX_BYTES:
            return (
                f"is {size} bytes of UTF-8 with its link (only {n} graphemes: combining marks or "
                f"emoji sequences); Bluesky allows {B.BLUESKY_MAX_BYTES} bytes"
            )
    elif channel == "mastodon":
        cfg = getattr(brand, "mastodon", None)
        limit = cfg.max_characters if cfg else B.MASTODON_DEFAULT_MAX
        n = B.mastodon_length(B.mastodon_text(text, link), cfg.spoiler_text if cfg else None)
        if n > limit:
            return (
                f"is {n} characters as Mastodon counts them (each link 23, content warning included); "
                f"the brand's Mastodon limit is {limit}. Long posts are not split into threads: shorten it"
            )
    elif channel == "telegram":
        n = B.telegram_length(text, link)
        if n > B.TELEGRAM_MAX_CHARS:
            return f"is {n} characters with its link; Telegram allows {B.TELEGRAM_MAX_CHARS}"
    elif channel == "sms":
        cfg = getattr(brand, "sms", None)
        cap = cfg.max_segments if cfg else B.SMS_DEFAULT_MAX_SEGMENTS
        body = B.sms_text(text, link)
        if len(body) > B.SMS_MAX_BODY_CHARS:
            return f"is {len(body)} characters with its link; an SMS allows {B.SMS_MAX_BODY_CHARS}"
        n = B.sms_segments(body)
        if n > cap:
            return (
                f"needs {n} SMS segments ({B.sms_encoding(body)}, link included); the brand allows {cap} "
                "(shorten it, or avoid characters outside GSM-7 such as emoji)"
            )
    return None


def _brand(**extra) -> Brand:
    return Brand.model_validate(
        {
            "id": "acme",
            "name": "Acme",
            "api_keys": ["sha256:" + "0" * 64],
            "bluesky": {"handle": "acme.test", "app_password_env": "X"},
            "rss": {"title": "t", "link": "https://acme.example/", "description": "d"},
            "mastodon": {"instance_url": "https://m.example", "access_token_env": "Y", **extra},
            "sms": {"account_sid": "AC" + "1" * 32, "auth_token_env": "Z", "from_number": "+15550000000"},
        }
    )


ACCENT = "e\u0301"  # two code points, one grapheme
FLAG = "\U0001f1eb\U0001f1f7"  # two code points, one grapheme
TEXTS = [
    "Short and sweet",
    "a" * 299,
    "a" * 300,
    "a" * 301,
    ACCENT * 300,  # 600 code points, 300 graphemes: fits Bluesky, only an exact count can tell
    ACCENT * 301,
    FLAG * 150 + "x",
    "x" * 480 + " https://t.co/a",  # a short URL counts 23 on Mastodon: over the bound, under 500?
    "x" * 470 + " https://example.com/" + "p" * 100,  # a long URL counts only 23
    "@someone@mastodon.example " * 30,
    "café " * 100,
    "\u201cquoted\u201d \xa0 text " * 40,
    "🙂" * 100,
    "z" * 5000,
]
LINKS = [None, "https://acme.example/launch", "https://acme.example/" + "q" * 400]
CHANNELS = ["bluesky", "mastodon", "telegram", "sms", "rss"]


@pytest.mark.parametrize("brand", [None, _brand(), _brand(spoiler_text="CW " * 20, max_characters=120)])
@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("text", TEXTS)
def test_one_pass_validation_gives_the_same_verdict_and_message_as_each_channel_alone(text, link, brand):
    expected = next(
        ((c, p) for c in CHANNELS if (p := _reference(c, text, link, brand))),
        None,
    )
    assert shaping.validate_for_channels(CHANNELS, text, link, brand) == expected
    for channel in CHANNELS:
        assert shaping.validate_for_channel(channel, text, link, brand) == _reference(
            channel, text, link, brand
        )


def test_the_first_failing_channel_in_the_given_order_is_named():
    text = "🙂" * 200  # 200 graphemes fit Bluesky; in UCS-2 it needs 6 SMS segments, not 3
    assert shaping.validate_for_channels(["bluesky", "sms"], text, None)[0] == "sms"
    long = "a" * 500  # 4 GSM-7 segments, 500 graphemes
    assert shaping.validate_for_channels(["sms", "bluesky"], long, None)[0] == "sms"
    assert shaping.validate_for_channels(["bluesky", "sms"], long, None)[0] == "bluesky"
    assert shaping.validate_for_channels([], long, None) is None


def test_a_text_well_under_the_limits_is_never_segmented(monkeypatch):
    def no_segmentation(_text: str) -> int:
        raise AssertionError("grapheme segmentation ran for a short text")

    monkeypatch.setattr(shaping, "graphemes", no_segmentation)
    brand = _brand(spoiler_text="Spoilers")
    assert (
        shaping.validate_for_channels(CHANNELS, "We open at 8 tomorrow", "https://a.example/x", brand) is None
    )


# ---- body limits: a plain ASGI middleware, same answers -------------------------------------------
@pytest.fixture
def client():
    from broadcaster.api import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def test_not_json_is_415_and_a_huge_body_413_before_any_route_runs(client):
    r = client.post("/v1/posts", content=b"text=hi", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert r.json() == {"detail": "send the body as JSON (Content-Type: application/json)"}
    r = client.post("/v1/posts", content=b"x" * (64 * 1024 + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json() == {"detail": "request body is larger than 65536 bytes"}
    r = client.patch("/v1/posts/p_x", content=b"{}", headers={"Content-Length": "abc"})
    assert r.status_code == 413


def test_the_body_limits_leave_other_requests_alone(client):
    assert client.get("/healthz").status_code == 200
    # form bodies are allowed where providers call us; any answer but 415 shows it went through
    r = client.post("/v1/webhooks/twilio/status", content=b"a=b", headers={"Content-Type": "text/plain"})
    assert r.status_code != 415
    # a JSON body goes through to the route (which answers by itself: no brands file here)
    r = client.post("/v1/posts", json={"text": "hi"})
    assert r.status_code not in (413, 415)


# ---- several API processes -------------------------------------------------------------------------
@pytest.fixture
def fresh_settings(monkeypatch):
    from broadcaster.core.settings import reset_settings_cache

    monkeypatch.delenv("BROADCASTER_API_WORKERS", raising=False)
    reset_settings_cache()
    yield monkeypatch
    reset_settings_cache()


def test_the_api_command_serves_a_factory_in_the_configured_number_of_processes(fresh_settings):
    from broadcaster.api.server import uvicorn_options
    from broadcaster.core.settings import Settings, reset_settings_cache
    from broadcaster.ops.cli import build_parser

    default = Settings.model_fields["api_workers"].default
    assert default >= 2
    assert build_parser().parse_args(["api"]).workers is None
    assert uvicorn_options(None)["workers"] == default
    assert uvicorn_options(None)["factory"] is True
    fresh_settings.setenv("BROADCASTER_API_WORKERS", "3")
    reset_settings_cache()
    assert uvicorn_options(None)["workers"] == 3
    args = build_parser().parse_args(["api", "--workers", "4"])
    assert uvicorn_options(args.workers)["workers"] == 4


def test_the_api_command_hands_the_factory_and_the_workers_to_the_server(fresh_settings):
    from broadcaster.api import server
    from broadcaster.ops.cli import build_parser

    seen = {}
    fresh_settings.setattr(server, "serve", lambda app=server.APP, **kw: seen.update(app=app, **kw))
    args = build_parser().parse_args(["api", "--port", "8123", "-w", "5"])
    assert args.func(args) == 0
    assert seen["app"] == "broadcaster.api.app:create_served_app"
    assert (seen["factory"], seen["workers"], seen["port"]) == (True, 5, 8123)


def test_several_workers_share_a_socket_declared_tcp_so_connections_get_nodelay(fresh_settings):
    """uvicorn's bind_socket leaves proto 0, and asyncio then leaves Nagle on (uvicorn#3149)."""
    import asyncio

    import uvicorn.supervisors

    from broadcaster.api import server

    handed: list = []

    class FakeMultiprocess:
        def __init__(self, config, sockets):
            handed.extend(sockets)

        def run(self):
            pass

    fresh_settings.setattr(uvicorn.supervisors, "Multiprocess", FakeMultiprocess)
    server.serve(host="127.0.0.1", port=0, **server.uvicorn_options(2))
    [sock] = handed
    assert sock.proto == socket.IPPROTO_TCP
    assert sock.getsockname()[0] == "127.0.0.1"

    async def nodelay_of_an_accepted_connection() -> int:
        accepted = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                s = transport.get_extra_info("socket")
                accepted.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        srv = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, 5)
        finally:
            writer.close()
            srv.close()

    try:
        assert asyncio.run(nodelay_of_an_accepted_connection()) != 0
    finally:
        sock.close()


def test_tcp_listener_leaves_a_socket_alone_when_uvicorn_already_says_tcp():
    from broadcaster.api.server import tcp_listener

    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        assert tcp_listener(plain) is plain
    finally:
        plain.close()
    untyped = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fixed = tcp_listener(untyped)
    try:
        assert untyped.fileno() == -1  # detached: the same descriptor now lives in `fixed`
        assert fixed.proto == socket.IPPROTO_TCP
        assert fixed.get_inheritable()
    finally:
        fixed.close()


@pytest.fixture
def keep_logging():
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_factory_builds_the_whole_api_and_the_bench_adds_only_its_bare_route(keep_logging):
    from bench.api_server import create_bench_app
    from broadcaster.api import create_app, create_served_app

    served, plain, bench = create_served_app(), create_app(), create_bench_app()
    assert set(served.openapi()["paths"]) == set(plain.openapi()["paths"])
    assert "/v1/posts" in served.openapi()["paths"]
    assert set(bench.openapi()["paths"]) == set(plain.openapi()["paths"])  # bare is not documented
    with TestClient(bench) as c:
        assert c.get("/bench/bare").json() == {"ok": True}
    with TestClient(served) as c:
        assert c.get("/bench/bare").status_code == 404


def test_the_dispatcher_producer_is_built_once_per_redis():
    from broadcaster.common.queue import producer
    from broadcaster.core.settings import Settings

    s = Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0")
    assert producer(s) is producer(s)


def test_a_slow_starting_api_worker_is_not_killed_for_its_imports():
    """uvicorn kills a child that does not answer its ping within `timeout_worker_healthcheck`
    (5 s by default), and a child answers only after its imports: on a busy host the API's
    children were respawned in a loop. The option reaches uvicorn's own config."""
    import uvicorn

    from broadcaster.api.server import APP, WORKER_HEALTHCHECK_S, uvicorn_options

    config = uvicorn.Config(APP, **uvicorn_options(2))
    assert config.timeout_worker_healthcheck == WORKER_HEALTHCHECK_S >= 30
