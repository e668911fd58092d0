"""Brand webhooks on the real stack: registered over the API, fanned out by the worker from the
ledger's events, POSTed signed to a real HTTP receiver on loopback, retried, and tracked."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from broadcaster.api.deps import settings_dep
from broadcaster.core.settings import Settings
from broadcaster.ledger.hooks import verify
from tests.conftest import ACME, BADPASS, GLOBEX, auth
from tests.harness import wait_for

pytestmark = pytest.mark.integration


class Receiver:
    """A brand's webhook endpoint: records what it got; answers `plan` statuses first, then 200."""

    def __init__(self) -> None:
        self.got: list[dict] = []
        self.plan: list[int] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    status = outer.plan.pop(0) if outer.plan else 200
                    outer.got.append(
                        {"headers": dict(self.headers), "raw": raw, "body": json.loads(raw), "status": status}
                    )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def for_post(self, post_id: str) -> list[dict]:
        with self.lock:
            return [g for g in self.got if g["body"]["data"].get("post_id") == post_id]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def register(api, spec, url, events) -> dict:
    r = api.post("/v1/hooks", json={"url": url, "events": events}, headers=auth(spec))
    assert r.status_code == 201, r.text
    return r.json()


def queue(api, spec, text="Webhook news") -> str:
    r = api.post("/v1/posts", json={"text": f"{text} {uuid.uuid4().hex[:8]}"}, headers=auth(spec))
    assert r.status_code == 202, r.text
    return r.json()["id"]


def outcomes(api, spec, hook_id) -> list[dict]:
    r = api.get(f"/v1/hooks/{hook_id}/deliveries", headers=auth(spec))
    assert r.status_code == 200, r.text
    return r.json()


def test_it_sends_a_signed_post_delivered_event_to_the_brands_webhook(api, stack, receiver):
    hook = register(api, ACME, receiver.url, ["post.delivered", "post.failed"])
    assert hook["secret"].startswith("whsec_")
    try:
        post_id = queue(api, ACME)
        got = wait_for(lambda: receiver.for_post(post_id), timeout=30, what="the webhook for the post")
        assert len(got) == 1
        call = got[0]
        body = call["body"]
        assert body["event"] == "post.delivered"
        assert body["brand"] == "acme"
        assert body["data"]["state"] == "delivered"
        assert body["data"]["deliveries"]["bluesky"]["state"] == "delivered"
        headers = {k.lower(): v for k, v in call["headers"].items()}
        assert verify(hook["secret"], call["raw"], headers["x-broadcaster-signature"])
        assert not verify("whsec_someone_else", call["raw"], headers["x-broadcaster-signature"])
        assert headers["x-broadcaster-event"] == "post.delivered"
        assert headers["x-broadcaster-delivery"] == body["id"]
        assert int(headers["x-broadcaster-timestamp"]) > 0

        listed = wait_for(
            lambda: (rows := outcomes(api, ACME, hook["id"])) and rows[0]["state"] != "pending" and rows,
            timeout=10,
            what="the outcome to be recorded",
        )
        assert listed[0]["state"] == "delivered"
        assert listed[0]["attempts"] == 1
        assert listed[0]["last_status"] == 200
        # The secret is shown once; another brand sees nothing of this webhook.
        assert "secret" not in api.get("/v1/hooks", headers=auth(ACME)).json()[0]
        assert api.get(f"/v1/hooks/{hook['id']}", headers=auth(GLOBEX)).status_code == 404
        assert api.get("/v1/hooks", headers=auth(GLOBEX)).json() == []
    finally:
        assert api.delete(f"/v1/hooks/{hook['id']}", headers=auth(ACME)).status_code == 204


def test_it_retries_a_failing_webhook_with_backoff_and_tracks_the_attempts(api, stack, receiver):
    hook = register(api, ACME, receiver.url, ["post.delivered"])
    receiver.plan = [503, 500]
    try:
        post_id = queue(api, ACME)

        def done():
            rows = outcomes(api, ACME, hook["id"])
            return rows if rows and rows[0]["state"] == "delivered" else None

        rows = wait_for(done, timeout=40, what="the webhook to get through after two failures")
        assert rows[0]["attempts"] == 3
        calls = receiver.for_post(post_id)
        assert [c["status"] for c in calls] == [503, 500, 200]
        assert len({c["body"]["id"] for c in calls}) == 1  # one delivery, the same id on each try
        assert len({c["raw"] for c in calls}) == 1
    finally:
        api.delete(f"/v1/hooks/{hook['id']}", headers=auth(ACME))


