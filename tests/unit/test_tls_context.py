"""The HTTP clients made per probe share one verifying TLS context (broadcaster/ledger/tls.py).

Building a context loads the CA bundle: it was 65 % of a probe worker's CPU when every probe
built its own (and a Telegram bot made outside a worker built one per call). Sharing it must
not loosen anything: a server whose certificate nobody signed is still refused, by the real
httpx client over a real TLS connection on loopback.
"""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broadcaster.ledger import safe_http
from broadcaster.ledger.tls import client_context
from channels.bluesky import BlueskyChannel
from channels.telegram import new_bot
from tests.channel_direct import brand, context, settings
from workers import vantages


def _pool_context(client: httpx.Client | httpx.AsyncClient) -> ssl.SSLContext:
    return client._transport._pool._ssl_context  # type: ignore[attr-defined]


def test_fresh_bluesky_probe_and_vantage_clients_share_one_context():
    channel = BlueskyChannel(brand("tls", "https://pds.invalid", "UNUSED"), context(redis.Redis()))
    clients = [
        channel._new_client(),
        channel._new_client(httpx.Timeout(1.0)),
        vantages._client("https://x", 1),
    ]
    contexts = {id(_pool_context(c.request._client)) for c in clients}
    assert contexts == {id(client_context())}
    assert client_context().verify_mode == ssl.CERT_REQUIRED
    assert client_context().check_hostname


def test_a_new_telegram_bot_uses_it_too():
    bot = new_bot("123:abc", "https://telegram.invalid", settings())
    assert _pool_context(bot.request._client) is client_context()  # type: ignore[attr-defined]


def test_brand_url_clients_share_theirs_too():
    first, second = safe_http.client(1, False), safe_http.client(1, False)
    assert _pool_context(first) is _pool_context(second) is client_context(trust_env=False)


@pytest.fixture
def self_signed_server(tmp_path: Path) -> Iterator[str]:
    """An HTTPS server on loopback whose certificate no authority signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "server.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )

    class Ok(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pem)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_the_shared_context_still_refuses_an_unsigned_certificate(self_signed_server):
    channel = BlueskyChannel(brand("tls", self_signed_server, "UNUSED"), context(redis.Redis()))
    for _ in range(2):  # the second client reuses the context: it must refuse just the same
        client = channel._new_client(httpx.Timeout(5.0))
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.request._client.get(self_signed_server)
        client.request.close()
