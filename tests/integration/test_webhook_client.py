"""A webhook send against real local servers: the connection goes to the address that was
checked (DNS rebinding), within a total deadline, reading a bounded answer."""

from __future__ import annotations

import socket
import threading
import time
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
        self.client_closed = threading.Event()  # we saw the client hang up
        self.finished = threading.Event()  # `answer` wrote all it meant to
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
            self.finished.set()
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


DEADLINE_S = 2.0


@pytest.fixture
def private_hookstore(direct_redis: redis.Redis) -> Iterator[webhooks.HookStore]:
    webhook_client.reset_clients()
    yield webhooks.HookStore(
        direct_redis, settings(webhooks_allow_private=True, webhook_timeout_s=DEADLINE_S)
    )
    webhook_client.reset_clients()


def test_a_receiver_trickling_its_answer_cannot_hold_the_send_past_its_deadline(private_hookstore):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"

    def trickle(conn: socket.socket) -> None:
        for i in range(len(answer)):  # a byte every 0.5 s: each read is quick, the whole is ~30 s
            conn.sendall(answer[i : i + 1])
            time.sleep(0.5)

    server = RawServer(trickle)
    try:
        d = pending(private_hookstore, f"http://127.0.0.1:{server.port}/hook")
        outcome = webhooks.send_once(private_hookstore, d.id, webhook_client.client(DEADLINE_S, True))
        saved = private_hookstore.load_delivery(d.id)
        assert server.client_closed.wait(10), "the client never closed the trickling connection"
    finally:
        server.stop()
    assert outcome.result == "retry"
    assert saved is not None
    assert (saved.state, saved.last_error) == ("pending", "ReadTimeout")
    assert not server.finished.is_set()


def test_a_huge_answer_is_read_only_up_to_the_cap(private_hookstore):
    total = 64 * 1024 * 1024
    chunk = b"x" * 65536

    def huge(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(chunk)):
            conn.sendall(chunk)

    server = RawServer(huge)
    try:
        d = pending(private_hookstore, f"http://127.0.0.1:{server.port}/hook")
        outcome = webhooks.send_once(private_hookstore, d.id, webhook_client.client(DEADLINE_S, True))
        saved = private_hookstore.load_delivery(d.id)
        assert server.client_closed.wait(10), "the client never closed the connection"
    finally:
        server.stop()
    assert outcome.result == "delivered"  # the receiver said 200; what follows is not ours to read
    assert not server.finished.is_set()  # it was still writing when the client hung up
    assert saved is not None
    assert saved.last_response is not None
    assert 0 < len(saved.last_response.encode()) <= 64 * 1024
    assert saved.last_response.startswith("xxxx")
