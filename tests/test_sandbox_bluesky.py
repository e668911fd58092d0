"""The Bluesky fake against the real atproto Client."""

from __future__ import annotations

import time

import httpx
import pytest
from atproto import Client, SessionEvent, client_utils
from atproto.exceptions import (
    BadRequestError,
    InvokeTimeoutError,
    NetworkError,
    RateLimitExceededError,
    RequestException,
    UnauthorizedError,
)

from broadcaster.sandbox import BlueskyFake
from broadcaster.sandbox.bluesky import TID_RE
from channels.bluesky import atproto_request  # the product's: on the process's one TLS context
from tests.harness import http

HANDLE, PASSWORD = "brand.test", "app-password"
WHATS_HOT = "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.generator/whats-hot"
POST = "app.bsky.feed.post"


@pytest.fixture(scope="module")
def fake():
    f = BlueskyFake().start()
    f.add_account(HANDLE, PASSWORD)
    f.add_account("other.test", "pw2")
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()
    yield
    fake.heal()


@pytest.fixture
def did(fake):
    return fake.add_account(HANDLE, PASSWORD)


def make_client(fake, timeout=10.0) -> Client:
    return Client(base_url=fake.url, request=atproto_request(httpx.Timeout(timeout)))


def logged_in(fake, timeout=10.0) -> Client:
    client = make_client(fake, timeout)
    client.login(HANDLE, PASSWORD, fetch_bsky_profile=False)
    return client


def test_did_is_plc_shaped(fake, did):
    assert did.startswith("did:plc:")
    assert len(did) == len("did:plc:") + 24
    assert did == fake.add_account(HANDLE, PASSWORD)  # stable per handle


def test_login_post_and_read_back(fake, did):
    client = logged_in(fake)
    assert client._session.did == did
    tb = (
        client_utils.TextBuilder().text("Sale ").link("shop", "https://ex.com").text(" ").tag("#deal", "deal")
    )
    ref = client.send_post(tb, profile_identify=did)
    rkey = ref.uri.rsplit("/", 1)[1]
    assert ref.uri == f"at://{did}/{POST}/{rkey}"
    assert TID_RE.match(rkey)
    assert ref.cid.startswith("bafyrei")

    [post] = fake.posts
    assert post["uri"] == ref.uri
    assert post["text"] == "Sale shop #deal"
    assert post["handle"] == HANDLE
    assert post["rkey"] == rkey
    assert {f["features"][0]["$type"] for f in post["facets"]} == {
        "app.bsky.richtext.facet#link",
        "app.bsky.richtext.facet#tag",
    }
    assert post["createdAt"]

    timeline = client.get_timeline(limit=10)
    assert [item.post.uri for item in timeline.feed] == [ref.uri]
    assert timeline.feed[0].post.author.handle == HANDLE
    feed = client.app.bsky.feed.get_feed({"feed": WHATS_HOT, "limit": 30})
    assert feed.feed[0].post.record.text == "Sale shop #deal"
    assert client.get_author_feed(HANDLE).feed[0].post.uri == ref.uri
    assert client.get_author_feed("other.test").feed == []

    record = client.com.atproto.repo.get_record({"repo": did, "collection": POST, "rkey": rkey})
    assert record.uri == ref.uri
    assert record.value.text == "Sale shop #deal"

    assert fake.session_creations == {HANDLE: 1}
    create = fake.requests.where("com.atproto.repo.createRecord")[0]
    assert create.method == "POST"
    assert create.status == 200
    assert create.headers["authorization"].startswith("Bearer ")
    assert create.body["repo"] == did
    assert create.body["record"]["text"] == "Sale shop #deal"
    assert create.t > 0
    assert create.at > 1_600_000_000


def test_login_with_profile_and_by_did(fake, did):
    client = make_client(fake)
    profile = client.login(HANDLE, PASSWORD)
    assert profile.did == did
    assert profile.handle == HANDLE
    client2 = make_client(fake)
    client2.login(did, PASSWORD, fetch_bsky_profile=False)
    assert client2._session.handle == HANDLE
    assert fake.session_creations[HANDLE] == 2
    session = client2.com.atproto.server.get_session()
    assert session.did == did


def test_wrong_password_is_401(fake):
    with pytest.raises(UnauthorizedError) as info:
        make_client(fake).login(HANDLE, "nope", fetch_bsky_profile=False)
    assert info.value.response.status_code == 401
    assert info.value.response.content.error == "AuthenticationRequired"
    assert info.value.response.content.message == "Invalid identifier or password"


def test_session_has_no_did_doc_and_base_url_stays(fake):
    client = logged_in(fake)
    assert client._base_url == f"{fake.url}/xrpc"
    body = fake.requests.where("com.atproto.server.createSession")[0]
    assert body.status == 200
    raw = http.post(
        f"{fake.url}/xrpc/com.atproto.server.createSession",
        json={"identifier": HANDLE, "password": PASSWORD},
    ).json()
    assert set(raw) == {"accessJwt", "refreshJwt", "handle", "did", "active"}