def test_it_gives_up_at_once_when_the_receiver_refuses_with_a_4xx(api, stack, receiver):
    """BADPASS's Bluesky password is wrong: its post lands on RSS only, i.e. partially delivered."""
    hook = register(api, BADPASS, receiver.url, ["post.partially_delivered"])
    receiver.plan = [410]
    try:
        post_id = queue(api, BADPASS, "Half there")
        got = wait_for(lambda: receiver.for_post(post_id), timeout=40, what="the webhook")
        assert got[0]["body"]["event"] == "post.partially_delivered"

        def failed():
            rows = outcomes(api, BADPASS, hook["id"])
            return rows if rows and rows[0]["state"] == "failed" else None

        rows = wait_for(failed, timeout=10, what="the outcome to be failed")
        assert rows[0]["attempts"] == 1
        assert rows[0]["last_status"] == 410
        assert "not retried" in rows[0]["last_error"]
    finally:
        api.delete(f"/v1/hooks/{hook['id']}", headers=auth(BADPASS))


def test_it_refuses_urls_that_are_not_http_or_point_at_private_addresses(api, stack):
    r = api.post(
        "/v1/hooks", json={"url": "ftp://hooks.example/x", "events": ["post.failed"]}, headers=auth(ACME)
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "url"]
    r = api.post(
        "/v1/hooks", json={"url": "https://x.example/", "events": ["post.eaten"]}, headers=auth(ACME)
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:2] == ["body", "events"]

    strict = Settings(_env_file=None, webhooks_allow_private=False)
    api.app.dependency_overrides[settings_dep] = lambda: strict
    try:
        for url in (
            "http://127.0.0.1:9/hook",
            "http://10.1.2.3/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/",
        ):
            r = api.post("/v1/hooks", json={"url": url, "events": ["post.failed"]}, headers=auth(ACME))
            assert r.status_code == 422, url
            assert r.json()["detail"][0]["loc"] == ["body", "url"]
            assert "private or loopback" in r.json()["detail"][0]["msg"]
    finally:
        api.app.dependency_overrides.clear()


def test_a_brand_hears_when_its_bluesky_goes_down_and_comes_back(api, stack, receiver):
    """On the outage PDS (INITECH's own fake), through the operator's override."""
    from tests.conftest import INITECH
    from tests.harness import FAST_SETTINGS

    admin = {"Authorization": f"Bearer {FAST_SETTINGS['BROADCASTER_ADMIN_API_KEY']}"}
    target = stack.outage_bluesky.url.split("://", 1)[1]
    url = f"/v1/health/{target}/override"

    def effective() -> str:
        return api.get(f"/v1/health/{target}", headers=admin).json()["effective"]

    hook = register(api, INITECH, receiver.url, ["bluesky.down", "bluesky.up"])
    try:
        wait_for(lambda: effective() == "up", timeout=30, what="the outage target to start up")
        r = api.post(url, json={"mode": "down", "reason": "webhook test"}, headers=admin)
        assert r.status_code == 200, r.text

        def got(event):
            return [g for g in receiver.got if g["body"]["event"] == event]

        down = wait_for(lambda: got("bluesky.down"), timeout=20, what="bluesky.down")
        assert down[0]["body"]["brand"] == "initech"
        assert down[0]["body"]["data"]["target"] == target
        r = api.post(url, json={"mode": "auto", "reason": "webhook test over"}, headers=admin)
        assert r.status_code == 200, r.text
        wait_for(lambda: got("bluesky.up"), timeout=30, what="bluesky.up")
        assert len(got("bluesky.down")) == 1
    finally:
        api.post(url, json={"mode": "auto", "reason": "webhook test cleanup"}, headers=admin)
        wait_for(lambda: effective() == "up", timeout=30, what="the outage target to be up again")
        api.delete(f"/v1/hooks/{hook['id']}", headers=auth(INITECH))
