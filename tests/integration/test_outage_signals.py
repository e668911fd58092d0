"""What counts as an outage signal, end to end: the sandbox's switches break the outage fake's
feeds (errors, resets, hangs, slowness, 429s, a missing probe feed), the real worker's probes
class each failure, and the target trips and comes back; noise and our own spent budget trip
nothing. Shared helpers: `tests/integration/outage.py`; the `healthy` fixture: `conftest.py`.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime

import pytest

from broadcaster.core.health import Thresholds
from broadcaster.ledger import health as health_store
from broadcaster.ledger.keys import Keys
from tests.conftest import INITECH, auth
from tests.harness import events_after, latest_event, wait_for
from tests.integration.outage import (
    ADMIN,
    AMPLE_BUDGET,
    BUDGET_S,
    PROBE_TIMEOUT_S,
    SANDBOX_DISCOVER,
    channels_check,
    failed_probes_since,
    health,
    history,
    on_bluesky,
    queue,
    quiet,
    unique,
    wait_deliveries,
    wait_effective,
)

pytestmark = pytest.mark.integration


def test_feeds_hanging_fail_over_without_holding_a_worker_past_the_probe_timeout(api, stack, healthy):
    fake = healthy
    fake.fail("feeds", "hang")  # a black hole: the AppView never answers
    broke_at = time.time()
    down = wait_effective(api, stack, "down", timeout=45)
    failed = failed_probes_since(down, broke_at)
    # A lone steady probe waits the hard timeout; a confirmation probe only the latency budget.
    # Each read of the feeds by a probe that began after the hang gave up at one of them (a busy
    # machine may answer a login check after the budget: a slow answer, not this hang's).
    timeouts = {f"no answer within {t:g} s" for t in (PROBE_TIMEOUT_S, BUDGET_S)}
    began_after = [
        p for p in failed if datetime.fromisoformat(p["at"]).timestamp() - p["latency_ms"] / 1000 >= broke_at
    ]
    feed_reads = [c for p in began_after for c in p["checks"] if c["name"] != "session" and c["error"]]
    assert feed_reads
    assert all(c["error"] in timeouts for c in feed_reads), {c["error"] for c in feed_reads}
    for p in failed:  # a probe gives up after its timeout, not the AppView's 120 s (a busy machine's slack)
        assert p["latency_ms"] <= (PROBE_TIMEOUT_S + 5) * 1000
    abandoned = [
        r for r in fake.requests.where("app.bsky.feed.getTimeline") if r.injected == "hang:abandoned"
    ]
    assert abandoned  # the probe hung up; the AppView did not

    # The worker still delivers while the feeds hang.
    text = unique("Into the black hole")
    pid = queue(api, INITECH, text)
    # (a worker held by the hang would be held for its 120 s cap)
    wait_deliveries(api, INITECH, pid, {"bluesky": "held", "rss": "delivered"}, timeout=60)

    fake.heal()
    wait_effective(api, stack, "up", timeout=30)
    wait_deliveries(api, INITECH, pid, {"bluesky": "delivered"})
    quiet(api, stack, posts=[pid])
    assert on_bluesky(stack, text) == 1


def test_feeds_slower_than_the_latency_budget_count_as_failed(api, stack, healthy):
    fake = healthy
    budget = BUDGET_S
    fake.fail("feeds", "slow", delay=(budget + PROBE_TIMEOUT_S) / 2)  # answers, but too late
    broke_at = time.time()
    down = wait_effective(api, stack, "down", timeout=45)
    failed = failed_probes_since(down, broke_at)
    # A steady probe waits for the answer: too slow. The confirmation probes give up at the
    # budget itself (a slower answer fails anyway); on a busy host a steady one may time out.
    timeouts = {f"no answer within {t:g} s" for t in (budget, PROBE_TIMEOUT_S)}
    assert failed
    assert all(p["error"].startswith("slow: ") or p["error"] in timeouts for p in failed), {
        p["error"] for p in failed
    }
    # Every feed read was answered, late: the fault is slowness alone, not an error.
    reads = [r for r in fake.requests.where("app.bsky.feed.getTimeline") if r.at >= broke_at]
    assert reads
    assert all(r.injected and r.injected.startswith("slow") for r in reads), {r.injected for r in reads}
    for p in failed:
        if p["error"].startswith("slow: "):  # a steady probe that got its answer (load permitting)
            assert p["error"].endswith(f"> budget {budget * 1000:.0f} ms"), p["error"]
    fake.heal()
    wait_effective(api, stack, "up")


@pytest.mark.parametrize(
    ("mode", "options", "error"),
    [
        ("error", {"status": 503}, "HTTP 503"),
        ("reset", {}, ""),  # the connection drops before any answer
        ("refused", {}, "HTTP 502 UpstreamFailure"),  # the AppView is gone; the PDS says so
        # load shedding: a 429 while our own budget is ample (April 2026's "Rate Limit Exceeded")
        ("rate_limit", {"retry_after": 30, "headers": AMPLE_BUDGET}, "HTTP 429"),
        ("rate_limit", {"retry_after": None, "headers": AMPLE_BUDGET}, "HTTP 429"),
    ],
    ids=["503", "reset", "refused", "429-retry-after", "429-bare"],
)
def test_each_feeds_fault_is_an_outage_signal_down_and_back(api, stack, healthy, mode, options, error):
    """Every fault of the feeds alone (login and posting keep working) trips the target, each
    failed check classed as an outage signal, and the target comes back when it heals."""
    fake = healthy
    fake.fail("feeds", mode, **options)
    broke_at = time.time()
    down = wait_effective(api, stack, "down", timeout=30)
    failed = failed_probes_since(down, broke_at)
    assert failed
    for probe in failed:
        bad = [c for c in probe["checks"] if c["ok"] is False]
        assert bad, probe
        assert all(c["reason"] == "outage" for c in bad), probe
    # The fault's own answer, classed as an outage (on a busy host some probes time out at the
    # budget first, also an outage signal: this waits for one that got the answer).
    wait_for(
        lambda: [p for p in failed_probes_since(health(api, stack), broke_at) if error in (p["error"] or "")],
        timeout=60,
        what=f"a failed probe that got {error or 'the dropped connection'}",
    )
    fake.heal()
    wait_effective(api, stack, "up", timeout=30)


def test_a_429_that_says_our_own_budget_is_spent_is_ours_and_trips_nothing(api, stack, healthy):
    fake = healthy
    fake.fail("feeds", "rate_limit", retry_after=1)  # `ratelimit-remaining: 0`: our budget, not theirs
    broke_at = time.time()

    def ours_seen() -> list[dict]:
        return [
            p
            for p in health(api, stack)["last_probes"]
            if datetime.fromisoformat(p["at"]).timestamp() >= broke_at
            and any(c["reason"] == "ours" for c in p["checks"])
        ]

    wait_for(lambda: len(ours_seen()) >= 2, timeout=30, what="two probes that met our own spent budget")
    now = health(api, stack)
    assert now["state"] == "up", now  # shown, not counted
    assert all(p["ok"] is None for p in ours_seen())
    fake.heal()


def test_ten_percent_random_errors_never_flip_the_state(api, stack, healthy):
    fake = healthy
    start = time.time()
    transitions_before = len(history(api, stack))
    fake.fail("feeds", "flaky", rate=0.10, seed=2026)
    probes = 24  # about 50 feed reads: some fail (a fixed seed), never enough to trip
    wait_for(
        lambda: len([r for r in fake.requests.where("app.bsky.feed.getTimeline") if r.at > start]) >= probes,
        timeout=60,
        what=f"{probes} probes",
    )
    reads = [r for r in fake.requests if r.at > start and "feeds" in r.groups and r.status]
    failed = [r for r in reads if r.status == 502]
    assert failed  # the errors happened...
    assert len(failed) < len(reads) * 0.25
    h = health(api, stack)
    assert h["state"] == "up"  # ...and the state never moved
    assert len(history(api, stack)) == transitions_before


def test_two_workers_seeing_the_same_failures_make_one_transition(stack):
    """Many processes count failures at once; crossing each threshold is still one transition."""
    # The window rule alone, so the run crosses two thresholds (`degraded`, then `down`).
    settings = stack.settings().model_copy(update={"health_confirm_after": 0})
    target = f"race-{uuid.uuid4().hex[:6]}.test"
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        for _ in range(3):
            health_store.record_signal(stack.redis, settings, target, False)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h = health_store.load(stack.redis, settings, target)
    assert h.state.value == "down"
    assert h.outage == 1
    kinds = [e["type"] for e in health_store.history(stack.redis, settings, target)]
    assert kinds == ["bluesky.down", "bluesky.degraded"]
    stream = [e for _, e in stack.redis.xrange(Keys(settings.key_prefix).events) if e.get("target") == target]
    assert [e["type"] for e in stream] == ["bluesky.degraded", "bluesky.down"]


def test_a_probe_claim_waits_for_the_due_time_and_at_most_max_in_flight_run_at_once(stack):
    """The adaptive cadence in Redis: a claim moves the due time on; however often the due time
    passes while probes hang, no more than `max_in_flight` of a target hold a slot."""
    settings = stack.settings()
    th = Thresholds.from_settings(settings)
    target = f"cadence-{uuid.uuid4().hex[:6]}.test"
    key = Keys(settings.key_prefix).health(target)
    first = health_store.claim_probe(stack.redis, settings, target, hold_s=30)
    assert isinstance(first, health_store.ProbeClaim)
    assert first.alone
    assert health_store.claim_probe(stack.redis, settings, target, hold_s=30) == "not due"
    assert not health_store.probe_due(stack.redis, settings, target)
    claims = [first]
    for _ in range(th.max_in_flight + 3):  # the due time passes again and again: a hang
        stack.redis.hset(key, "due", "0")
        claim = health_store.claim_probe(stack.redis, settings, target, hold_s=30)
        if isinstance(claim, health_store.ProbeClaim):
            assert not claim.alone
            claims.append(claim)
        else:
            assert claim == "busy"
    assert len(claims) == th.max_in_flight
    health_store.release_probe(stack.redis, claims[0])
    stack.redis.hset(key, "due", "0")
    again = health_store.claim_probe(stack.redis, settings, target, hold_s=30)
    assert isinstance(again, health_store.ProbeClaim)  # a slot was freed
    # A signal sets the next due time by the cadence: a failure asks for a fast probe.
    h, _ = health_store.record_signal(stack.redis, settings, target, False)
    assert h.due - stack.store().now() <= th.fast_s + 1


def test_a_brand_on_a_network_without_discover_fails_over_and_comes_back(api, stack, healthy):
    """The probe feed answers 400 UnknownFeed every time: reported as misconfiguration, left out
    of the verdict, and an outage still trips and recovers, with held posts backfilled once, in order."""
    fake = healthy
    admin_cursor, brand_cursor = latest_event(stack.store()), latest_event(stack.store(), INITECH.id)
    fake.set_unknown_feeds([SANDBOX_DISCOVER])
    switched = time.time()
    try:
        h = wait_for(lambda: (h := health(api, stack))["misconfigured"] and h, what="the misconfigured feed")
        assert list(h["misconfigured"]) == [SANDBOX_DISCOVER]
        assert "HTTP 400 UnknownFeed" in h["misconfigured"][SANDBOX_DISCOVER]["detail"]
        # Counted as healthy without it: probes after the switch are conclusive.
        wait_for(
            lambda: [
                p
                for p in health(api, stack)["last_probes"]
                if p["source"] == "probe"
                and p["ok"] is True
                and datetime.fromisoformat(p["at"]).timestamp() > switched
                and any(c["reason"] == "misconfigured" for c in p["checks"])
            ],
            what="a conclusive probe that passed over the misconfigured feed",
        )
        ready = api.get("/readyz").json()
        assert ready["checks"]["probes"]["ok"] is False
        assert SANDBOX_DISCOVER in ready["checks"]["probes"]["detail"]
        assert any(SANDBOX_DISCOVER in w for w in ready["warnings"])
        for headers, cursor in ((ADMIN, admin_cursor), (auth(INITECH), brand_cursor)):
            seen = [e for e in events_after(api, headers, cursor) if e["type"] == "bluesky.misconfigured"]
            assert [e["feed"] for e in seen] == [SANDBOX_DISCOVER]
        checked = channels_check(stack, INITECH.id)
        assert checked.returncode == 1, checked.stdout + checked.stderr
        row = next(line for line in checked.stdout.splitlines() if "bluesky" in line)
        assert "FAILED" in row
        assert SANDBOX_DISCOVER in checked.stdout.replace("\n", "").replace("│", "").replace(" ", "")

        fake.fail("feeds", "error")
        down = wait_effective(api, stack, "down")
        texts = [unique(f"No Discover, held {n}") for n in range(3)]
        ids = [queue(api, INITECH, t) for t in texts]
        for pid in ids:
            wait_deliveries(api, INITECH, pid, {"bluesky": "held", "rss": "delivered"})
        fake.heal("feeds")  # the feed generator is still missing: recovery must not wait on it
        up = wait_effective(api, stack, "up")
        assert up["outages"] == down["outages"]
        for pid in ids:
            wait_deliveries(api, INITECH, pid, {"bluesky": "delivered"})
        quiet(api, stack, posts=ids)
        on_pds = [p["text"] for p in fake.posts if p["text"] in texts]
        assert on_pds == texts  # each exactly once, in the order queued
    finally:
        fake.set_unknown_feeds([])
    wait_for(lambda: not health(api, stack)["misconfigured"], what="the feed to be forgotten once it answers")
