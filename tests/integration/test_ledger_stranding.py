"""Nothing is stranded: a worker killed at any step boundary of a multi-step flow leaves every
non-final delivery where a sweeper (or the backfill) finds it, and nothing is sent twice.

Each run plays one real flow of the worker logic — dispatch (Bluesky up or down), reroute,
look-back mirror, backfill, outage notice — against real Redis under a key prefix of its own,
and kills it at its n-th write to Redis (a Redis client that raises instead of sending, as a
SIGKILL would stop the process between two round trips). Every n is tried, from the first write
to the run that is never killed (a flow makes a handful of writes: all of them, not a sample).
Then each run checks that every non-final
delivery is in exactly one of the schedule / dispatching / held / in-flight indexes, runs what
the deployment runs afterwards (the dispatcher, the sweeper with every deadline already past, the failover's
reconcile, the backfill, and a worker that claims and records each handed-out delivery) until
nothing is left to do, and checks that every delivery settled and none was sent twice.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis

from broadcaster.core import outage as policy
from broadcaster.core.brands import hash_api_key
from broadcaster.core.delivery_rules import Claim
from broadcaster.core.health import Override
from broadcaster.core.models import ACTIVE_STATES, FINAL_STATES, Delivery, DeliveryState, Post, now_utc
from broadcaster.core.settings import Settings
from broadcaster.ledger import health as health_store
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.store import Store
from tests.harness import REDIS_HOST, REDIS_PORT, TEST_DB, own_prefix, redis_client, write_brands
from workers import dispatch, failover, notices
from workers.runtime import Handoff, Runtime

pytestmark = pytest.mark.integration

TARGET = "bsky.stranding.test"
WRITES = {"EVALSHA", "EVAL", "HSET", "HDEL", "ZADD", "ZREM", "SET", "DEL", "XADD", "SADD", "SREM"}
WRITES |= {"HINCRBY", "LPUSH", "LTRIM", "EXPIRE", "ZREMRANGEBYRANK", "XTRIM", "HSETNX"}


class Killed(Exception):
    """The worker died here."""


class KillSwitch(redis.Redis):
    """A Redis client that lets `budget` writes through, then dies before the next one."""

    budget: int | None = None
    killed = False  # a write was refused (even if the code caught the error and went on)

    def _step(self) -> None:
        if self.budget is not None:
            if self.budget <= 0:
                self.killed = True
                raise Killed
            self.budget -= 1

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() in WRITES:
            self._step()
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        run = pipe.execute

        def execute(raise_on_error: bool = True) -> Any:
            self._step()
            return run(raise_on_error)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


@pytest.fixture(scope="module")
def brands_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("stranding") / "brands.yaml"
    entry = {
        "id": "acme",
        "name": "Acme",
        "api_keys": [hash_api_key("fb_stranding_key_0123456789abcdef")],
        "bluesky": {
            "handle": "acme.test",
            "app_password_env": "STRANDING_UNUSED",
            "pds_url": f"https://{TARGET}",
            "probe_feeds": [],
        },
        "rss": {"title": "Acme", "link": "https://acme.example/", "description": "Acme"},
        "mastodon": {
            "instance_url": "https://mastodon.stranding.test",
            "access_token_env": "STRANDING_UNUSED",
        },
        "routing": {
            "primary": ["bluesky"],
            "failover": ["mastodon"],
            "always_on": ["rss"],
            "failback": "backfill",
            "outage_notice": "{brand}: Bluesky is down, follow us on {channels}.",
            "lookback_minutes": 30,
        },
    }
    write_brands(path, [entry])
    return path


class World:
    """One deployment's worker logic on a prefix of its own, with a recording hand-off."""

    def __init__(self, brands_file) -> None:
        self.prefix = own_prefix(f"strand{uuid.uuid4().hex[:8]}")
        self.settings = Settings(
            _env_file=None,
            key_prefix=self.prefix,
            brands_file=str(brands_file),
            sweep_deadline_s=0,  # every deadline is already past when the sweeper looks
            sweep_max_queue_wait_s=0,
            backfill_rate_per_s=1000,
        )
        self.r = KillSwitch(host=REDIS_HOST, port=REDIS_PORT, db=TEST_DB, decode_responses=True)
        self.rt = Runtime(settings=self.settings, redis=self.r, store=Store(self.r, self.settings))
        self.handed: list[tuple[str, str]] = []
        self.backfills: list[str] = []
        self.sent: Counter[tuple[str, str]] = Counter()
        self.handoff = Handoff(deliver=self._deliver, backfill=self.backfills.append)
        self.brand = self.rt.brands().require("acme")
        notices._QUEUED.clear()  # this process's caches belong to another prefix's outages
        notices._OUT.clear()

    def _deliver(self, post_id: str, channel: str) -> None:
        self.handed.append((post_id, channel))

    def close(self) -> None:
        keys = list(redis_client().scan_iter(match=f"{self.prefix}*", count=1000))
        if keys:
            redis_client().delete(*keys)

    # ---- setting the scene (nothing is killed here) ---------------------------------------------
    def queue(self) -> Post:
        now = now_utc()
        post = Post(id=f"p_{uuid.uuid4().hex}", brand="acme", text="hi", scheduled_at=now, created_at=now)
        self.rt.store.create_post(post, [Delivery(channel="bluesky"), Delivery(channel="rss")])
        return post

    def set_health(self, mode: str) -> None:
        health_store.override(self.r, self.settings, TARGET, Override(mode), "the stranding test")

    def work(self) -> int:
        """A worker takes every handed-out delivery: the failover's gate, a claim, the send."""
        done = 0
        while self.handed:
            post_id, channel = self.handed.pop(0)
            loaded = self.rt.store.load(post_id)
            if loaded is None or channel not in loaded[1]:
                continue
            post, deliveries = loaded
            gate = failover.before_send(self.rt, self.brand, post, deliveries, channel, self._deliver)
            if gate is not None:
                if gate[0] == "waiting for the outage notice":
                    self.handed.append((post_id, channel))
                continue
            verdict, mine = self.rt.store.claim(post_id, channel, time.time(), 60, True, time.time())
            if verdict == Claim.go and mine is not None:
                self.sent[(post_id, channel)] += 1
                on_bluesky = TARGET if channel == "bluesky" else None
                self.rt.store.delivered(
                    post_id, channel, f"remote-{post_id}-{channel}", None, on_bluesky=on_bluesky
                )
                done += 1
        return done

    # ---- reading the ledger -------------------------------------------------------------------
    def deliveries(self) -> dict[str, dict[str, Delivery]]:
        out = {}
        for key in self.r.scan_iter(match=f"{self.prefix}post:*", count=1000):
            post_id = key.rsplit(":", 1)[-1]
            loaded = self.rt.store.load(post_id)
            if loaded is not None:
                out[post_id] = loaded[1]
        return out

    def indexes_of(self, post_id: str, channel: str) -> list[str]:
        keys = Keys(self.settings.key_prefix)
        found = []
        if self.r.zscore(keys.sched, post_id) is not None:
            found.append("sched")
        if self.r.zscore(keys.dispatching, post_id) is not None:
            found.append("dispatching")
        if channel == "bluesky" and self.r.zscore(failover.held_key(self.rt, TARGET), post_id) is not None:
            found.append("held")
        if self.r.zscore(keys.inflight, f"{post_id}|{channel}") is not None:
            found.append("inflight")
        return found


