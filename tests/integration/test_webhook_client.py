"""A webhook send against real local servers: the connection goes to the address that was
checked (DNS rebinding), within a total deadline, reading a bounded answer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from broadcaster.ledger import hooks as webhooks
from tests.channel_direct import settings
from workers import webhook_client

pytestmark = pytest.mark.integration


class RawServer:
    """A TCP server on 127.0.0.1 whose `answer(conn)` plays the receiver; records what it saw."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.client_closed = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data)
            try:
                self.answer(conn)
            except OSError:  # the client hung up while we were still answering
                self.client_closed.set()
                return
            conn.settimeout(10)
            try:
                if conn.recv(1) == b"":
                    self.client_closed.set()
            except OSError:
                self.client_closed.set()

    def stop(self) -> None:
        self.sock.close()


def ok(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


@pytest.fixture
def hookstore(direct_redis: redis.Redis) -> Iterator[webhooks.HookStore]:
    webhook_client.reset_clients()
    yield webhooks.HookStore(direct_redis, settings(webhooks_allow_private=False, webhook_timeout_s=2.0))
    webhook_client.reset_clients()


def pending(hooks: webhooks.HookStore, url: str) -> webhooks.HookDelivery:
    hook = hooks.create("acme", url, ["post.delivered"])
    d = webhooks.HookDelivery(id="wd_test", hook_id=hook.id, brand="acme", event="post.delivered", body="{}")
    hooks.save_delivery(d)
    return d


def test_a_name_that_rebinds_to_loopback_after_the_check_gets_no_signed_post(hookstore, monkeypatch):
    server = RawServer(ok)
    # Public at registration and at the check before the send; loopback from then on.
    answers = ["93.184.216.34", "93.184.216.34", "127.0.0.1"]
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        asked.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        url = f"http://rebind.test:{server.port}/hook"
        assert webhooks.check_url(url, allow_private=False) == url  # at registration: public
        d = pending(hookstore, url)
        outcome = webhooks.send_once(hookstore, d.id, webhook_client.client(2.0))
    finally:
        server.stop()
    saved = hookstore.load_delivery(d.id)
    assert saved is not None
    assert (outcome.result, saved.state) == ("failed", "failed")
    assert saved.last_error is not None
    assert "url refused" in saved.last_error
    assert "127.0.0.1" in saved.last_error
    assert asked == ["93.184.216.34", "93.184.216.34", "127.0.0.1"]  # the connect resolved, then refused
    assert server.connections == 0
    assert server.requests == []
