"""Real faults on the fake Bluesky's feed endpoints alone, seen by real clients over loopback.

For each mode: what httpx sees (status, headers or the connection error) and what atproto's
``Client`` raises, and that login (createSession) and createRecord keep working meanwhile.
Each switch is set both ways: ``fake.fail(...)`` and ``POST /_sandbox/fail``.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from atproto import Client, Request
from atproto.exceptions import (
    InvokeTimeoutError,
    NetworkError,
    RateLimitExceededError,
    RequestException,
)

from broadcaster.sandbox import BlueskyFake
from broadcaster.sandbox.bluesky import did_for
from broadcaster.sandbox.server import in_fraction
from tests.harness import http

HANDLE, PASSWORD = "brand.test", "app-password"
WHATS_HOT = "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.generator/whats-hot"
TIMELINE = "/xrpc/app.bsky.feed.getTimeline"


def _pick_accounts(fraction: float) -> tuple[str, str]:
    """A handle a ``fraction`` switch hits and one it spares (the choice is a fixed hash)."""
    handles = [f"user{i}.test" for i in range(100)]
    hit = next(h for h in handles if in_fraction(did_for(h), fraction))
    spared = next(h for h in handles if not in_fraction(did_for(h), fraction))
    return hit, spared


HIT, SPARED = _pick_accounts(0.5)


@pytest.fixture(scope="module")
def fake():
    f = BlueskyFake().start()
    f.start_appview()
    for handle in (HANDLE, HIT, SPARED):
        f.add_account(handle, PASSWORD)
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()
    yield
    fake.heal()


class Switcher:
    """Sets and heals a switch through the Python API or the HTTP control API."""

    def __init__(self, fake: BlueskyFake, how: str) -> None:
        self.fake, self.how = fake, how

    def fail(self, mode: str, group: str = "feeds", **opts: Any) -> dict[str, Any]:
        if self.how == "python":
            return self.fake.fail(group, mode, **opts)
        r = http.post(f"{self.fake.url}/_sandbox/fail", json={"group": group, "mode": mode, **opts})
        assert r.status_code == 200, r.text
        return r.json()["switch"]

    def heal(self, group: str = "feeds") -> None:
        if self.how == "python":
            self.fake.heal(group)
        else:
            assert http.post(f"{self.fake.url}/_sandbox/heal", json={"group": group}).status_code == 200


@pytest.fixture(params=["python", "http"])
def switch(request, fake) -> Switcher:
    return Switcher(fake, request.param)


def make_client(url: str, timeout: float = 10.0) -> Client:
    return Client(base_url=url, request=Request(timeout=httpx.Timeout(timeout)))


def logged_in(fake: BlueskyFake, handle: str = HANDLE, timeout: float = 10.0) -> Client:
    client = make_client(fake.url, timeout)
    client.login(handle, PASSWORD, fetch_bsky_profile=False)
    return client


def auth_headers(fake: BlueskyFake, handle: str = HANDLE) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.issue_tokens(did_for(handle))['accessJwt']}"}


def causes(exc: BaseException | None):
    """``exc`` and the exceptions behind it (httpx -> httpcore -> OSError)."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def assert_login_and_post_work(fake: BlueskyFake, handle: str = HANDLE) -> None:
    """A fresh login (createSession) and a post (createRecord) succeed under the feeds switch."""
    before = len(fake.posts)
    client = logged_in(fake, handle)
    ref = client.send_post(f"posting as {handle}", profile_identify=did_for(handle))
    assert ref.uri in [p["uri"] for p in fake.posts]
    assert len(fake.posts) == before + 1
    assert fake.requests.where("com.atproto.server.createSession")[-1].status == 200
    assert fake.requests.where("com.atproto.repo.createRecord")[-1].status == 200
    assert "feeds" in fake.switches  # the fault was on all along


# ----------------------------------------------------------------------------- 502 / 503
@pytest.mark.parametrize(("status", "error"), [(502, "UpstreamFailure"), (503, "NotEnoughResources")])
def test_502_and_503_on_feeds(fake, switch, status, error):
    client = logged_in(fake)
    switch.fail("error", status=status)

    r = http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake))
    assert r.status_code == status
    assert r.json()["error"] == error
    # atproto raises NetworkError for a 502 (as for a dropped connection), RequestException for a 503
    raised = NetworkError if status == 502 else RequestException
    with pytest.raises(raised) as info:
        client.get_timeline()
    assert type(info.value) is raised
    assert info.value.response.status_code == status
    assert info.value.response.content.error == error
    with pytest.raises(raised):
        client.app.bsky.feed.get_feed({"feed": WHATS_HOT})
    assert_login_and_post_work(fake)

    switch.heal()
    assert len(client.get_timeline().feed) == 1


