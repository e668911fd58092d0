"""Sandbox response latency (as a remote API has): it delays, it overlaps, it is configurable.

No timing thresholds beyond "the delay happened" and "concurrent requests overlapped": the
overlap is read from the fake's own request log (every request arrived before the first
one was answered), not from a wall-clock budget.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from broadcaster.sandbox import MastodonFake, Sandbox
from broadcaster.sandbox.server import latency_from_env
from tests.harness import http

TOKEN = "latency-token"


def _post(url: str, text: str, token: str = TOKEN) -> httpx.Response:
    return http.post(
        f"{url}/api/v1/statuses", data={"status": text}, headers={"Authorization": f"Bearer {token}"}
    )


def test_a_request_waits_the_latency_and_control_calls_do_not():
    with Sandbox.start(latency_ms=200) as sb:
        sb.mastodon.add_token(TOKEN)
        started = time.monotonic()
        assert _post(sb.mastodon.url, "hello").status_code == 200
        assert time.monotonic() - started >= 0.2
        (record,) = sb.mastodon.requests.where("statuses.create")
        assert record.latency == pytest.approx(0.2)
        assert record.duration is not None
        assert record.duration >= 0.2
        # the control API is not a remote API: it answers without the latency (and is not logged)
        assert http.get(f"{sb.mastodon.url}/_sandbox/state").json()["latency_ms"] == 200
        assert len(sb.mastodon.requests) == 1


def test_concurrent_requests_overlap_instead_of_queueing():
    n = 8
    with Sandbox.start(latency_ms={"telegram": 300}) as sb:
        sb.telegram.add_bot("1:AAlatency", "lat_bot")
        chat = sb.telegram.add_chat("@lat_news", title="lat")["id"]
        url = f"{sb.telegram.url}/bot1:AAlatency/sendMessage"

        async def burst() -> list[int]:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n)) as c:
                answers = await asyncio.gather(
                    *(c.post(url, json={"chat_id": chat, "text": f"m{i}"}) for i in range(n))
                )
            return [a.status_code for a in answers]

        assert asyncio.run(burst()) == [200] * n
        sends = sb.telegram.requests.where("sendMessage")
        assert len(sends) == n
        assert all(r.latency == pytest.approx(0.3) and r.duration >= 0.3 for r in sends)
        # every request had arrived before the first one was answered: their waits overlapped
        first_answer = min(r.t + r.duration for r in sends)
        assert max(r.t for r in sends) < first_answer
        # only the service named got the latency
        assert sb.mastodon.latency_ms == 0
        assert sb.telegram.latency_ms == 300


def test_latency_is_set_over_the_control_api_and_survives_reset():
    with Sandbox.start() as sb:
        url = sb.twilio.url
        assert http.post(f"{url}/_sandbox/latency", json={"ms": 50}).json() == {"ok": True, "latency_ms": 50}
        assert sb.twilio.latency_ms == 50
        assert http.post(f"{url}/_sandbox/reset").status_code == 200
        assert http.get(f"{url}/_sandbox/state").json()["latency_ms"] == 50
        assert http.post(f"{url}/_sandbox/latency", json={"ms": -1}).status_code == 400
        assert http.post(f"{url}/_sandbox/latency", json={}).status_code == 400
        assert sb.twilio.latency_ms == 50
        with pytest.raises(ValueError, match="unknown services"):
            sb.set_latency({"nope": 10})


def test_latency_from_the_environment_per_service_wins():
    env = {"SANDBOX_LATENCY_MS": "100", "SANDBOX_MASTODON_LATENCY_MS": "250"}
    assert latency_from_env("mastodon", env) == 250
    assert latency_from_env("telegram", env) == 100
    assert latency_from_env("twilio", {}) == 0
    with pytest.raises(ValueError, match="between 0 and"):
        latency_from_env("bluesky", {"SANDBOX_LATENCY_MS": "-5"})


def test_a_fake_made_with_the_env_var_set_starts_with_that_latency(monkeypatch):
    monkeypatch.setenv("SANDBOX_LATENCY_MS", "40")
    assert MastodonFake().latency_ms == 40
    monkeypatch.delenv("SANDBOX_LATENCY_MS")
    assert MastodonFake().latency_ms == 0


class _NoScan(dict):
    """A statuses table that refuses to be scanned: a per-request scan would raise."""

    def values(self):  # type: ignore[override]
        raise AssertionError("the Mastodon fake scanned every status to answer one request")


def test_mastodon_counts_statuses_per_account_without_scanning_them():
    fake = MastodonFake().start()
    try:
        fake.add_token(TOKEN, "brand")
        fake.add_token("other-token", "other")
        fake._statuses = _NoScan()
        counts = [_post(fake.url, f"post {i}").json()["account"]["statuses_count"] for i in range(3)]
        assert counts == [1, 2, 3]
        assert _post(fake.url, "theirs", token="other-token").json()["account"]["statuses_count"] == 1
        me = http.get(
            f"{fake.url}/api/v1/accounts/verify_credentials", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert me.json()["statuses_count"] == 3
        fake._statuses = {}
        fake.reset()
        assert _post(fake.url, "after reset").json()["account"]["statuses_count"] == 1
    finally:
        fake.stop()
