"""The Mastodon fake against the real Mastodon.py client."""

from __future__ import annotations

import time

import pytest
from mastodon import Mastodon
from mastodon.errors import (
    MastodonAPIError,
    MastodonInternalServerError,
    MastodonNetworkError,
    MastodonNotFoundError,
    MastodonRatelimitError,
    MastodonServiceUnavailableError,
    MastodonUnauthorizedError,
)

from broadcaster.sandbox import MastodonFake
from tests.harness import http, wait_for

TOKEN = "mastodon-token"


@pytest.fixture(scope="module")
def fake():
    f = MastodonFake().start()
    f.add_token(TOKEN, "brand")
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()
    yield
    fake.heal()


def client(fake, token=TOKEN, **kw) -> Mastodon:
    opts = {"ratelimit_method": "throw", "request_timeout": 1}
    opts.update(kw)
    return Mastodon(api_base_url=fake.url, access_token=token, **opts)


def test_post_status_and_recorded(fake):
    m = client(fake)
    status = m.status_post(
        "Sale <today> & tomorrow\nhttps://shop.example/x?a=1",
        visibility="unlisted",
        spoiler_text="promo",
        language="de",
    )
    assert isinstance(status.id, str)
    assert status.visibility == "unlisted"
    assert status.spoiler_text == "promo"
    assert status.sensitive is True
    assert status.language == "de"
    assert status.in_reply_to_id is None
    assert status.account.username == "brand"
    assert status.account.acct == "brand"
    assert status.url == f"{fake.url}/@brand/{status.id}"
    assert status.content.startswith("<p>Sale &lt;today&gt; &amp; tomorrow<br />")
    assert '<a href="https://shop.example/x?a=1"' in status.content

    [stored] = fake.statuses
    assert stored == {
        "id": status.id,
        "text": "Sale <today> & tomorrow\nhttps://shop.example/x?a=1",
        "visibility": "unlisted",
        "spoiler_text": "promo",
        "sensitive": True,
        "language": "de",
        "in_reply_to_id": None,
        "media_ids": [],
        "idempotency_key": None,
        "token": TOKEN,
    }
    reply = m.status_post("thread part 2", in_reply_to_id=status.id)
    assert reply.in_reply_to_id == status.id
    assert reply.in_reply_to_account_id == status.account.id
    assert m.status(status.id).id == status.id
    with pytest.raises(MastodonNotFoundError):
        m.status("1")
    assert m.account_verify_credentials().statuses_count == 2

    rec = fake.requests.where("statuses.create")[0]
    assert rec.method == "POST"
    assert rec.path == "/api/v1/statuses"
    assert rec.body["status"].startswith("Sale")
    assert rec.headers["authorization"] == f"Bearer {TOKEN}"
    assert rec.status == 200


def test_rate_limit_headers_on_every_answer(fake):
    m = client(fake)
    m.status_post("one")
    assert m.ratelimit_limit == 300
    assert m.ratelimit_remaining == 299
    assert m.ratelimit_reset > time.time()
    m.account_verify_credentials()
    assert m.ratelimit_remaining == 298


def test_version_check_and_instance_limits(fake):
    m = client(fake, version_check_mode="created")
    assert m.retrieve_mastodon_version() == "4.3.0"
    v2 = m.instance_v2()
    assert v2.configuration.statuses.max_characters == 500
    assert v2.configuration.statuses.characters_reserved_per_url == 23
    assert m.instance().version == "4.3.0"
    fake.max_characters = 1000
    assert m.instance_v2().configuration.statuses.max_characters == 1000


def test_idempotency_key_dedupes(fake):
    m = client(fake)
    first = m.status_post("only once", idempotency_key="brand:msg-1")
    again = m.status_post("only once", idempotency_key="brand:msg-1")
    other = m.status_post("only once", idempotency_key="brand:msg-2")
    assert again.id == first.id
    assert other.id != first.id
    assert [s["idempotency_key"] for s in fake.statuses] == ["brand:msg-1", "brand:msg-2"]
    assert fake.requests.where("statuses.create")[1].headers["idempotency-key"] == "brand:msg-1"
    # keys are per account
    fake.add_token("second-token", "otherbrand")
    assert client(fake, "second-token").status_post("x", idempotency_key="brand:msg-1").id != first.id


