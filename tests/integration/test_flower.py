"""Flower as `broadcaster flower` starts it: every page wants the login, `/metrics` and
`/healthcheck` included (Flower itself serves those two to anyone); and its task list shows
deliveries, not the housekeeping that runs several times a second."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from broadcaster.ledger import health as health_store
from tests.conftest import ACME, auth
from tests.harness import ROOT, free_port, http, wait_for

pytestmark = pytest.mark.integration

USER, PASSWORD = "ops", "flower-test-password-42"


@pytest.fixture(scope="module")
def flower(stack, tmp_path_factory) -> Iterator[str]:
    """`broadcaster flower` on the suite's stack, shared by this file's tests: its URL."""
    port = free_port()
    env = dict(stack.env)
    env.update(
        {
            "BROADCASTER_FLOWER_USER": USER,
            "BROADCASTER_FLOWER_PASSWORD": PASSWORD,
            "BROADCASTER_DATA_DIR": str(tmp_path_factory.mktemp("flower")),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcaster.ops.cli", "flower", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def api_answers() -> bool:
        assert proc.poll() is None, "Flower exited"
        try:
            return http.get(f"{url}/api/workers", auth=(USER, PASSWORD), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(api_answers, 60, what="Flower's API to answer")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_flower_answers_nothing_without_the_login(flower):
    for path in ("/metrics", "/healthcheck", "/"):
        anonymous = http.get(f"{flower}{path}", timeout=10)
        assert anonymous.status_code == 401, (path, anonymous.status_code, anonymous.text[:200])
        wrong = http.get(f"{flower}{path}", auth=(USER, "wrong"), timeout=10)
        assert wrong.status_code == 401, (path, wrong.status_code)
        good = http.get(f"{flower}{path}", auth=(USER, PASSWORD), timeout=10)
        assert good.status_code == 200, (path, good.status_code)
    assert "flower_events" in http.get(f"{flower}/metrics", auth=(USER, PASSWORD), timeout=10).text


HOUSEKEEPING = {
    "broadcaster.dispatch_due",
    "broadcaster.dispatch_posts",
    "broadcaster.sweep",
    "broadcaster.probe_bluesky",
    "broadcaster.probe_target",
    "broadcaster.webhook_fanout",
}


def _flower_tasks(url: str) -> dict[str, dict]:
    r = http.get(f"{url}/api/tasks", auth=(USER, PASSWORD), timeout=10)
    assert r.status_code == 200, r.text[:300]
    return r.json()


def _tasks_of(url: str, post_id: str) -> list[dict]:
    """What an admin finds by typing the post id into Flower's search box (its args hold it)."""
    r = http.get(f"{url}/api/tasks", params={"search": post_id}, auth=(USER, PASSWORD), timeout=10)
    assert r.status_code == 200, r.text[:300]
    return list(r.json().values())


def test_flower_lists_the_deliveries_and_not_the_housekeeping(api, stack, flower):
    url = flower
    settings = stack.settings()
    target = stack.sandbox.bluesky.url.split("://", 1)[1].replace("/", "_")  # ACME's Bluesky target

    def queue_and_find() -> tuple[str, list[dict]]:
        r = api.post("/v1/posts", json={"text": f"Seen in Flower {uuid.uuid4().hex[:8]}"}, headers=auth(ACME))
        assert r.status_code == 202, r.text
        post_id = r.json()["id"]
        found = wait_for(lambda: _tasks_of(url, post_id), 60, what=f"Flower to list the tasks of {post_id}")
        return post_id, found

    # Flower is listening once it shows a first post's delivery (the worker sends events).
    _, found = queue_and_find()
    assert {t["name"] for t in found} <= {"broadcaster.deliver", "broadcaster.deliver_many"}, found
    listening_since = time.time()
    # Housekeeping ran while Flower listened: the dispatcher handed out the next post, and
    # the probes of Bluesky recorded new results in the ledger after that moment.
    wait_for(
        lambda: [
            p
            for p in health_store.last_probes(stack.redis, settings, target)
            if datetime.fromisoformat(p["at"]).timestamp() > listening_since
        ],
        30,
        what="a probe after Flower started listening",
    )
    queue_and_find()  # the worker's events arrive in order: the probes' would have come first
    tasks = _flower_tasks(url)
    names = {t["name"] for t in tasks.values()}
    assert "broadcaster.deliver" in names or "broadcaster.deliver_many" in names
    assert not names & HOUSEKEEPING, sorted(names)
    assert all(t["state"] != "PENDING" for t in tasks.values())  # no task-sent leftovers