# ---- the flows ----------------------------------------------------------------------------------
def flow_dispatch(w: World) -> None:
    w.queue()
    yield
    dispatch.dispatch_due(w.rt, w._deliver)


def flow_dispatch_down(w: World) -> None:
    w.set_health("down")
    w.queue()
    yield
    dispatch.dispatch_due(w.rt, w._deliver)


def flow_reroute(w: World) -> None:
    post = w.queue()
    dispatch.dispatch_due(w.rt, w._deliver)
    w.handed.clear()  # the messages were lost; the sweeper has their in-flight entries
    w.set_health("down")
    yield
    failover.reroute_post(w.rt, w.brand, post.id, "Bluesky is down", w._deliver)


def flow_mirror(w: World) -> None:
    w.queue()
    dispatch.dispatch_due(w.rt, w._deliver)
    w.work()
    w.set_health("down")
    yield
    failover.mirror_recent(w.rt, w.brand, TARGET, time.time() - 3600, time.time() + 1, w._deliver)


def flow_backfill(w: World) -> None:
    w.set_health("down")
    w.queue()
    w.queue()
    dispatch.dispatch_due(w.rt, w._deliver)
    failover.reconcile(w.rt, TARGET, w.handoff)
    w.work()
    w.set_health("up")
    yield
    while failover.backfill_step(w.rt, TARGET, w._deliver) is not None:
        pass


