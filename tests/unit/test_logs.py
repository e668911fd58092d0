"""Structured logs: JSON or console lines, context fields, and nothing secret or personal in them."""

from __future__ import annotations

import io
import json
import logging

import pytest

from broadcaster.common import logs
from broadcaster.common.logs import configure_logging, known_secrets, mask_phone, redact
from broadcaster.core.settings import Settings


@pytest.fixture
def capture():
    """Configure logging into a buffer, and put the root logger back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffers: list[io.StringIO] = []

    def setup(**settings) -> io.StringIO:
        buf = io.StringIO()
        configure_logging(Settings(_env_file=None, **settings), "test", stream=buf)
        buffers.append(buf)
        return buf

    yield setup
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_it_writes_one_json_object_per_line_in_production(capture, monkeypatch):
    buf = capture(
        environment="production", admin_api_key="a-real-admin-key-123", public_base_url="https://b.example"
    )
    logging.getLogger("broadcaster.deliver").info(
        "delivered %s to %s",
        "p_1",
        "bluesky",
        extra={"post_id": "p_1", "brand": "acme", "channel": "bluesky"},
    )
    line = json.loads(buf.getvalue().strip())
    assert line["msg"] == "delivered p_1 to bluesky"
    assert line["level"] == "info"
    assert line["logger"] == "broadcaster.deliver"
    assert (line["post_id"], line["brand"], line["channel"]) == ("p_1", "acme", "bluesky")


def test_it_writes_readable_lines_with_context_in_a_terminal(capture):
    buf = capture(log_format="console")
    logging.getLogger("broadcaster.deliver").warning("retrying", extra={"post_id": "p_2", "channel": "sms"})
    out = buf.getvalue()
    assert "WARNING" in out
    assert "retrying" in out
    assert "[post=p_2 channel=sms]" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_it_never_logs_a_secret_from_the_environment_or_the_settings(capture, monkeypatch):
    monkeypatch.setenv("ACME_TELEGRAM_BOT_TOKEN", "tok-ABCDEFGH-1234")
    monkeypatch.setenv("ACME_BSKY_APP_PASSWORD", "abcd-efgh-ijkl-mnop")
    buf = capture(log_format="json", flower_password="flower-pw-xyz")
    log = logging.getLogger("channels.telegram")
    log.error("login failed with %s", "abcd-efgh-ijkl-mnop")
    log.error("token tok-ABCDEFGH-1234 refused; flower flower-pw-xyz")
    try:
        raise RuntimeError("boom with tok-ABCDEFGH-1234")
    except RuntimeError:
        log.exception("send failed")
    out = buf.getvalue()
    for secret in ("abcd-efgh-ijkl-mnop", "tok-ABCDEFGH-1234", "flower-pw-xyz"):
        assert secret not in out
    assert out.count("***") >= 4
    assert "boom with ***" in out


def test_it_masks_phone_numbers_but_keeps_the_last_two_digits(capture):
    buf = capture(log_format="json")
    logging.getLogger("channels.sms").warning("Twilio refused +15551230042 (21610), sent to +447700900123")
    msg = json.loads(buf.getvalue())["msg"]
    assert "+15551230042" not in msg
    assert "+447700900123" not in msg
    assert "+*********42" in msg
    assert "(21610)" in msg  # error codes are not phone numbers


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        (
            "GET /bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
            "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        ),
        ("Authorization: Bearer fb_acme_secretkey123", "fb_acme_secretkey123"),
        ("connecting to redis://:hunter22@redis:6379/0", "hunter22"),
        ('{"password": "s3cr3t!"}', "s3cr3t!"),
        ("call (555) 123-4567 now", "123-4567"),
    ],
)
def test_it_redacts_credentials_it_has_never_been_told_about(text, hidden):
    assert hidden not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "post p_01JABCDEF0123456789ABCDEFG delivered at 2026-04-12T10:00:01+00:00",
        "chat -1001234567890 took message 42",
        "retry in 1712345678 s",
    ],
)
def test_it_leaves_ids_dates_and_chat_ids_alone(text):
    assert redact(text) == text


def test_short_values_are_not_treated_as_secrets():
    assert known_secrets(None, {"X_TOKEN": "abc", "HOME": "/root", "Y_PASSWORD": "long-enough"}) == {
        "long-enough"
    }
    assert mask_phone("+15551230000") == "+*********00"


def every_pattern(text: str) -> str:
    """The patterns applied with no shortcut (the oracle for the shortcuts `redact` takes)."""
    text = logs._URL_PASSWORD.sub(r"\1***\3", text)
    text = logs._TELEGRAM_TOKEN.sub("***", text)
    text = logs._BEARER.sub(lambda m: f"{m.group(1)} ***", text)
    text = logs._KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return logs._PHONE.sub(
        lambda m: logs.mask_phone(m.group(0)) if logs._looks_like_phone(m.group(0)) else m.group(0), text
    )


@pytest.mark.parametrize(
    "text",
    [
        "delivered p_01JXYZABCDEFGHJKMNPQRS19999 to mastodon in 12 ms",
        "p_01JXYZABCDEFGHJKMNPQRS19999",
        "12025550141",
        "+12025550141",
        "(202) 555-0141",
        "redis://:hunter22@redis:6379/0",
        "token=abcdef123",
        "api_key: zzz999",
        "bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        "BASIC dXNlcjpwYXNzd29yZA==",
        "bas\u0131c dXNlcjpwYXNzd29yZA==",  # a dotless i, which the case-blind pattern still matches
        "Authorization: Bearer fb_acme_secretkey123",
        "3f2c1a9e-1234-4567-89ab-cdef01234567",
        "",
    ],
)
def test_the_shortcuts_redact_what_every_pattern_would(text):
    assert redact(text) == every_pattern(text)


def test_context_fields_are_redacted_too(capture, monkeypatch):
    monkeypatch.setenv("ACME_MASTODON_TOKEN", "plainwordsecret42")
    buf = capture(log_format="json")
    logging.getLogger("workers").warning(
        "probe failed", extra={"brand": "plainwordsecret42", "target": "redis://:hunter22@redis:6379/0"}
    )
    line = json.loads(buf.getvalue())
    assert line["brand"] == "***"
    assert line["target"] == "redis://:***@redis:6379/0"
