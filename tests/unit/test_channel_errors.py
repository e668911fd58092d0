"""Each client library's errors map to our typed errors: retry, retry later, give up, or per recipient."""

from __future__ import annotations

import time
import warnings

import httpx
import pytest
import requests
from mastodon.errors import (
    MastodonAPIError,
    MastodonInternalServerError,
    MastodonNetworkError,
    MastodonNotFoundError,
    MastodonRatelimitError,
    MastodonUnauthorizedError,
)
from telegram.error import BadRequest, ChatMigrated, Forbidden, NetworkError, RetryAfter, TimedOut
from twilio.base.exceptions import TwilioRestException

from broadcaster.ledger import recipients
from channels import mastodon, sms, telegram
from channels.base import PermanentError, RateLimited, TransientError

URI = "/2010-04-01/Accounts/AC1/Messages.json"


def api_error(cls, status: int, text: str | None = None):
    return cls("Mastodon API returned error", status, "Reason", text)


# ---- Mastodon ------------------------------------------------------------------------------------
def test_mastodon_rate_limit_waits_until_the_reset_the_server_announced():
    e = mastodon.map_error(MastodonRatelimitError("Hit rate limit."), "acme", "posting", time.time() + 30)
    assert isinstance(e, RateLimited)
    assert 28 <= e.retry_after <= 30


def test_mastodon_rate_limit_without_a_reset_waits_a_minute():
    e = mastodon.map_error(MastodonRatelimitError("Hit rate limit."), "acme", "posting")
    assert isinstance(e, RateLimited)
    assert e.retry_after == mastodon.DEFAULT_RATE_LIMIT_WAIT_S


def test_mastodon_timeouts_and_5xx_are_transient():
    net = mastodon.map_error(
        MastodonNetworkError("Could not complete request: Read timed out"), "acme", "posting"
    )
    server = mastodon.map_error(api_error(MastodonInternalServerError, 500), "acme", "posting")
    assert isinstance(net, TransientError)
    assert isinstance(server, TransientError)
    assert "500" in server.message


def test_mastodon_bad_token_is_permanent_and_names_the_brand():
    e = mastodon.map_error(
        api_error(MastodonUnauthorizedError, 401, "The access token is invalid"), "acme", "posting"
    )
    assert isinstance(e, PermanentError)
    assert e.message == "Mastodon rejected the access token for brand acme"


def test_mastodon_rejected_content_is_permanent_with_the_instances_reason():
    e = mastodon.map_error(
        api_error(MastodonAPIError, 422, "Validation failed: Text can't be blank"), "acme", "posting"
    )
    assert isinstance(e, PermanentError)
    assert "422 Validation failed: Text can't be blank" in e.message


def test_mastodon_forbidden_and_not_found_point_at_the_configuration():
    forbidden = mastodon.map_error(
        api_error(MastodonAPIError, 403, "This action is not allowed"), "acme", "posting"
    )
    missing = mastodon.map_error(api_error(MastodonNotFoundError, 404, "Record not found"), "acme", "posting")
    assert "write:statuses" in forbidden.message
    assert "instance_url" in missing.message
    assert forbidden.permanent
    assert missing.permanent


def test_mastodon_idempotency_key_is_the_same_for_every_retry_of_a_post():
    assert (
        mastodon.idempotency_key("acme", "p_1")
        == mastodon.idempotency_key("acme", "p_1")
        == "acme:p_1:mastodon"
    )
    assert mastodon.idempotency_key("acme", "p_1") != mastodon.idempotency_key("acme", "p_2")


# ---- Telegram ------------------------------------------------------------------------------------
def raised(exc: Exception, cause: Exception | None = None) -> Exception:
    try:
        raise exc from cause
    except Exception as e:
        return e


def test_telegram_errors_answered_by_the_server_were_certainly_not_sent():
    assert telegram.certainly_not_sent(raised(NetworkError("Internal Server Error (500)")))


def test_telegram_connection_failures_were_certainly_not_sent():
    assert telegram.certainly_not_sent(
        raised(NetworkError("httpx.ConnectError"), httpx.ConnectError("refused"))
    )
    assert telegram.certainly_not_sent(raised(TimedOut(), httpx.ConnectTimeout("slow connect")))
    assert telegram.certainly_not_sent(raised(TimedOut("Pool timeout"), httpx.PoolTimeout("pool")))