def flow_notice(w: World) -> None:
    w.set_health("down")
    yield
    outage = health_store.load(w.r, w.settings, TARGET).outage
    notices.post_notice(w.rt, w.brand, TARGET, outage, policy.OUTAGE, w._deliver)


FLOWS = {
    "dispatch": flow_dispatch,
    "dispatch while down": flow_dispatch_down,
    "reroute": flow_reroute,
    "look-back mirror": flow_mirror,
    "backfill": flow_backfill,
    "outage notice": flow_notice,
}


def recover(w: World) -> None:
    """What the deployment does after the crash, until there is nothing left to do."""
    for _ in range(100):
        w.r.delete(Keys(w.settings.key_prefix).backfill(TARGET))  # a dead chain's lease has run out too
        failover.reconcile(w.rt, TARGET, w.handoff)
        while w.backfills:
            target = w.backfills.pop()
            while failover.backfill_step(w.rt, target, w._deliver) is not None:
                pass
            w.r.delete(Keys(w.settings.key_prefix).backfill(target))
        due = dispatch.dispatch_due(w.rt, w._deliver)
        swept = dispatch.sweep(w.rt, w._deliver)
        worked = w.work()
        if not (due or swept["redispatched"] or swept["redriven"] or worked or w.handed):
            return
    raise AssertionError("the deployment never became quiet")


MAX_WRITES = 50  # far more than any flow makes (the most: 6); past it the test fails, never passes


def killed_at(brands_file, flow: str, kill_at: int) -> bool:
    """Run `flow` killed before its write number `kill_at` (from 0), then recover and check.
    False if the flow made fewer writes than that: it ran to its end, nothing was killed."""
    w = World(brands_file)
    try:
        steps = FLOWS[flow](w)
        next(steps)  # the scene is set
        w.r.budget = kill_at
        try:
            next(steps, None)
        except Killed:
            pass
        finally:
            w.r.budget = None
        w.handed.clear()  # the dying worker's messages never left it

        for post_id, deliveries in w.deliveries().items():
            for channel, d in deliveries.items():
                if d.state in ACTIVE_STATES or d.state == DeliveryState.held:
                    where = w.indexes_of(post_id, channel)
                    assert len(where) == 1, f"{flow} killed at {kill_at}: {channel} {d.state} in {where}"

        w.set_health("up")  # the outage ends; everything held goes back
        recover(w)
        for post_id, deliveries in w.deliveries().items():
            for channel, d in deliveries.items():
                assert d.state in FINAL_STATES, f"{flow} killed at {kill_at}: {post_id} {channel} {d.state}"
        assert all(n == 1 for n in w.sent.values()), f"{flow} killed at {kill_at}: sent twice: {w.sent}"
        return w.r.killed
    finally:
        w.close()


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_a_worker_killed_at_any_step_strands_nothing_and_sends_nothing_twice(brands_file, flow):
    for kill_at in range(MAX_WRITES):
        if not killed_at(brands_file, flow, kill_at):
            return  # every write of the flow was a kill point, and the unkilled run passed too
    raise AssertionError(f"{flow} was still killed at write {MAX_WRITES}: does it loop?")
