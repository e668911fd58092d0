"""Sandbox as a whole: lifecycle, reset, switches, hangs and ``python -m broadcaster.sandbox``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from broadcaster.sandbox import BlueskyFake, Sandbox
from tests.harness import http, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_start_urls_reset_and_context_manager():
    with Sandbox.start(host="127.0.0.1") as sb:
        urls = sb.urls
        assert set(urls) == {"bluesky", "mastodon", "telegram", "twilio"}
        assert len(set(urls.values())) == 4
        assert all(u.startswith("http://127.0.0.1:") for u in urls.values())
        assert sb.bluesky.url == urls["bluesky"]

        sb.mastodon.add_token("tok")
        headers = {"Authorization": "Bearer tok"}
        assert (
            http.post(
                f"{sb.mastodon.url}/api/v1/statuses", data={"status": "hi"}, headers=headers
            ).status_code
            == 200
        )
        sb.telegram.fail("send", "error")
        sb.twilio.opt_out("+15550001111")
        assert len(sb.mastodon.statuses) == 1
        assert sb.state()["mastodon"]["counts"]["statuses"] == 1

        sb.reset()
        assert sb.mastodon.statuses == []
        assert len(sb.mastodon.requests) == 0
        assert sb.telegram.switches == {}
        # accounts stay
        assert (
            http.post(
                f"{sb.mastodon.url}/api/v1/statuses", data={"status": "again"}, headers=headers
            ).status_code
            == 200
        )
    for fake in sb.services:
        with pytest.raises(httpx.ConnectError):
            http.get(f"{fake.url}/_sandbox/state", timeout=0.5)


def test_fail_validates_arguments():
    fake = BlueskyFake()
    with pytest.raises(ValueError, match="unknown group"):
        fake.fail("statuses")
    with pytest.raises(ValueError, match="unknown mode"):
        fake.fail("feeds", "explode")
    with pytest.raises(ValueError, match="unknown options"):
        fake.fail("feeds", "slow", delay_s=1)
    switch = fake.fail("feeds", "slow", delay=0.5, count=3)
    assert switch["delay"] == 0.5
    assert fake.switches["feeds"]["count"] == 3
    fake.heal("feeds")
    assert fake.switches == {}


def test_hang_healed_while_client_waits_answers_normally():
    fake = BlueskyFake().start()
    try:
        fake.fail("all", "hang")
        answers: list[int] = []
        client = threading.Thread(
            target=lambda: answers.append(
                http.get(f"{fake.url}/xrpc/com.atproto.server.describeServer", timeout=60).status_code
            )
        )
        client.start()
        wait_for(lambda: len(fake.requests) == 1, what="the request to arrive")
        client.join(0.3)
        assert client.is_alive()  # held: no answer while the hang lasts
        assert fake.requests[0].status is None
        fake.heal()
        client.join(60)
        assert answers == [200]
        assert fake.requests[0].injected == "hang:healed"
    finally:
        fake.stop()


def test_heal_releases_a_hang_whose_count_is_used_up():
    fake = BlueskyFake().start()
    try:
        fake.fail("all", "hang", count=1)
        answers: list[int] = []
        client = threading.Thread(
            target=lambda: answers.append(
                http.get(f"{fake.url}/xrpc/com.atproto.server.describeServer", timeout=60).status_code
            )
        )
        client.start()
        wait_for(lambda: len(fake.requests) == 1, what="the request to arrive and hang")  # then heal
        fake.heal()
        client.join(60)
        assert answers == [200]
        assert fake.requests[0].injected == "hang:healed"
        assert http.get(f"{fake.url}/xrpc/com.atproto.server.describeServer").status_code == 200
    finally:
        fake.stop()


def test_stop_is_quick_with_a_request_hanging():
    fake = BlueskyFake().start()
    fake.fail("all", "hang")  # cap 120 s
    errors: list[BaseException] = []

    def hang():
        try:
            http.get(f"{fake.url}/xrpc/com.atproto.server.describeServer", timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    worker = threading.Thread(target=hang)
    worker.start()
    while not len(fake.requests):
        time.sleep(0.01)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 15  # the hang's cap is 120 s: stop did not wait it out
    worker.join(5)
    assert not worker.is_alive()


def test_hang_cap_answers_504():
    fake = BlueskyFake().start()
    try:
        fake.fail("all", "hang", cap=0.2)
        r = http.get(f"{fake.url}/xrpc/com.atproto.server.describeServer", timeout=5)
        assert r.status_code == 504
        assert r.json()["error"] == "UpstreamTimeout"
    finally:
        fake.stop()


def test_requests_log_is_a_thread_safe_snapshot():
    fake = BlueskyFake().start()
    try:
        url = f"{fake.url}/xrpc/com.atproto.server.describeServer"

        def hit():
            with httpx.Client() as c:
                for _ in range(10):
                    c.get(url)

        threads = [threading.Thread(target=hit) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(fake.requests) == 40
        assert all(r.status == 200 for r in fake.requests)
        times = [r.t for r in fake.requests]
        assert times == sorted(times)
        assert fake.requests[0].to_dict()["endpoint"] == "com.atproto.server.describeServer"
    finally:
        fake.stop()


def test_python_dash_m_serves_until_sigterm():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcaster.sandbox", "--seed"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert set(info) >= {"bluesky", "mastodon", "telegram", "twilio", "accounts"}
        state = http.get(f"{info['bluesky']}/_sandbox/state", timeout=2).json()
        assert state["counts"]["accounts"] == 1
        account = info["accounts"]["bluesky"]
        r = http.post(
            f"{info['bluesky']}/xrpc/com.atproto.server.createSession",
            json={"identifier": account["handle"], "password": account["password"]},
            timeout=2,
        )
        assert r.json()["did"] == account["did"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stop_means_connection_refused_and_restart_keeps_the_port():
    fake = BlueskyFake().start()
    try:
        url = fake.url
        fake.stop()
        with pytest.raises(httpx.ConnectError):
            http.get(f"{url}/_sandbox/state", timeout=0.5)
        fake.restart()
        assert fake.url == url
        assert http.get(f"{url}/_sandbox/state").status_code == 200
    finally:
        fake.stop()


def test_drop_after_does_the_work_then_closes_without_an_answer(sandbox):
    fake = sandbox.mastodon
    fake.add_token("drop-tok")
    fake.fail("statuses", "drop_after", count=1)
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            http.post(
                f"{fake.url}/api/v1/statuses",
                data={"status": "dropped answer"},
                headers={"Authorization": "Bearer drop-tok"},
            )
    finally:
        fake.heal()
    [rec] = [r for r in fake.requests.where("statuses.create") if r.body == {"status": "dropped answer"}]
    assert (rec.injected, rec.status) == ("drop_after", None)
    assert [s["text"] for s in fake.statuses].count("dropped answer") == 1  # the status was made


def test_html_error_is_a_proxy_page_not_the_services_error_shape(sandbox):
    fake = sandbox.telegram
    with pytest.raises(ValueError, match="5xx"):
        fake.fail("send", "html_error", status=404)
    fake.fail("send", "html_error", count=1)
    try:
        r = http.post(f"{fake.url}/bot1:x/sendMessage", json={"chat_id": 1, "text": "x"})
    finally:
        fake.heal()
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/html")
    assert "<h1>502 Bad Gateway</h1>" in r.text