def test_telegram_a_read_timeout_may_have_been_delivered():
    assert not telegram.certainly_not_sent(raised(TimedOut(), httpx.ReadTimeout("no answer")))
    assert not telegram.certainly_not_sent(raised(NetworkError("httpx.ReadError"), httpx.ReadError("reset")))


def test_telegram_flood_control_gives_its_wait_in_seconds():
    with warnings.catch_warnings():  # PTB warns when it builds the error itself (int -> timedelta)
        warnings.simplefilter("ignore")
        flood = RetryAfter(7)
    assert telegram.retry_after_s(flood) == 7.0


def test_telegram_per_chat_errors_read_as_instructions():
    assert "blocked, removed, or not an admin" in telegram.chat_error(
        Forbidden("Forbidden: bot was kicked"), "@a"
    )
    migrated = telegram.chat_error(ChatMigrated(-100123), "-42")
    assert "-100123" in migrated
    assert "brands file" in migrated
    assert "chat not found" in telegram.chat_error(BadRequest("Chat not found"), "@a").lower()


def test_telegram_chat_ids_go_back_to_numbers_or_channel_names():
    assert telegram.chat_ref("-1001234") == -1001234
    assert telegram.chat_ref("42") == 42
    assert telegram.chat_ref("@brand") == "@brand"


# ---- Twilio --------------------------------------------------------------------------------------
def twilio_error(status: int, code: int | None, msg: str = "") -> TwilioRestException:
    return TwilioRestException(status, URI, f"Unable to create record: {msg}", code=code, method="POST")


def test_twilio_21610_means_the_recipient_opted_out_and_is_not_retried():
    a = sms.classify(
        twilio_error(400, 21610, "Attempt to send to unsubscribed recipient"), "+1201***0123", "acme"
    )
    assert a.state == recipients.OPTED_OUT
    assert a.retry is None
    assert a.fatal is None


@pytest.mark.parametrize("code", [21211, 21614, 21608])
def test_twilio_bad_recipient_codes_fail_that_recipient_only(code):
    a = sms.classify(
        twilio_error(400, code, "The 'To' number +12015550123 is not valid."), "+1201***0123", "acme"
    )
    assert a.state == recipients.FAILED
    assert a.fatal is None
    assert a.retry is None
    assert str(code) in a.error
    assert "+12015550123" not in a.error  # the number is masked in what the ledger keeps
    assert "+1201***0123" in a.error


def test_twilio_bad_credentials_fail_the_whole_delivery_naming_the_brand():
    a = sms.classify(twilio_error(401, 20003, "Authenticate"), "+1201***0123", "acme")
    assert isinstance(a.fatal, PermanentError)
    assert a.fatal.message == "Twilio rejected the account SID or auth token for brand acme"
    assert a.state == recipients.PENDING  # that number was not sent to


def test_twilio_429_retries_after_the_servers_wait():
    a = sms.classify(twilio_error(429, 20429, "Too Many Requests"), "x", "acme", retry_after=3)
    assert isinstance(a.retry, RateLimited)
    assert a.retry.retry_after == 3
    assert a.state == recipients.PENDING


def test_twilio_5xx_and_connect_timeouts_are_retried():
    # Refused vs. dropped after sending: tests/test_channel_dropped_connections.py, with requests
    # against the fake (a bare ConnectionError says nothing about which phase failed).
    server = sms.classify(twilio_error(503, 20503, "Service Unavailable"), "x", "acme")
    slow_connect = sms.classify(requests.ConnectTimeout("connect timed out"), "x", "acme")
    for a in (server, slow_connect):
        assert a.state == recipients.PENDING
        assert isinstance(a.retry, TransientError)


def test_twilio_read_timeout_leaves_the_recipient_uncertain_never_resent():
    a = sms.classify(requests.ReadTimeout("read timed out"), "+1201***0123", "acme")
    assert a.state == recipients.UNCERTAIN
    assert a.retry is None
    assert "not resent" in a.error
