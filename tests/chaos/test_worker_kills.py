"""Workers SIGKILLed at random moments while a few hundred posts fan out to every channel:
every post ends final on every channel, none is lost, Bluesky/Mastodon/RSS got each exactly
once, Telegram/SMS at most once, and a send cut by a kill is `uncertain`, never repeated."""

from __future__ import annotations

import os
import random
import signal
import time
import uuid

import pytest

from broadcaster.core.models import FINAL_STATES, Delivery
from broadcaster.core.settings import Settings
from broadcaster.ledger.recipients import SENT, UNCERTAIN, Recipients
from broadcaster.ledger.store import parse_delivery
from tests.chaos.harness import ChaosStack, chaos_stack, full_brand, process_tree, wait_until
from tests.conftest import ACME, auth

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

POSTS = 200
KILLS = 12
CHANNELS = ["bluesky", "mastodon", "telegram", "sms", "rss"]
CHATS = ("@chaos_one", "@chaos_two")
NUMBERS = ["+12025550143", "+12025550178"]


@pytest.fixture
def chaos(tmp_path):
    # The feed keeps every post here, so it can prove each one is in it exactly once.
    brands = lambda sb, secrets: [full_brand(ACME, sb, secrets, chats=CHATS)]  # noqa: E731
    with chaos_stack(tmp_path, brands, workers=2, BROADCASTER_RSS_MAX_ENTRIES="1000") as (stack, sb, *_):
        yield stack, sb


def _ledger(stack: ChaosStack, post_ids: list[str]) -> dict[str, dict[str, Delivery]]:
    r = stack.redis_server.client()
    out = {}
    for pid in post_ids:
        raw = r.hgetall(f"fbchaos:post:{pid}")
        out[pid] = {f[2:]: parse_delivery(f[2:], v) for f, v in raw.items() if f.startswith("d:")}
    return out


def _all_final(stack, post_ids) -> bool:
    ledger = _ledger(stack, post_ids)
    return all(
        set(ds) == set(CHANNELS) and all(d.state in FINAL_STATES for d in ds.values())
        for ds in ledger.values()
    )


def _kill(stack: ChaosStack, rng: random.Random, whole: bool) -> str:
    worker = rng.choice([w for w in stack.workers if w.alive()])
    if whole:  # parent and pool children at once: nothing gets a chance to requeue
        for pid in process_tree(worker.pid):
            os.kill(pid, signal.SIGKILL)
        worker.p.wait(10)
        stack.workers.remove(worker)
        stack.start_worker(concurrency=2)  # the replacement starts while the others work on
        return f"whole {worker.name}"
    children = [p for p in process_tree(worker.pid) if p != worker.pid]
    if not children:
        return "none"
    victim = rng.choice(children)
    os.kill(victim, signal.SIGKILL)
    return f"child {victim} of {worker.name}"


def test_killed_workers_lose_nothing_and_send_nothing_twice(chaos):
    stack, sb = chaos
    http = stack.http()
    r = http.post("/v1/sms/subscribers", json={"numbers": NUMBERS}, headers=auth(ACME))
    assert r.status_code == 200, r.text
    tag = uuid.uuid4().hex[:6]
    texts = {}
    post_ids = []
    for i in range(POSTS):
        text = f"chaos {tag} [{i}]"
        r = http.post(
            "/v1/posts", json={"text": text, "channels": CHANNELS, "priority": "urgent"}, headers=auth(ACME)
        )
        assert r.status_code == 202, r.text
        post_ids.append(r.json()["id"])
        texts[r.json()["id"]] = text

    rng = random.Random(int(tag, 16))
    kills = []
    whole_kills = {3, 7, 10}
    for n in range(KILLS):
        time.sleep(rng.uniform(0.3, 1.5))
        kills.append(_kill(stack, rng, whole=n in whole_kills))
    last_kill = time.monotonic()
    last_kill_wall = time.time()

    if not wait_until(240, lambda: _all_final(stack, post_ids)):
        stuck = [
            (pid, c, d.state.value, d.attempts, d.error, d.lease_until)
            for pid, ds in _ledger(stack, post_ids).items()
            for c, d in ds.items()
            if d.state not in FINAL_STATES
        ]
        inflight = stack.redis_server.client().zcard("fbchaos:inflight")
        pytest.fail(
            f"{len(stuck)} deliveries unfinished (inflight index {inflight}): {stuck[:10]}; kills {kills}"
        )
    settled_after = time.monotonic() - last_kill

    ledger = _ledger(stack, post_ids)
    settings = Settings(_env_file=None, redis_url=stack.redis_server.url, key_prefix="fbchaos:")
    r = stack.redis_server.client()
    bsky = [p["text"] for p in sb.bluesky.posts]
    masto = [s["text"] for s in sb.mastodon.statuses]
    tg = [(m["chat_ref"], m["text"]) for m in sb.telegram.messages]
    sms = [(m["to"], m["body"]) for m in sb.twilio.messages]
    rss_ids = set(r.zrange("fbchaos:rss:acme", 0, -1))
    uncertain = {"telegram": 0, "sms": 0}
    for pid, text in texts.items():
        ds = ledger[pid]
        assert sum(t == text for t in bsky) == 1, f"{pid} on Bluesky"
        assert sum(t == text for t in masto) == 1, f"{pid} on Mastodon"
        assert pid in rss_ids
        assert ds["rss"].state == "delivered"
        for channel, sent, targets in (("telegram", tg, CHATS), ("sms", sms, NUMBERS)):
            entries = Recipients(r, settings, pid, channel).entries()
            for target in targets:
                got = sum(1 for to, body in sent if to == target and text in body)
                assert got <= 1, f"{pid} reached {channel} {target} {got} times"
                state = entries[target]["state"]
                if got == 0:
                    assert state == UNCERTAIN, f"{pid} never reached {channel} {target} but is {state}"
                else:
                    assert state in (SENT, UNCERTAIN)
                uncertain[channel] += state == UNCERTAIN
    states = {c: sorted({ledger[p][c].state.value for p in post_ids}) for c in CHANNELS}
    redriven = [d for ds in ledger.values() for d in ds.values() if d.attempts > 1]
    redriven_done = max((d.updated_at.timestamp() - last_kill_wall for d in redriven), default=0.0)
    print(
        f"\n[worker kills] {len(kills)} kills ({sum(k.startswith('whole') for k in kills)} whole workers): "
        f"{POSTS} posts x {len(CHANNELS)} channels all final {settled_after:.1f}s after the last kill; "
        f"{len(redriven)} deliveries re-driven after a kill, the last final {redriven_done:.1f}s after it; "
        f"Bluesky/Mastodon/RSS exactly once; uncertain recipients: {uncertain}; states: {states}"
    )
    settings_deadline = float(stack.env["BROADCASTER_SWEEP_DEADLINE_S"]) + float(
        stack.env["BROADCASTER_SEND_LEASE_S"]
    )
    assert settled_after < settings_deadline + 60, "recovery took far longer than the sweeper's deadline"
