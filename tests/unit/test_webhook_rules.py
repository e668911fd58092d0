"""Webhook rules without the network: which URLs may receive, how bodies are signed, which
health transitions become `bluesky.down` / `bluesky.up`."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from broadcaster.ledger.hooks import WebhookURLError, check_url, health_change, signature, verify


def public(_host: str) -> list[str]:
    return ["93.184.216.34"]


@pytest.mark.parametrize("url", ["https://hooks.acme.example/x", "http://hooks.acme.example:8080/y"])
def test_it_accepts_public_http_urls(url):
    assert check_url(url, allow_private=False, resolve=public) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://hooks.example/x", "http"),
        ("javascript:alert(1)", "http"),
        ("https://user:pw@hooks.example/", "credentials"),
        ("http://127.0.0.1:8000/", "private or loopback"),
        ("http://10.0.0.8/", "private or loopback"),
        ("http://192.168.1.1/", "private or loopback"),
        ("http://169.254.169.254/latest/meta-data", "private or loopback"),
        ("http://[::1]/", "private or loopback"),
        ("http://[::ffff:127.0.0.1]/", "private or loopback"),
        ("http://0.0.0.0/", "private or loopback"),
        ("http://[::127.0.0.1]/", "private or loopback"),  # IPv4-compatible
        ("http://[64:ff9b::7f00:1]/", "private or loopback"),  # NAT64 of 127.0.0.1
        ("http://[2002:a9fe:a9fe::]/", "private or loopback"),  # 6to4 of 169.254.169.254
        ("http://192.0.0.9/", "private or loopback"),  # 192.0.0.0/24
    ],
)
def test_it_refuses_other_schemes_credentials_and_private_addresses(url, why):
    with pytest.raises(WebhookURLError, match=why):
        check_url(url, allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.acme.example/x\r\nX-Injected: 1",
        "https://hooks.acme.example/x\n",
        " https://hooks.acme.example/x",
        "https://hooks.acme.example/a b",
        "https://hooks.acme.example/x\t",
        "https://hooks.acme.example/\x00",
        "https://hooks.acme.example/\x7f",
        "https://hooks.acme.example/\u200b",
        "https://hooks.acme.example/\xa0",
    ],
)
def test_it_refuses_whitespace_and_control_characters_even_where_private_addresses_are_allowed(url):
    for allow_private in (False, True):
        with pytest.raises(WebhookURLError, match="whitespace or control characters"):
            check_url(url, allow_private=allow_private, resolve=public)


def test_a_name_that_resolves_to_a_private_address_is_refused_too():
    with pytest.raises(WebhookURLError, match="private"):
        check_url(
            "https://internal.example/", allow_private=False, resolve=lambda h: ["93.1.1.1", "10.0.0.2"]
        )


def test_private_addresses_are_allowed_when_the_setting_says_so():
    assert check_url("http://127.0.0.1:9/x", allow_private=True) == "http://127.0.0.1:9/x"


def test_the_signature_is_hmac_sha256_of_the_raw_body():
    body = b'{"event":"post.failed"}'
    expected = hmac.new(b"whsec_k", body, hashlib.sha256).hexdigest()
    assert signature("whsec_k", body) == f"sha256={expected}"
    assert verify("whsec_k", body, f"sha256={expected}")
    assert not verify("whsec_k", body + b" ", f"sha256={expected}")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"type": "bluesky.down", "effective_from": "degraded", "effective": "down"}, "bluesky.down"),
        ({"type": "bluesky.up", "effective_from": "down", "effective": "up"}, "bluesky.up"),
        ({"type": "bluesky.degraded", "effective_from": "down", "effective": "degraded"}, "bluesky.up"),
        ({"type": "bluesky.degraded", "effective_from": "up", "effective": "degraded"}, None),
        ({"type": "bluesky.up", "effective_from": "degraded", "effective": "up"}, None),
        ({"type": "bluesky.override", "effective_from": "up", "effective": "down"}, "bluesky.down"),
        ({"type": "delivery.failed", "post": "p_1"}, None),
    ],
)
def test_only_changes_of_what_routing_obeys_become_down_and_up_events(event, expected):
    assert health_change(event) == expected
