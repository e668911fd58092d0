"""Isolation and secrets: one brand's key never reaches another brand's posts, subscribers or
webhooks; missing, wrong and revoked keys get 401; and no log line, API answer, event or Celery
task argument carries an app password, a token or a full phone number."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
import yaml

from broadcaster.core.brands import hash_api_key
from tests.chaos.harness import chaos_stack, full_brand, wait_until
from tests.conftest import ACME, GLOBEX, auth
from tests.harness import TaskEvents, events_after, latest_event, wait_quiet

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

ACME_NUMBERS = ["+12025550143", "+12025550178"]
GLOBEX_NUMBERS = ["+14155550123"]
REVOKED = "fb_acme_revoked_key_0123456789abcdef"
CHANNELS = ["bluesky", "mastodon", "telegram", "sms", "rss"]


class Recorder:
    """Every answer the API gave during the test, for the secret scan."""

    def __init__(self, base_url: str):
        self.bodies: list[tuple[str, str]] = []
        self.client = httpx.Client(base_url=base_url, timeout=10, event_hooks={"response": [self._keep]})

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.bodies.append((f"{response.request.method} {response.request.url.path}", response.text))


def _brands(sb, secrets):
    acme = full_brand(ACME, sb, secrets, chats=("@acme_news",))
    acme["api_keys"].append(hash_api_key(REVOKED))
    globex = full_brand(GLOBEX, sb, secrets, chats=("@globex_news",))
    # Globex's Mastodon token is wrong: its rejection must be reported without the token.
    secrets["CHAOS_GLOBEX_MASTODON"] = "globex-wrong-token-not-known-to-the-server"
    return [acme, globex]


@pytest.fixture
def chaos(tmp_path):
    with chaos_stack(tmp_path, _brands) as ctx:
        yield ctx


def _final(http, pid, spec):
    return wait_until(
        40,
        lambda: (
            (p := http.get(f"/v1/posts/{pid}", headers=auth(spec)).json())["state"]
            in ("delivered", "partially_delivered", "failed")
            and p
        ),
    )


def test_brands_are_isolated_and_no_secret_or_number_leaks(chaos):
    stack, sb, secrets, brands_file = chaos
    store = stack.store()
    cursor = latest_event(store, ACME.id)
    tasks = TaskEvents.of(store)  # Celery's event stream (what Flower shows): task names, args, kwargs
    api = Recorder(stack.api.url)
    http = api.client
    try:
        assert (
            http.post("/v1/sms/subscribers", json={"numbers": ACME_NUMBERS}, headers=auth(ACME)).status_code
            == 200
        )
        assert (
            http.post(
                "/v1/sms/subscribers", json={"numbers": GLOBEX_NUMBERS}, headers=auth(GLOBEX)
            ).status_code
            == 200
        )
        hook = http.post(
            "/v1/hooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["post.failed"]},
            headers=auth(GLOBEX),
        )
        assert hook.status_code == 201, hook.text
        tag = uuid.uuid4().hex[:6]
        body = {"text": f"isolation {tag}", "channels": CHANNELS, "priority": "urgent"}
        a = http.post("/v1/posts", json=body, headers=auth(ACME)).json()["id"]
        b = http.post("/v1/posts", json=body, headers=auth(GLOBEX)).json()["id"]
        later = http.post(
            "/v1/posts",
            json={"text": f"later {tag}", "scheduled_at": "2099-01-01T00:00:00Z"},
            headers=auth(GLOBEX),
        )
        assert later.status_code == 422  # more than a year ahead
        acme_post = _final(http, a, ACME)
        assert acme_post["state"] == "delivered", [
            (d["channel"], d["state"], d["error"]) for d in acme_post["deliveries"]
        ]
        globex_post = _final(http, b, GLOBEX)
        masto = next(d for d in globex_post["deliveries"] if d["channel"] == "mastodon")
        assert masto["state"] == "failed"
        assert "globex" in masto["error"]

        # Isolation: acme's key never reaches globex's things.
        assert http.get(f"/v1/posts/{b}", headers=auth(ACME)).status_code == 404
        assert http.delete(f"/v1/posts/{b}", headers=auth(ACME)).status_code == 404
        assert http.patch(f"/v1/posts/{b}", json={"text": "x"}, headers=auth(ACME)).status_code == 404
        assert b not in [p["id"] for p in http.get("/v1/posts?limit=200", headers=auth(ACME)).json()["items"]]
        assert http.get("/v1/sms/subscribers", headers=auth(ACME)).json()["numbers"] == sorted(ACME_NUMBERS)
        http.request("DELETE", "/v1/sms/subscribers", json={"numbers": GLOBEX_NUMBERS}, headers=auth(ACME))
        assert http.get("/v1/sms/subscribers", headers=auth(GLOBEX)).json()["numbers"] == GLOBEX_NUMBERS
        assert http.get("/v1/hooks", headers=auth(ACME)).json() == []
        assert http.get(f"/v1/hooks/{hook.json()['id']}", headers=auth(ACME)).status_code == 404
        assert http.delete(f"/v1/hooks/{hook.json()['id']}", headers=auth(ACME)).status_code == 404
        events = events_after(http, auth(ACME), cursor)
        assert events
        assert all(e.get("post") != b for e in events)
        health = http.get("/v1/health", headers=auth(ACME)).json()["targets"]
        assert all("brands" not in t or t["brands"] == [] for t in health)

        # Missing, wrong and revoked keys.
        assert http.get("/v1/posts").status_code == 401
        assert http.get("/v1/posts", headers={"Authorization": "Bearer fb_acme_guess"}).status_code == 401
        assert http.get("/v1/posts", headers={"Authorization": f"Bearer {REVOKED}"}).status_code == 200
        data = yaml.safe_load(brands_file.read_text())
        data["brands"][0]["api_keys"].remove(hash_api_key(REVOKED))
        time.sleep(1.1)  # a new mtime: the API reloads the brands file
        brands_file.write_text(yaml.safe_dump(data))
        assert wait_until(
            10,
            lambda: http.get("/v1/posts", headers={"Authorization": f"Bearer {REVOKED}"}).status_code == 401,
        )
        # The last task events have arrived: nothing of the posts is left to run and the event
        # receiver has seen a sweeper pass that started after that finish.
        wait_quiet(
            store,
            lambda: len(sb.bluesky.requests.where("com.atproto.repo.createRecord")),
            sb.mastodon,
            sb.telegram,
            sb.twilio,
            posts=[a, b],
            events=tasks,
        )
    finally:
        tasks.stop()

    # The secret scan.
    needles = dict(secrets) | {
        "acme api key": ACME.key,
        "globex api key": GLOBEX.key,
        "revoked api key": REVOKED,
    }
    needles |= {f"number {n}": n.lstrip("+") for n in ACME_NUMBERS + GLOBEX_NUMBERS}
    events = stack.redis_server.client().xrange("fbchaos:events", "-", "+")
    places = {
        **{f"log of {p.name}": p.log_text() for p in [*stack.workers, stack.beat, stack.api]},
        **{
            f"answer to {what}": text
            for what, text in api.bodies
            if "/v1/sms/subscribers" not in what  # a brand's own subscriber list is shown to it
        },
        "event stream": json.dumps(events),
        "celery task args": json.dumps(
            [{k: e.get(k) for k in ("name", "args", "kwargs")} for e in tasks.seen]
        ),
    }
    leaks = [
        (name, where) for where, text in places.items() for name, value in needles.items() if value in text
    ]
    received = [e for e in tasks.seen if e.get("type") == "task-received"]
    print(
        f"\n[isolation/secrets] scanned {sum(len(t) for t in places.values()):,} characters in "
        f"{len(places)} places ({len(api.bodies)} API answers, {len(events)} events, "
        f"{len(received)} task-received events) for {len(needles)} secrets and numbers: {len(leaks)} found"
    )
    assert received, "the scan saw Celery task arguments"
    own_list = [text for what, text in api.bodies if what == "GET /v1/sms/subscribers"]
    assert any(n.lstrip("+") in text for text in own_list for n in ACME_NUMBERS), "the scan can find numbers"
    assert leaks == []
