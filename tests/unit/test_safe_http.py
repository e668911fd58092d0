"""Which addresses a brand's URL may reach (the pure checker), and that the client connects to
the address it checked while the request keeps naming the host."""

from __future__ import annotations

import ipaddress
import socket
import threading

import pytest

from broadcaster.ledger import safe_http


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "100.64.0.1",
        "169.254.169.254",
        "192.0.0.9",  # 192.0.0.0/24: Python's is_global says True for .9 and .10
        "192.0.0.170",
        "198.18.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "::127.0.0.1",  # IPv4-compatible
        "::7f00:1",
        "::8.8.8.8",  # IPv4-compatible is deprecated: refused whatever it embeds
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:0:7f00:1",  # IPv4-translated
        "64:ff9b::127.0.0.1",  # NAT64 of loopback
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::1",  # local-use NAT64
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:c0a8:101::",  # 6to4 of 192.168.1.1
        "2001::1",  # Teredo
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
    ],
)
def test_it_refuses_addresses_that_are_not_public_or_embed_one_that_is_not(address):
    assert safe_http.refused(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::",
    ],
)
def test_it_accepts_public_addresses_and_forms_embedding_a_public_one(address):
    assert not safe_http.refused(ipaddress.ip_address(address))


def test_one_refused_address_in_an_answer_refuses_the_name():
    with pytest.raises(safe_http.AddressRefused, match=r"private or loopback address \(10.0.0.2\)"):
        safe_http.check_addresses("mixed.example", ["93.184.216.34", "10.0.0.2"])


def test_the_client_connects_to_the_resolved_address_and_still_names_the_host():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            got.append(data)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    asked: list[str] = []

    def resolver(host: str, _port: int | None) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    try:
        with safe_http.client(5.0, allow_private=True, resolver=resolver) as c:
            r = c.post(f"http://hooks.acme.test:{port}/x", content=b"{}")
        thread.join(5)
    finally:
        server.close()
    assert r.status_code == 204
    assert asked == ["hooks.acme.test"]
    assert f"host: hooks.acme.test:{port}".encode() in got[0].lower()


def test_without_the_setting_a_name_resolving_to_loopback_never_gets_a_connection():
    with (
        safe_http.client(5.0, allow_private=False, resolver=lambda h, p: ["127.0.0.1"]) as c,
        pytest.raises(safe_http.AddressRefused, match=r"127\.0\.0\.1"),
    ):
        c.post("http://hooks.acme.test:9/x", content=b"{}")


def test_a_host_name_the_resolver_cannot_encode_is_refused_not_a_crash():
    with (
        safe_http.client(5.0, allow_private=False) as c,
        pytest.raises(safe_http.AddressRefused, match="host name is not valid"),
    ):
        c.get(f"http://{'a' * 64}.example/x")
