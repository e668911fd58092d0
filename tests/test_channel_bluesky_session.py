"""One Bluesky session per brand, shared by every worker (issue 15, item 11).

createSession is limited to 30 per 5 minutes per handle, and Bluesky rotates the refresh token
on every use: so a refused session must not make each worker log in with the password, and an
expiring access token must be refreshed once, not once per worker. Twenty worker processes
(each its own client cache, its own clients, its own Redis connection) race through the
real atproto client against the fake PDS; Redis is the suite's database under the direct
tests' prefix.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

import channels.bluesky as bluesky
from broadcaster.core.brands import Brand
from broadcaster.ledger.keys import Keys
from channels.base import PermanentError, TransientError
from channels.bluesky import BlueskyChannel
from tests.channel_brands import unique
from tests.channel_direct import PREFIX, brand, context, new_post, outbound
from tests.harness import REDIS_URL

WORKERS = 20
# Twenty processes, then their sends: minutes, not seconds, on a very busy machine.
pytestmark = pytest.mark.timeout(600)
PASSWORD = "session-app-password"


@pytest.fixture
def account(sandbox, monkeypatch) -> Iterator[tuple[str, str]]:
    """A brand of its own on the fake PDS: (brand id, handle)."""
    brand_id = f"sess{uuid.uuid4().hex[:8]}"
    handle = f"{brand_id}.test"
    sandbox.bluesky.add_account(handle, PASSWORD)
    monkeypatch.setenv("TEST_SESSION_BSKY", PASSWORD)
    bluesky._clients.clear()
    yield brand_id, handle
    bluesky._clients.clear()
    sandbox.bluesky.access_ttl = 2 * 3600


def race(work: Callable[[Brand, redis.Redis], str], b: Brand) -> list[str]:
    """Run `work` in WORKERS processes released together; what each returned (or raised).

    They come from a fork server (`multiprocessing`'s "forkserver"): a clean process that imported
    this module, as a Celery worker's children come from a clean worker. Forked from the suite's
    own process they would inherit its connection pools (kombu's after-fork hook then drains a
    stranger's BRPOP in each child: 15 s a test, measured)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(i, work, b, barrier, results)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    out = dict(results.get(timeout=270) for _ in procs)
    for p in procs:
        p.join(30)
    return [out[i] for i in range(WORKERS)]


def _child(i: int, work: Callable[[Brand, redis.Redis], str], b: Brand, barrier, results) -> None:
    """One worker: a client cache, clients and a Redis connection of its own."""
    os.environ["TEST_SESSION_BSKY"] = PASSWORD
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=10)
    try:
        barrier.wait(240)
        results.put((i, work(b, r)))
    except BaseException as e:  # reported to the parent, which asserts on it
        results.put((i, f"{type(e).__name__}: {e}"))


def send_on_a_refreshed_session(b: Brand, r: redis.Redis) -> str:
    BlueskyChannel(b, context(r)).send(outbound(b, unique("on a refreshed session"), 1, *new_post()))
    return "sent"


def send_after_revocation(b: Brand, r: redis.Redis) -> str:
    channel = BlueskyChannel(b, context(r))
    post = new_post()
    for attempt in range(1, 200):  # a product retry: the next attempt, later
        try:
            channel.send(outbound(b, unique("after revocation"), attempt, *post))
            return "sent"
        except TransientError as e:
            if "waiting for the brand's new Bluesky session" not in e.message:
                raise
            time.sleep(0.05)
    return "still waiting"


def refreshes(fake, did: str) -> int:
    """refreshSession requests the fake received for one account (by the refresh token's sub)."""

    def sub(r) -> str | None:
        token = (r.headers.get("authorization") or "").removeprefix("Bearer ")
        try:
            body = token.split(".")[1]
            return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))).get("sub")
        except (IndexError, ValueError):
            return None

    return sum(1 for r in fake.requests.where("com.atproto.server.refreshSession") if sub(r) == did)


def test_an_expiring_session_is_refreshed_once_across_workers(sandbox, direct_redis, account):
    brand_id, handle = account
    fake = sandbox.bluesky
    b = brand(brand_id, fake.url, "TEST_SESSION_BSKY")
    fake.access_ttl = 60  # the stored session's access token is due for a refresh (< 15 min left)
    BlueskyChannel(b, context(direct_redis)).send(outbound(b, unique("warm-up"), 1, *new_post()))
    bluesky._clients.clear()
    fake.access_ttl = 2 * 3600  # a refreshed one is good for two hours
    did = fake._resolve(handle)["did"]
    logins, before = fake.session_creations[handle], refreshes(fake, did)

    results = race(send_on_a_refreshed_session, b)

    assert results == ["sent"] * WORKERS
    assert refreshes(fake, did) == before + 1  # one refreshSession, not one per worker
    assert fake.session_creations[handle] == logins  # and no password login


def test_a_refused_session_makes_one_password_login_across_workers(sandbox, direct_redis, account):
    brand_id, handle = account
    fake = sandbox.bluesky
    b = brand(brand_id, fake.url, "TEST_SESSION_BSKY")
    BlueskyChannel(b, context(direct_redis)).send(outbound(b, unique("warm-up"), 1, *new_post()))
    bluesky._clients.clear()
    direct_redis.delete(Keys(PREFIX).relogin(brand_id))  # that login was minutes ago
    before = fake.session_creations[handle]
    fake.revoke_sessions(handle)  # every worker's session (the stored one) is refused now

    results = race(send_after_revocation, b)

    assert results == ["sent"] * WORKERS
    assert fake.session_creations[handle] == before + 1  # one password login, not one per worker


def test_a_refused_password_stays_permanent_for_every_worker(sandbox, direct_redis, account, monkeypatch):
    brand_id, handle = account
    monkeypatch.setenv("TEST_SESSION_BSKY", "not-the-password")
    fake = sandbox.bluesky
    b = brand(brand_id, fake.url, "TEST_SESSION_BSKY")
    before = fake.session_creations.get(handle, 0)

    for _ in range(3):  # three workers (fresh caches), one after the other
        bluesky._clients.clear()
        with pytest.raises(PermanentError) as info:
            BlueskyChannel(b, context(direct_redis)).send(outbound(b, unique("nope"), 1, *new_post()))
        assert brand_id in info.value.message

    assert fake.session_creations.get(handle, 0) == before + 1  # asked once