# ----------------------------------------------------------------------------- reset
def test_reset_is_a_tcp_reset_not_an_http_answer(fake, switch):
    client = logged_in(fake)
    switch.fail("reset")

    with pytest.raises(httpx.ReadError) as raw:
        http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake))
    assert any(isinstance(exc, ConnectionResetError) for exc in causes(raw.value))  # RST, not FIN
    with pytest.raises(NetworkError) as info:
        client.get_timeline()
    assert info.value.response is None  # no HTTP answer at all
    assert isinstance(info.value.__cause__, httpx.ReadError)
    with pytest.raises(httpx.ReadError):  # the AppView's own listener too
        http.get(f"{fake.appview_url}/xrpc/app.bsky.feed.getAuthorFeed", params={"actor": HANDLE})
    rec = fake.requests.where("app.bsky.feed.getTimeline")[-1]
    assert (rec.injected, rec.status) == ("reset", None)
    assert_login_and_post_work(fake)

    switch.heal()
    assert len(client.get_timeline().feed) == 1


# ----------------------------------------------------------------------------- refused
def test_refused_closes_the_appview_port_and_the_pds_answers_502(fake, switch):
    client = logged_in(fake)
    appview = make_client(fake.appview_url)
    assert appview.get_author_feed(HANDLE).feed == []
    url = fake.appview_url
    switch.fail("refused")

    parts = urlsplit(url)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    with pytest.raises(httpx.ConnectError):
        http.get(f"{url}/xrpc/app.bsky.feed.getAuthorFeed", params={"actor": HANDLE})
    with pytest.raises(NetworkError) as refused:
        appview.get_author_feed(HANDLE)
    assert refused.value.response is None
    assert isinstance(refused.value.__cause__, httpx.ConnectError)

    with pytest.raises(NetworkError) as upstream:  # the PDS is up; its AppView is not
        client.get_timeline()
    assert upstream.value.response.status_code == 502
    assert upstream.value.response.content.error == "UpstreamFailure"
    r = http.get(
        f"{fake.url}/xrpc/app.bsky.feed.getFeed", params={"feed": WHATS_HOT}, headers=auth_headers(fake)
    )
    assert (r.status_code, r.json()) == (502, {"error": "UpstreamFailure", "message": "Upstream Failure"})
    assert fake.state()["appview_running"] is False
    assert_login_and_post_work(fake)

    switch.heal()
    assert fake.appview_url == url  # back on the same port
    assert len(appview.get_author_feed(HANDLE).feed) == 1
    assert len(client.get_timeline().feed) == 1


@pytest.mark.parametrize(
    ("group", "opts"), [("auth", {}), ("all", {}), ("feeds", {"count": 1}), ("feeds", {"fraction": 0.5})]
)
def test_refused_only_where_a_listener_of_its_own_exists(fake, group, opts):
    with pytest.raises(ValueError, match=r"refused|listener"):
        fake.fail(group, "refused", **opts)
    r = http.post(f"{fake.url}/_sandbox/fail", json={"group": group, "mode": "refused", **opts})
    assert r.status_code == 400
    assert fake.switches == {}
    assert fake.appview_running


def test_appview_listener_from_the_control_api_and_across_restart():
    fake = BlueskyFake().start()
    try:
        fake.add_account(HANDLE, PASSWORD)
        assert fake.state()["appview_url"] is None
        r = http.post(f"{fake.url}/_sandbox/setup", json={"action": "start_appview"})
        url = r.json()["result"]
        assert url == fake.appview_url == fake.state()["appview_url"]
        profile = http.get(f"{url}/xrpc/app.bsky.actor.getProfile", params={"actor": HANDLE})
        assert (profile.status_code, profile.json()["did"]) == (200, did_for(HANDLE))  # public
        assert http.get(f"{url}{TIMELINE}").status_code == 401  # the timeline needs a token
        assert http.get(f"{url}{TIMELINE}", headers=auth_headers(fake)).json() == {"feed": []}
        assert http.get(f"{url}/xrpc/app.bsky.unspecced.getConfig").status_code == 501
        assert http.get(f"{url}/xrpc/com.atproto.server.describeServer").status_code == 501
        fake.restart()
        assert fake.appview_url == url
        assert http.get(f"{url}{TIMELINE}", headers=auth_headers(fake)).status_code == 200
        fake.stop_appview()
        with pytest.raises(httpx.ConnectError):
            http.get(f"{url}{TIMELINE}", timeout=2)
        fake.fail("feeds", "refused")
        fake.heal()
        assert fake.appview_url is None  # stopped for good
    finally:
        fake.stop()


# ----------------------------------------------------------------------------- hang
def test_hang_times_out_the_client_while_login_and_posts_work(fake, switch):
    client = logged_in(fake, timeout=0.5)
    switch.fail("hang")

    with pytest.raises(InvokeTimeoutError):
        client.get_timeline()
    with pytest.raises(httpx.ReadTimeout):
        http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake), timeout=0.5)

    # one more request held open (its client waits long) while login and createRecord go on
    held: list[httpx.Response] = []
    waiter = threading.Thread(
        target=lambda: held.append(http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake), timeout=30))
    )
    waiter.start()
    deadline = time.monotonic() + 10
    while len(fake.requests.where("app.bsky.feed.getTimeline")) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert_login_and_post_work(fake)
    assert held == []  # still held: healing answers it
    switch.heal()
    waiter.join(10)
    assert [r.status_code for r in held] == [200]
    assert len(held[0].json()["feed"]) == 1
    assert fake.requests.where("app.bsky.feed.getTimeline")[-1].injected == "hang:healed"


