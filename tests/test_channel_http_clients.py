"""What the channels' HTTP clients skip per request, and what they must still do.

Mastodon.py's answers stay plain JSON: against the Mastodon fake over HTTP, the same requests,
errors and rate limits as Mastodon.py, without its casting of every answer into typed objects
(the channel's largest CPU cost). The Mastodon and Twilio sessions read proxies and the CA
bundle from the environment once. httpcore (Telegram) finds sniffio instead of failing to
import it on every request.
"""

from __future__ import annotations

import importlib.util
import time
from datetime import UTC, datetime
from email.utils import formatdate

import mastodon.internals
import pytest
from mastodon import Mastodon
from mastodon.errors import MastodonAPIError, MastodonRatelimitError, MastodonUnauthorizedError

from channels.mastodon import LeanMastodon, _pooled_session
from channels.sms import _HttpClient

TOKEN = "lean-token"


@pytest.fixture
def fake(sandbox):
    """The suite's Mastodon fake, with an account of these tests' own."""
    sandbox.mastodon.add_token(TOKEN, "leanbrand")
    yield sandbox.mastodon
    sandbox.mastodon.heal()


def stored(fake, status_id: str) -> dict:
    [status] = [s for s in fake.statuses if s["id"] == status_id]
    return status


def lean(fake, token: str = TOKEN) -> LeanMastodon:
    return LeanMastodon(
        api_base_url=fake.url,
        access_token=token,
        ratelimit_method="throw",
        request_timeout=2,
        session=_pooled_session(fake.url),
    )


def test_the_hook_it_overrides_is_still_mastodon_py_s_cast():
    # If a Mastodon.py release renames its private cast, this fails instead of the client
    # silently going back to casting every answer.
    assert "_Mastodon__try_cast_to_type" in vars(mastodon.internals.Mastodon)


def test_a_status_comes_back_as_the_plain_json_the_instance_sent(fake):
    status = lean(fake).status_post("plain answers", visibility="unlisted", idempotency_key="b:p1:mastodon")
    assert type(status) is dict
    assert stored(fake, status["id"])["text"] == "plain answers"
    assert status["url"] == f"{fake.url}/@leanbrand/{status['id']}"
    assert status["created_at"].endswith("Z")  # a string, not a parsed datetime
    again = lean(fake).status_post("plain answers", visibility="unlisted", idempotency_key="b:p1:mastodon")
    assert again["id"] == status["id"]  # the Idempotency-Key still goes out
    assert lean(fake).account_verify_credentials()["acct"] == "leanbrand"


def test_errors_and_rate_limits_are_still_mastodon_py_s(fake):
    with pytest.raises(MastodonUnauthorizedError) as info:
        lean(fake, "wrong").status_post("x")
    assert info.value.args[3] == "The access token is invalid"
    with pytest.raises(MastodonAPIError) as blank:
        lean(fake).status_post("")
    assert blank.value.args[1] == 422
    fake.fail("statuses", "rate_limit", retry_after=3, count=1)
    client = lean(fake)
    with pytest.raises(MastodonRatelimitError):
        client.status_post("limited")
    assert client.ratelimit_remaining is not None


def test_the_rate_limit_reset_is_the_one_mastodon_py_computes_itself(fake):
    """The session reads `X-RateLimit-Reset` and `Date` with the standard library and hands
    Mastodon.py an epoch; Mastodon.py alone reads both with dateutil. A server clock an hour
    behind: either way the reset is 300 s after the answer on this machine's clock."""
    server_now = time.time() - 3600
    reset = datetime.fromtimestamp(server_now + 300.25, UTC).isoformat(timespec="milliseconds")
    headers = {"X-RateLimit-Reset": reset.replace("+00:00", "Z"), "Date": formatdate(server_now, usegmt=True)}
    ahead = datetime.fromisoformat(reset).timestamp() - int(server_now)  # Date has whole seconds
    alone = Mastodon(
        api_base_url=fake.url,
        access_token=TOKEN,
        ratelimit_method="throw",
        request_timeout=2,
        mastodon_version="4.3.0",
        version_check_mode="none",
    )
    for client, rounding in ((alone, 0), (lean(fake), 1)):
        fake.fail("statuses", "odd_headers", headers=headers, count=1)
        before = time.time()
        client.status_post("reset check", visibility="unlisted")
        after = time.time()
        assert before + ahead <= client.ratelimit_reset <= after + ahead + rounding


def test_the_environment_is_read_once_for_the_instance(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp.pem")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = _pooled_session("https://social.example")
    assert session.trust_env is False  # requests does not re-read it per request
    assert session.proxies["https"] == "http://proxy.internal:3128"
    assert session.verify == "/etc/ssl/corp.pem"
    monkeypatch.setenv("NO_PROXY", "social.example")
    assert _pooled_session("https://social.example").proxies == {}


def test_the_twilio_session_reads_the_environment_once_for_its_base_url(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    http = _HttpClient(2.0, 5.0, "https://api.twilio.com")
    assert http.session.trust_env is False
    assert http.session.proxies["https"] == "http://proxy.internal:3128"
    assert _HttpClient(2.0, 5.0, "http://localhost:9000").session.proxies == {}  # NO_PROXY honoured
    assert http.timeout == (2.0, 5.0)


def test_httpcore_finds_sniffio():
    # Without it httpcore's current_async_library() retries a failed import on every request.
    assert importlib.util.find_spec("sniffio") is not None
