"""Deployments side by side on one Redis database, and workers whose clocks are wrong.

Each deployment here is real: its own key prefix (inside the suite's, `own_prefix`), brands
file, Celery worker and beat, all on the suite's database next to the session's stack. A skewed
worker runs under libfaketime (Debian's `faketime` package, which `.ci/run` installs): its
`time.time()` and `datetime.now()` are 40 s off.
"""

from __future__ import annotations

import glob
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broadcaster.common.celeryconf import CONTROL_QUEUE, QUEUE
from broadcaster.common.queue import kick_key, producer, send_kick
from broadcaster.core.ids import new_post_id
from broadcaster.core.models import Delivery, DeliveryState, Post
from broadcaster.core.settings import Settings
from broadcaster.ledger.store import Store
from tests.channel_brands import MASTODON_TOKEN
from tests.conftest import ACME, auth
from tests.harness import (
    FAST_SETTINGS,
    REDIS_URL,
    Proc,
    brand_entry,
    claimed_and_lost,
    kill_together,
    latest_event,
    own_prefix,
    redis_client,
    start_beat,
    start_worker,
    wait_for,
    write_brands,
)

pytestmark = pytest.mark.integration


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("the clock-skew tests need libfaketime: apt-get install faketime (.ci/run does)")
    return found[0]


@dataclass
class Deployment:
    """One more deployment of the product on the suite's Redis database."""

    prefix: str
    env: dict[str, str]
    settings: Settings
    store: Store
    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    @classmethod
    def make(cls, prefix: str, sandbox, work: Path, mastodon: bool = False, **extra: str) -> Deployment:
        work.mkdir(parents=True, exist_ok=True)
        secrets: dict[str, str] = {}
        brands_file = work / "brands.yaml"
        entry = brand_entry(ACME, sandbox, secrets)
        if mastodon:  # the sandbox instance's "social" account
            secrets["DEPLOYMENT_MASTODON_TOKEN"] = MASTODON_TOKEN
            entry["mastodon"] = {
                "instance_url": sandbox.mastodon.url,
                "access_token_env": "DEPLOYMENT_MASTODON_TOKEN",
            }
        write_brands(brands_file, [entry])
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCASTER_")}
        env |= FAST_SETTINGS | secrets | extra
        env |= {"BROADCASTER_KEY_PREFIX": prefix, "BROADCASTER_BRANDS_FILE": str(brands_file)}
        env["PYTHONUNBUFFERED"] = "1"
        # What this process does for the deployment (store, queue, ping) needs these three.
        settings = Settings(_env_file=None, redis_url=REDIS_URL, key_prefix=prefix, brands_file=brands_file)
        return cls(prefix, env, settings, Store(redis_client(), settings), work)

    def start(self, skew: str | None = None) -> None:
        env = dict(self.env)
        if skew:
            # This host's wall clock is off by `skew`. (libfaketime shifts the monotonic clock
            # by the same constant, which changes no interval; not shifting it breaks sleep.)
            env |= {"LD_PRELOAD": _libfaketime(), "FAKETIME": skew}
        name = "worker-" + self.prefix.strip(":")
        self.procs = [start_worker(env, self.log_dir, name=name), start_beat(env, self.log_dir)]
        wait_for(
            lambda: producer(self.settings).control.ping(timeout=0.5),
            timeout=60,
            what=f"the {self.prefix} worker to answer (log: {self.procs[0].log_path})",
        )

    def stop(self) -> None:
        """SIGKILL: the deployment is thrown away with its keys (`kill_together`)."""
        kill_together(*self.procs)
        self.procs = []

    def forget(self) -> None:
        """Delete this deployment's keys, and only those."""
        r = redis_client()
        keys = list(r.scan_iter(match=f"{self.prefix}*", count=1000))
        if keys:
            r.delete(*keys)

    def queue(self, text: str, due: float, kick: bool = True, channel: str = "bluesky") -> str:
        """A Bluesky post due at `due` (Unix seconds), stored as the API stores one."""
        now = datetime.fromtimestamp(self.store.now(), UTC)
        post = Post(
            id=new_post_id(),
            brand=ACME.id,
            text=text,
            scheduled_at=datetime.fromtimestamp(due, UTC),
            created_at=now,
            channels=[channel],
        )
        self.store.create_post(
            post,
            [Delivery(channel=channel)],
            kick_key=kick_key(self.settings) if kick else None,
            on_kick=lambda: send_kick(self.settings),
        )
        return post.id

    def state(self, post_id: str, channel: str = "bluesky") -> Delivery:
        loaded = self.store.load(post_id)
        assert loaded is not None
        return loaded[1][channel]

    def delivered(self, post_id: str, channel: str = "bluesky") -> bool:
        return self.state(post_id, channel).state == DeliveryState.delivered