def test_feeds_outage_502_while_login_and_writes_work(fake, did):
    fake.fail("feeds")
    client = logged_in(fake)
    with pytest.raises(NetworkError) as info:
        client.get_timeline(limit=1)
    assert info.value.response.status_code == 502
    assert info.value.response.content.error == "UpstreamFailure"
    with pytest.raises(NetworkError):
        client.app.bsky.feed.get_feed({"feed": WHATS_HOT})
    with pytest.raises(NetworkError):
        make_client(fake).login(HANDLE, PASSWORD)  # fetches the profile from the AppView
    assert client.send_post("still posting", profile_identify=did).uri
    assert client.com.atproto.server.get_session().did == did
    assert [p["text"] for p in fake.posts] == ["still posting"]
    fake.heal("feeds")
    assert len(client.get_timeline().feed) == 1


def test_hang_times_out_on_the_client(fake, did):
    client = logged_in(fake, timeout=1.0)
    fake.fail("feeds", "hang")
    started = time.monotonic()
    with pytest.raises(InvokeTimeoutError):
        client.get_timeline()
    assert 0.9 < time.monotonic() - started < 15  # the client's timeout, not the hang's 120 s cap
    deadline = time.monotonic() + 30
    rec = fake.requests.where("app.bsky.feed.getTimeline")[-1]
    while rec.injected != "hang:abandoned" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rec.injected == "hang:abandoned"
    assert rec.status is None
    fake.heal()
    assert client.get_timeline().feed == []


def test_slow_answers_after_the_delay(fake, did):
    client = logged_in(fake)
    fake.fail("feeds", "slow", delay=0.3)
    started = time.monotonic()
    assert client.get_timeline().feed == []
    assert time.monotonic() - started >= 0.3


def test_duplicate_rkey_is_500_and_get_record_finds_it(fake, did):
    client = logged_in(fake)
    rkey = "3jzfcijpj2z2a"
    data = {
        "repo": did,
        "collection": POST,
        "rkey": rkey,
        "record": {"$type": POST, "text": "once", "createdAt": "2025-01-01T00:00:00Z"},
    }
    ref = client.com.atproto.repo.create_record(data)
    assert ref.uri == f"at://{did}/{POST}/{rkey}"
    with pytest.raises(RequestException) as info:
        client.com.atproto.repo.create_record(data)
    assert not isinstance(info.value, NetworkError)
    assert info.value.response.status_code == 500
    assert info.value.response.content.error == "InternalServerError"
    assert len(fake.posts) == 1
    got = client.com.atproto.repo.get_record({"repo": HANDLE, "collection": POST, "rkey": rkey})
    assert got.cid == ref.cid
    with pytest.raises(BadRequestError) as missing:
        client.com.atproto.repo.get_record({"repo": did, "collection": POST, "rkey": "3jzfcijpj2z2b"})
    assert missing.value.response.content.error == "RecordNotFound"
    assert (
        missing.value.response.content.message == f"Could not locate record: at://{did}/{POST}/3jzfcijpj2z2b"
    )

    client.com.atproto.repo.delete_record({"repo": did, "collection": POST, "rkey": rkey})
    assert fake.posts == []


def test_invalid_tid_is_rejected(fake, did):
    client = logged_in(fake)
    with pytest.raises(BadRequestError) as info:
        client.com.atproto.repo.create_record(
            {
                "repo": did,
                "collection": POST,
                "rkey": "notatid",
                "record": {"text": "x", "createdAt": "2025-01-01T00:00:00Z"},
            }
        )
    assert info.value.response.content.error == "InvalidRequest"
    assert info.value.response.content.message == "Invalid TID string"


def test_300_graphemes_not_codepoints(fake, did):
    client = logged_in(fake)
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one grapheme, 5 code points
    assert client.send_post(family * 300, profile_identify=did).uri
    with pytest.raises(BadRequestError) as info:
        client.send_post("a" * 301, profile_identify=did)
    assert info.value.response.content.message == "Record/text must not be longer than 300 graphemes"
    assert len(fake.posts) == 1


def test_short_access_ttl_forces_refresh(fake, did):
    fake.access_ttl = 60  # < the client's 15-minute refresh margin
    events = []
    client = make_client(fake)
    client.on_session_change(lambda event, session: events.append(event))
    client.login(HANDLE, PASSWORD, fetch_bsky_profile=False)
    first_access = client._session.access_jwt
    client.send_post("after refresh", profile_identify=did)
    assert events == [SessionEvent.CREATE, SessionEvent.REFRESH]
    assert client._session.access_jwt != first_access
    refresh = fake.requests.where("com.atproto.server.refreshSession")
    assert len(refresh) == 1
    assert refresh[0].status == 200
    assert fake.session_creations == {HANDLE: 1}


