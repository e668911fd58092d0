"""Identifiers the channels derive: Mastodon's Idempotency-Key, Telegram's chat references.
(How each channel classifies its library's errors: tests/test_channel_error_mapping.py, against
the sandbox fakes.)"""

from __future__ import annotations

from channels import mastodon, telegram


def test_mastodon_idempotency_key_is_the_same_for_every_retry_of_a_post():
    assert (
        mastodon.idempotency_key("acme", "p_1")
        == mastodon.idempotency_key("acme", "p_1")
        == "acme:p_1:mastodon"
    )
    assert mastodon.idempotency_key("acme", "p_1") != mastodon.idempotency_key("acme", "p_2")


def test_telegram_chat_ids_go_back_to_numbers_or_channel_names():
    assert telegram.chat_ref("-1001234") == -1001234
    assert telegram.chat_ref("42") == 42
    assert telegram.chat_ref("@brand") == "@brand"