@pytest.fixture
def deployments(redis_available) -> Iterator[list[Deployment]]:
    made: list[Deployment] = []
    yield made
    for d in made:
        d.stop()
        d.forget()


# The tests of a skewed worker share one deployment per skew (a deployment's start is 3 to 10 s);
# asking for another skew throws the running one away first, so one runs at a time.
SKEW_SETTINGS = {
    # The lease test's: an honest claim of 15 s that a sweeper at +40 s would think long past.
    "BROADCASTER_SEND_LEASE_S": "15",
    "BROADCASTER_SWEEP_DEADLINE_S": "15",
}


@pytest.fixture(scope="module")
def skewed(sandbox, redis_available, tmp_path_factory) -> Iterator[Callable[[str], Deployment]]:
    running: dict[str, Deployment] = {}

    def get(skew: str) -> Deployment:
        if skew not in running:
            for old in running.values():
                old.stop()
                old.forget()
            running.clear()
            name = "skew-fast" if skew.startswith("+") else "skew-slow"
            d = Deployment.make(own_prefix(name), sandbox, tmp_path_factory.mktemp(name), **SKEW_SETTINGS)
            running[skew] = d
            d.start(skew=skew)
        return running[skew]

    yield get
    for d in running.values():
        d.stop()
        d.forget()


def _redis_now() -> float:
    seconds, micros = redis_client().time()
    return seconds + micros / 1e6


def _records(sandbox, text: str) -> list:
    return [
        r
        for r in sandbox.bluesky.requests.where("com.atproto.repo.createRecord")
        if isinstance(r.body, dict) and r.body.get("record", {}).get("text") == text
    ]


def test_two_deployments_on_one_database_each_deliver_their_own(stack, api, deployments, tmp_path):
    """The session's stack (A) and B share the database, not their tasks."""
    b = Deployment.make(own_prefix("deployment-b"), stack.sandbox, tmp_path / "b")
    deployments.append(b)
    a_store = stack.store()
    a_cursor, b_cursor = latest_event(a_store), latest_event(b.store)  # the events of this test only
    tag = uuid.uuid4().hex[:8]
    # B's posts are stored and B's dispatcher is kicked before any of B's processes run.
    b_texts = [f"deployment B post {i} {tag}" for i in range(3)]
    b_ids = [b.queue(t, b.store.now()) for t in b_texts]
    a_texts = [f"deployment A post {i} {tag}" for i in range(3)]
    a_ids = []
    for text in a_texts:
        answer = api.post("/v1/posts", json={"text": text, "channels": ["bluesky"]}, headers=auth(ACME))
        assert answer.status_code == 202, answer.text
        a_ids.append(answer.json()["id"])
    wait_for(
        lambda: all(a_store.load(i)[1]["bluesky"].state == DeliveryState.delivered for i in a_ids),
        timeout=60,
        what="deployment A's posts delivered by A's worker",
    )
    # A's worker has been dispatching all along; B's kick still waits in B's own queue.
    r = redis_client()
    assert r.llen(b.store.keys.broker_queue(CONTROL_QUEUE)) + r.llen(b.store.keys.broker_queue(QUEUE)) >= 1
    assert all(b.store.load(i)[0].dispatched_at is None for i in b_ids)

    b.start()
    wait_for(lambda: all(b.delivered(i) for i in b_ids), timeout=60, what="B's posts delivered by B's worker")
    for text in a_texts + b_texts:
        assert len(_records(stack.sandbox, text)) == 1, text
    a_events = {e.get("post") for e in a_store.events(after=a_cursor, limit=5000)}
    b_events = {e.get("post") for e in b.store.events(after=b_cursor, limit=5000)}
    assert set(b_ids) <= b_events
    assert not set(b_ids) & a_events
    assert set(a_ids) <= a_events
    assert not set(a_ids) & b_events