def test_unauthorized(fake):
    with pytest.raises(MastodonUnauthorizedError) as info:
        client(fake, "wrong").status_post("x")
    assert info.value.args[1] == 401
    assert info.value.args[3] == "The access token is invalid"
    with pytest.raises(MastodonUnauthorizedError):
        client(fake, None).status_post("x")


def test_validation_errors(fake):
    m = client(fake)
    with pytest.raises(MastodonAPIError) as blank:
        m.status_post("   ")
    assert blank.value.args[1] == 422
    assert blank.value.args[3] == "Validation failed: Text can't be blank"
    with pytest.raises(MastodonAPIError) as long:
        m.status_post("x" * 501)
    assert long.value.args[3] == "Validation failed: Text character limit of 500 exceeded"
    url = "https://shop.example/" + "p" * 100
    assert m.status_post("y" * 470 + " " + url)  # the URL counts as 23
    fake.max_characters = 10
    with pytest.raises(MastodonAPIError):
        m.status_post("eleven char")
    assert len(fake.statuses) == 1


def test_error_default_503_and_custom_status(fake):
    m = client(fake)
    fake.fail("statuses")
    with pytest.raises(MastodonServiceUnavailableError) as info:
        m.status_post("x")
    assert info.value.args[1] == 503
    assert m.account_verify_credentials().username == "brand"  # other endpoints unaffected
    fake.fail("statuses", "error", status=500)
    with pytest.raises(MastodonInternalServerError):
        m.status_post("x")
    fake.fail("all")
    with pytest.raises(MastodonServiceUnavailableError):
        m.account_verify_credentials()
    assert fake.statuses == []


def test_rate_limit_throws(fake):
    m = client(fake)
    fake.fail("statuses", "rate_limit", retry_after=60)
    with pytest.raises(MastodonRatelimitError):
        m.status_post("x")
    rec = fake.requests.where("statuses.create")[0]
    assert rec.status == 429
    assert rec.injected == "rate_limit"
    raw = http.post(
        f"{fake.url}/api/v1/statuses", data={"status": "x"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert raw.status_code == 429
    assert raw.json() == {"error": "Too many requests"}
    assert raw.headers["x-ratelimit-remaining"] == "0"
    assert raw.headers["retry-after"] == "60"


def test_hang_is_a_network_error(fake):
    m = client(fake)
    fake.fail("statuses", "hang")
    started = time.monotonic()
    with pytest.raises(MastodonNetworkError):
        m.status_post("x")
    assert time.monotonic() - started < 15  # the client's timeout, not the hang's 120 s cap
    # The fake has seen the client go (a heal before that would let the request through).
    wait_for(lambda: all(r.duration is not None for r in fake.requests), what="the fake to see it abandoned")
    fake.heal()
    assert m.status_post("y")
    assert [s["text"] for s in fake.statuses] == ["y"]  # the abandoned request did nothing


def test_count_fails_once_then_heals(fake):
    m = client(fake)
    fake.fail("statuses", "error", count=1)
    with pytest.raises(MastodonServiceUnavailableError):
        m.status_post("x", idempotency_key="k")
    assert m.status_post("x", idempotency_key="k")
    assert len(fake.statuses) == 1


def test_json_body_and_control_api(fake):
    r = http.post(f"{fake.url}/_sandbox/fail", json={"group": "statuses", "mode": "error", "status": 502})
    assert r.json()["switch"]["status"] == 502
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert http.post(f"{fake.url}/api/v1/statuses", json={"status": "x"}, headers=headers).status_code == 502
    http.post(f"{fake.url}/_sandbox/heal", json={"group": "statuses"})
    ok = http.post(
        f"{fake.url}/api/v1/statuses", json={"status": "json!", "visibility": "private"}, headers=headers
    )
    assert ok.status_code == 200
    assert ok.json()["visibility"] == "private"
    state = http.get(f"{fake.url}/_sandbox/state").json()
    assert state["counts"]["statuses"] == 1
    assert state["switches"] == {}
    r = http.post(
        f"{fake.url}/_sandbox/setup", json={"action": "add_token", "token": "t3", "username": "third"}
    )
    assert r.json()["result"]["username"] == "third"
    assert client(fake, "t3").account_verify_credentials().username == "third"