def test_hang_answers_504_at_its_cap(fake, switch):
    switch.fail("hang", cap=0.2)
    r = http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake), timeout=10)
    assert (r.status_code, r.json()["error"]) == (504, "UpstreamTimeout")
    assert_login_and_post_work(fake)


def test_stop_releases_hung_requests_on_both_listeners():
    fake = BlueskyFake().start()
    fake.start_appview()
    fake.add_account(HANDLE, PASSWORD)
    fake.fail("feeds", "hang")  # cap 120 s: stopping must not wait for it
    urls = [f"{fake.url}{TIMELINE}", f"{fake.appview_url}{TIMELINE}"]
    results: list[Any] = []

    def hang(url: str) -> None:
        try:
            results.append(http.get(url, headers=auth_headers(fake), timeout=60).status_code)
        except httpx.HTTPError as exc:
            results.append(exc)

    workers = [threading.Thread(target=hang, args=(url,)) for url in urls]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 10
    while len(fake.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.stop()
    for worker in workers:
        worker.join(20)
    assert not any(worker.is_alive() for worker in workers)
    assert results == [503, 503]
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            http.get(url, timeout=2)


# ----------------------------------------------------------------------------- 429
def test_429_with_retry_after(fake, switch):
    client = logged_in(fake)
    switch.fail("rate_limit", retry_after=30)

    r = http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake))
    assert r.status_code == 429
    assert r.headers["retry-after"] == "30"
    with pytest.raises(RateLimitExceededError) as info:
        client.get_timeline()
    assert info.value.retry_after == 30
    assert info.value.response.content.error == "RateLimitExceeded"
    assert_login_and_post_work(fake)


def test_429_without_retry_after(fake, switch):
    client = logged_in(fake)
    switch.fail("rate_limit", retry_after=None)

    r = http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake))
    assert r.status_code == 429
    assert "retry-after" not in r.headers
    assert r.json()["error"] == "RateLimitExceeded"
    with pytest.raises(RateLimitExceededError) as info:
        client.get_timeline()
    assert info.value.retry_after is None
    assert info.value.reset_at is not None  # Bluesky's RateLimit-* headers still come
    assert_login_and_post_work(fake)


# ----------------------------------------------------------------------------- slow
def test_slow_answers_after_the_delay(fake, switch):
    client = logged_in(fake)
    client.send_post("before", profile_identify=did_for(HANDLE))
    switch.fail("slow", delay=0.3)

    started = time.monotonic()
    r = http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake), timeout=10)
    assert time.monotonic() - started >= 0.3  # cannot come sooner
    assert r.status_code == 200
    assert len(client.get_timeline().feed) == 1
    assert fake.requests.where("app.bsky.feed.getTimeline")[-1].injected == "slow"
    assert_login_and_post_work(fake)


# ----------------------------------------------------------------------------- partial
def test_partial_hits_the_same_fraction_of_accounts(fake, switch):
    sw = switch.fail("partial")
    assert sw["fraction"] == 0.5
    hit, spared = logged_in(fake, HIT), logged_in(fake, SPARED)

    for _ in range(3):  # the same accounts every time
        with pytest.raises(NetworkError) as info:
            hit.get_timeline()
        assert info.value.response.status_code == 502
        assert spared.get_timeline().feed == []
    assert http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake, HIT)).status_code == 502
    assert http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake, SPARED)).status_code == 200
    injected = [r.injected for r in fake.requests.where("app.bsky.feed.getTimeline")]
    assert injected == ["partial", "partial:pass"] * 4
    for handle in (HIT, SPARED):
        assert_login_and_post_work(fake, handle)

    switch.heal()
    assert len(hit.get_timeline().feed) == 2


def test_fraction_limits_any_mode(fake, switch):
    switch.fail("reset", fraction=0.5)
    with pytest.raises(NetworkError) as info:
        logged_in(fake, HIT).get_timeline()
    assert info.value.response is None
    assert logged_in(fake, SPARED).get_timeline().feed == []
    switch.fail("rate_limit", fraction=0.5, count=1)
    assert http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake, SPARED)).status_code == 200
    assert fake.switches["feeds"]["applied"] == 0  # a spared account does not use up count
    assert http.get(f"{fake.url}{TIMELINE}", headers=auth_headers(fake, HIT)).status_code == 429
    assert fake.switches == {}


def test_in_fraction_is_a_stable_share():
    dids = [did_for(f"account{i}.test") for i in range(1000)]
    half = [d for d in dids if in_fraction(d, 0.5)]
    assert 400 < len(half) < 600
    assert half == [d for d in dids if in_fraction(d, 0.5)]
    assert {d for d in dids if in_fraction(d, 0.1)} <= set(half)
    assert all(in_fraction(d, 1) for d in dids)
    assert not any(in_fraction(d, 0) for d in dids)
    with pytest.raises(ValueError, match="fraction"):
        BlueskyFake().fail("feeds", "partial", fraction=1.5)