def dispatches_when_due(d: Deployment, sandbox, skew: str) -> None:
    text = f"due in 2 s by the deployment's clock, worker at {skew} {uuid.uuid4().hex[:8]}"
    cursor = latest_event(d.store)
    due = _redis_now() + 2
    post_id = d.queue(text, due)
    wait_for(lambda: d.delivered(post_id), timeout=90, what=f"the post delivered by the worker at {skew}")
    (record,) = _records(sandbox, text)
    # Redis, this process and the fake share the host's true clock.
    assert record.at >= due, f"sent {due - record.at:.1f} s early"
    # Not late either: a worker that trusted its own clock at -40 s would dispatch 40 s after
    # `due`. The event's stream id is Redis's time of the dispatch; 30 s leaves a busy host
    # ample slack over the dispatcher's 0.5 s tick and still tells 40 s apart.
    (dispatched,) = [
        e
        for e in d.store.events(after=cursor, limit=1000)
        if e.get("post") == post_id and e["type"] == "post.dispatched"
    ]
    late = int(dispatched["id"].split("-", 1)[0]) / 1000 - due
    assert late < 30, f"dispatched {late:.1f} s after it was due: the worker's clock decided"


def test_a_worker_whose_clock_runs_40_s_fast_dispatches_when_due(sandbox, skewed):
    dispatches_when_due(skewed("+40s"), sandbox, "+40s")


def test_a_worker_whose_clock_runs_40_s_fast_steals_no_live_lease(sandbox, skewed):
    """An honest worker holds a 30 s claim; the fast worker's sweeper must leave it alone."""
    d = skewed("+40s")
    tag = uuid.uuid4().hex[:8]
    far = _redis_now() + 3600  # never due on its own during the test
    victim_text = f"claimed by an honest worker {tag}"
    victim = d.queue(victim_text, far, kick=False)
    now = _redis_now()
    assert d.store.claim_now(victim, now + 3600)
    d.store.dispatch(victim, {}, False, "", now + 30)
    verdict, mine = d.store.claim(victim, "bluesky", now, 15, True, now + 30)
    assert mine is not None
    assert str(verdict) == "go"

    # Two sweeps that certainly ran after the claim: each re-drives a lost delivery (its
    # lease and deadline past by any clock) and the fast worker sends it.
    for n in (1, 2):
        text = f"lost delivery {n} {tag}"
        canary = d.queue(text, far, kick=False)
        claimed_and_lost(d.store, canary, "bluesky")
        wait_for(
            lambda c=canary: d.delivered(c), timeout=60, what=f"lost delivery {n} re-driven by the sweeper"
        )
        assert len(_records(sandbox, text)) == 1

    held = d.state(victim)
    assert held.state == DeliveryState.sending
    assert held.attempts == 1
    assert _records(sandbox, victim_text) == []


def test_a_worker_whose_clock_runs_40_s_slow_dispatches_when_due(sandbox, skewed):
    dispatches_when_due(skewed("-40s"), sandbox, "-40s")


def test_a_send_longer_than_its_lease_is_not_taken_over_while_its_worker_lives(
    sandbox, deployments, tmp_path
):
    """A 4 s send against a 1.5 s lease (+0.5 s grace), the sweeper every 0.5 s: the worker
    renews the lease while it sends, so nobody re-drives it (before: attempt 2, a second request)."""
    d = Deployment.make(
        own_prefix("lease-renew"),
        sandbox,
        tmp_path / "renew",
        mastodon=True,
        BROADCASTER_SEND_LEASE_S="1.5",
        BROADCASTER_SEND_GRACE_S="0.5",
        BROADCASTER_SWEEP_INTERVAL_S="0.5",
        BROADCASTER_HTTP_READ_TIMEOUT_S="15",
    )
    deployments.append(d)
    d.start()
    fake = sandbox.mastodon
    text = f"a long send {uuid.uuid4().hex[:8]}"
    fake.fail("statuses", "slow", delay=4, count=1)
    try:
        post_id = d.queue(text, d.store.now(), channel="mastodon")
        wait_for(lambda: d.delivered(post_id, "mastodon"), timeout=60, what="the slow send delivered")
    finally:
        fake.heal()
    creates = [
        r for r in fake.requests.where("statuses.create") if (r.body or {}).get("status", "").startswith(text)
    ]
    assert len(creates) == 1
    assert d.state(post_id, "mastodon").attempts == 1