def test_revoked_sessions_answer_401_expired_token(fake, did):
    old = logged_in(fake)
    fake.revoke_sessions(HANDLE)
    with pytest.raises(UnauthorizedError) as info:
        old.com.atproto.server.get_session()
    assert info.value.response.status_code == 401
    assert info.value.response.content.error == "ExpiredToken"
    with pytest.raises(UnauthorizedError):  # the refresh token too
        old._refresh_and_set_session()
    assert logged_in(fake).com.atproto.server.get_session().did == did  # a new session works


def test_expired_and_bad_tokens(fake, did):
    fake.access_ttl = -5
    tokens = fake.issue_tokens(did)
    url = f"{fake.url}/xrpc/com.atproto.server.getSession"
    expired = http.get(url, headers={"Authorization": f"Bearer {tokens['accessJwt']}"})
    assert expired.status_code == 400
    assert expired.json()["error"] == "ExpiredToken"
    assert http.get(url).status_code == 401
    bad = http.get(url, headers={"Authorization": "Bearer a.b.c"})
    assert bad.json()["error"] == "InvalidToken"
    wrong_kind = http.get(url, headers={"Authorization": f"Bearer {tokens['refreshJwt']}"})
    assert wrong_kind.json()["error"] == "InvalidToken"


def test_rate_limit_headers(fake, did):
    client = logged_in(fake)
    fake.fail("all", "rate_limit", retry_after=30)
    with pytest.raises(RateLimitExceededError) as info:
        client.get_timeline()
    err = info.value
    assert err.response.status_code == 429
    assert err.remaining == 0
    assert err.limit == 3000
    assert err.policy == "3000;w=300"
    assert err.retry_after == 30
    assert err.reset_at.timestamp() > time.time() + 20


def test_count_fails_once_then_heals(fake, did):
    client = logged_in(fake)
    fake.fail("write", "error", count=1)
    with pytest.raises(RequestException) as info:
        client.send_post("first try", profile_identify=did)
    assert info.value.response.status_code == 500
    assert fake.switches == {}
    assert client.send_post("second try", profile_identify=did).uri
    assert [p["text"] for p in fake.posts] == ["second try"]


def test_auth_group_blocks_login(fake):
    fake.fail("auth", "error", status=503)
    with pytest.raises(RequestException) as info:
        make_client(fake).login(HANDLE, PASSWORD, fetch_bsky_profile=False)
    assert info.value.response.status_code == 503
    assert info.value.response.content.error == "NotEnoughResources"


def test_flaky_is_seeded(fake, did):
    client = logged_in(fake)

    def pattern():
        fake.fail("feeds", "flaky", rate=0.5, seed=7)
        out = []
        for _ in range(20):
            try:
                client.get_timeline()
                out.append(True)
            except NetworkError:
                out.append(False)
        return out

    first, second = pattern(), pattern()
    assert first == second
    assert 0 < first.count(False) < 20


def test_timeline_paginates_newest_first(fake, did):
    client = logged_in(fake)
    uris = [client.send_post(f"post {i}", profile_identify=did).uri for i in range(5)]
    page1 = client.get_timeline(limit=2)
    page2 = client.get_timeline(limit=2, cursor=page1.cursor)
    page3 = client.get_timeline(limit=2, cursor=page2.cursor)
    got = [i.post.uri for i in page1.feed + page2.feed + page3.feed]
    assert got == list(reversed(uris))
    assert page3.cursor is None


def test_control_api(fake, did):
    client = logged_in(fake)
    r = http.post(f"{fake.url}/_sandbox/fail", json={"group": "feeds", "mode": "error", "status": 503})
    assert r.status_code == 200
    with pytest.raises(RequestException) as info:
        client.get_timeline()
    assert info.value.response.status_code == 503
    state = http.get(f"{fake.url}/_sandbox/state").json()
    assert state["switches"]["feeds"]["mode"] == "error"
    assert state["counts"]["requests"] == 2
    assert http.post(f"{fake.url}/_sandbox/fail", json={"group": "nope"}).status_code == 400
    assert http.post(f"{fake.url}/_sandbox/heal", json={}).json()["switches"] == {}
    assert client.get_timeline().feed == []
    r = http.post(
        f"{fake.url}/_sandbox/setup", json={"action": "add_account", "handle": "third.test", "password": "p3"}
    )
    assert r.json()["result"].startswith("did:plc:")
    make_client(fake).login("third.test", "p3", fetch_bsky_profile=False)
    client.send_post("hi", profile_identify=did)
    assert http.get(f"{fake.url}/_sandbox/items").json()["items"][0]["text"] == "hi"
    assert http.get(f"{fake.url}/_sandbox/requests?limit=1").json()["requests"][0]["status"] == 200
    http.post(f"{fake.url}/_sandbox/reset")
    assert fake.posts == []
    assert len(fake.requests) == 0
