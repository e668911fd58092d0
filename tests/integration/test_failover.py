"""Bluesky outages end to end: the sandbox's switches break a fake PDS/AppView, the real
worker's probes and sends notice, posts fail over to RSS, notices go out, and held posts
are backfilled to Bluesky exactly once when it recovers.

These tests break a second fake Bluesky (`stack.outage_bluesky`) that only the INITECH,
HOOLI and UMBRELLA brands use, so the rest of the suite keeps a healthy Bluesky. What makes
a signal an outage signal: `test_outage_signals.py`.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

import pytest
import yaml

from broadcaster.ledger import health as health_store
from tests.conftest import ACME, HOOLI, INITECH, OUTAGE_BRANDS, UMBRELLA, UMBRELLA_MASTODON_TOKEN, auth
from tests.harness import FAST_SETTINGS, events_after, latest_event, wait_for
from tests.integration.outage import (
    ADMIN,
    FAST_TH,
    SANDBOX_DISCOVER,
    TH,
    channels_check,
    flat,
    health,
    history,
    notices,
    on_bluesky,
    post,
    queue,
    quiet,
    rss_entries,
    target_of,
    unique,
    wait_deliveries,
    wait_effective,
)

pytestmark = pytest.mark.integration


def test_feeds_failing_while_login_works_fail_over_and_back(api, stack, healthy):
    fake = healthy
    since = datetime.now(UTC)
    # A post Bluesky takes while every signal is healthy: the audience saw it, the look-back
    # mirror (from the outage's onset) must leave it alone.
    before = unique("Before the outage")
    before_id = queue(api, INITECH, before)
    delivered = wait_deliveries(api, INITECH, before_id, {"bluesky": "delivered"})
    seen_at = datetime.fromisoformat(delivered["by_channel"]["bluesky"]["delivered_at"]).timestamp()
    # A good probe after it, later than the margin the look-back allows before an onset.
    margin = float(FAST_SETTINGS["BROADCASTER_HEALTH_PROBE_INTERVAL_S"])
    target = target_of(stack)
    wait_for(
        lambda: (
            [
                r
                for r in fake.requests.where("app.bsky.feed.getTimeline")
                if r.status == 200 and r.at > seen_at + margin
            ]
            and health_store.load(stack.redis, stack.settings(), target).onset == 0
        ),
        what="a healthy probe after the post, and no run of failures under way",
    )

    fake.fail("feeds", "error")  # 502 UpstreamFailure on getTimeline/getFeed; login and posting work
    broke_at = time.time()
    down = wait_effective(api, stack, "down", timeout=30)
    assert down["state"] == "down"
    assert down["outages"] >= 1
    trip = next(e for e in history(api, stack) if e["type"] == "bluesky.down")
    assert trip["reason"] == f"{TH.confirm_after} signals in a row failed"  # a hard outage
    failed_reads = [
        r
        for r in fake.requests.where("app.bsky.feed.getTimeline")
        if broke_at <= r.at <= float(trip["at_epoch"]) and r.status == 502
    ]
    # Down within K probes (and the few that may have been in flight beside them).
    assert 1 <= len(failed_reads) <= TH.confirm_after + FAST_TH.max_in_flight - 1
    sessions = [r for r in fake.requests.where("com.atproto.server.getSession") if r.at >= broke_at]
    assert sessions
    assert all(r.status == 200 for r in sessions if r.status)  # the partial outage: login still works
    assert not [r for r in fake.requests.where("com.atproto.server.createSession") if r.at >= broke_at]
    assert any(p["error"] == "HTTP 502 UpstreamFailure" for p in down["last_probes"])
    assert seen_at + margin < float(trip["onset_epoch"]) <= float(trip["at_epoch"])  # its first failure

    during = unique("During the outage")
    during_id = queue(api, INITECH, during)
    skipped_id = queue(api, HOOLI, unique("Hooli during the outage"))
    held = wait_deliveries(api, INITECH, during_id, {"bluesky": "held", "rss": "delivered"})
    assert held["by_channel"]["rss"]["reason"] == "rerouted: Bluesky is down"
    wait_deliveries(api, HOOLI, skipped_id, {"bluesky": "skipped", "rss": "delivered"})
    # The trip's actions (notices, then the look-back mirror) are done once they are marked.
    wait_for(
        lambda: (
            health_store.acted(stack.redis, stack.settings(), target_of(stack), "down") >= down["outages"]
        ),
        what="the trip's notices and look-back mirror",
    )
    assert set(post(api, INITECH, before_id)["by_channel"]) == {"bluesky"}  # not mirrored
    assert on_bluesky(stack, during) == 0

    # The outage notice is in the feed once, before the rerouted and the mirrored posts.
    entries = rss_entries(api, INITECH, stack)
    titles = [e["text"] for e in entries]
    notice_at = [i for i, e in enumerate(entries) if "Bluesky is having trouble" in e["text"]]
    outage_notices = [n for n in notices(api, INITECH, since) if "having trouble" in n["text"]]
    assert len(outage_notices) == 1
    assert "follow us on RSS (http://testserver/feeds/initech.rss)" in outage_notices[0]["text"]
    assert notice_at
    assert titles.index(during) > notice_at[-1]
    assert titles.count(during) == 1
    assert before not in titles

    fake.heal()
    up = wait_effective(api, stack, "up", timeout=30)
    assert up["state"] == "up"
    assert any(e["type"] == "bluesky.up" for e in history(api, stack))
    back = wait_deliveries(api, INITECH, during_id, {"bluesky": "delivered"})
    assert back["state"] == "delivered"
    wait_for(
        lambda: [n for n in notices(api, INITECH, since) if "Bluesky is back" in n["text"]],
        what="the recovery notice",
    )
    quiet(api, stack, posts=[before_id, during_id, skipped_id], since=since)  # a second backfill: by now
    assert on_bluesky(stack, during) == 1
    assert on_bluesky(stack, before) == 1
    assert post(api, HOOLI, skipped_id)["by_channel"]["bluesky"]["state"] == "skipped"
    recovered = [n for n in notices(api, INITECH, since) if "Bluesky is back" in n["text"]]
    assert len(recovered) == 1
    assert notices(api, HOOLI, since)  # the skip brand gets its outage notice too
    assert not any("Bluesky is back" in n["text"] for n in notices(api, HOOLI, since))  # none configured


def test_a_single_bluesky_send_failure_reroutes_that_post_at_once(api, stack, healthy):
    fake = healthy
    cursor = latest_event(stack.store(), INITECH.id)
    fake.fail("write", "error", count=1)  # one 500 on createRecord; Bluesky is otherwise fine
    text = unique("One bad send")
    pid = queue(api, INITECH, text)
    rerouted = wait_deliveries(api, INITECH, pid, {"rss": "delivered"}, timeout=15)
    assert rerouted["by_channel"]["rss"]["reason"].startswith("rerouted: Bluesky send failed")
    failed_write = next(r for r in fake.requests.where("com.atproto.repo.createRecord") if r.status == 500)
    rss_at = datetime.fromisoformat(rerouted["by_channel"]["rss"]["delivered_at"]).timestamp()
    assert rss_at - failed_write.at < 3  # no backoff at Bluesky first
    events = [
        e["type"]
        for e in events_after(api, auth(INITECH), cursor)
        if e.get("post") == pid and e.get("channel") == "bluesky"
    ]
    assert events[:2] == ["delivery.sending", "delivery.held"]  # not back to pending for a retry
    sends = [p for p in health(api, stack)["last_probes"] if p["source"] == "send"]
    assert sends  # counted as a failed signal
    # One failure does not trip the target: the held post goes back to Bluesky right away.
    done = wait_deliveries(api, INITECH, pid, {"bluesky": "delivered"})
    assert done["by_channel"]["bluesky"]["attempts"] == 2
    assert not [
        e
        for e in history(api, stack)
        if e["type"] == "bluesky.down" and float(e["at_epoch"]) > failed_write.at
    ]
    assert on_bluesky(stack, text) == 1


def test_mastodon_followers_read_the_outage_notice_before_the_rerouted_post(api, stack, healthy):
    fake, masto = healthy, stack.sandbox.mastodon

    def statuses() -> list[dict]:
        return [s for s in masto.statuses if s["token"] == UMBRELLA_MASTODON_TOKEN and int(s["id"]) > seen]

    seen = max((int(s["id"]) for s in masto.statuses), default=0)
    since = datetime.now(UTC)
    fake.fail("feeds", "error")
    wait_effective(api, stack, "down")
    text = unique("Umbrella during the outage")
    pid = queue(api, UMBRELLA, text)
    rerouted = wait_deliveries(
        api, UMBRELLA, pid, {"bluesky": "held", "mastodon": "delivered", "rss": "delivered"}
    )
    assert rerouted["by_channel"]["mastodon"]["reason"] == "rerouted: Bluesky is down"
    texts = [s["text"] for s in statuses()]
    notice = [i for i, t in enumerate(texts) if "Bluesky is having trouble" in t]
    assert len(notice) == 1
    assert f"follow us on Mastodon ({masto.url.split('://', 1)[1]}) and RSS (" in texts[notice[0]]
    assert [t for t in texts if t.startswith(text)] == [texts[-1]]
    assert notice[0] < len(texts) - 1  # the notice came first

    fake.heal()
    wait_effective(api, stack, "up")
    wait_deliveries(api, UMBRELLA, pid, {"bluesky": "delivered"})
    wait_for(lambda: any("Bluesky is back" in s["text"] for s in statuses()), what="the recovery notice")
    quiet(api, stack, masto, posts=[pid], since=since)
    assert on_bluesky(stack, text) == 1
    assert len([s for s in statuses() if s["text"].startswith(text)]) == 1
    assert len([s for s in statuses() if "Bluesky is back" in s["text"]]) == 1


def test_two_outages_in_a_row_each_get_one_notice(api, stack, healthy):
    fake = healthy
    since = datetime.now(UTC)
    first = health(api, stack)["outages"]
    for n in (1, 2):
        fake.fail("feeds", "error")
        down = wait_effective(api, stack, "down")
        assert down["outages"] == first + n
        wait_for(
            lambda n=n: len([x for x in notices(api, INITECH, since) if "having trouble" in x["text"]]) == n,
            what=f"outage notice {n}",
        )
        fake.heal()
        wait_effective(api, stack, "up")
        wait_for(
            lambda n=n: len([x for x in notices(api, INITECH, since) if "Bluesky is back" in x["text"]]) == n,
            what=f"recovery notice {n}",
        )
    quiet(  # a late duplicate would show up by now
        api,
        stack,
        lambda: len(notices(api, INITECH, since)),
        lambda: len(notices(api, HOOLI, since)),
        lambda: len(stack.store().rss_entries(INITECH.id, 500)),
        since=since,
    )
    mine = notices(api, INITECH, since)
    assert len([x for x in mine if "having trouble" in x["text"]]) == 2
    assert len([x for x in mine if "Bluesky is back" in x["text"]]) == 2
    assert all(x["state"] == "delivered" for x in mine)
    assert len([x for x in notices(api, HOOLI, since) if "having trouble" in x["text"]]) == 2
    entries = [e for e in rss_entries(api, INITECH, stack) if "having trouble" in e["text"]]
    assert len({e["id"] for e in entries}) == len(entries) >= 2


def test_an_override_and_auto_again_during_an_outage_post_no_second_notice(api, stack, healthy):
    """Down by the signals; an operator sets `up`, then `auto`: the same outage resumes."""
    fake = healthy
    since = datetime.now(UTC)
    url = f"/v1/health/{target_of(stack)}/override"
    fake.fail("feeds", "error")
    down = wait_effective(api, stack, "down")
    wait_for(
        lambda: [x for x in notices(api, INITECH, since) if "having trouble" in x["text"]],
        what="the outage notice",
    )
    assert api.post(url, json={"mode": "up", "reason": "checking"}, headers=ADMIN).status_code == 200
    r = api.post(url, json={"mode": "auto", "reason": "still broken"}, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["effective"] == "down"
    assert r.json()["outages"] == down["outages"]  # no new outage numbered
    # A failover send waits for its outage's notice: once this post is on RSS, a second notice
    # (a new outage number) would already be there.
    pid = queue(api, INITECH, unique("After the override"))
    wait_deliveries(api, INITECH, pid, {"bluesky": "held", "rss": "delivered"})
    assert len([x for x in notices(api, INITECH, since) if "having trouble" in x["text"]]) == 1


def test_health_changes_reach_the_brands_on_the_target_and_operators(api, stack, healthy):
    def after(key: str, cursor: str) -> list[dict]:
        return events_after(api, {"Authorization": f"Bearer {key}"}, cursor)

    admin_key = ADMIN["Authorization"].removeprefix("Bearer ")
    store = stack.store()
    cursors = {
        INITECH.key: latest_event(store, INITECH.id),
        ACME.key: latest_event(store, ACME.id),
        admin_key: latest_event(store),
    }
    url = f"/v1/health/{target_of(stack)}/override"
    assert api.post(url, json={"mode": "down", "reason": "maintenance"}, headers=ADMIN).status_code == 200
    mine = [e for e in after(INITECH.key, cursors[INITECH.key]) if e["type"].startswith("bluesky.")]
    assert [(e["type"], e["effective"], e["reason"]) for e in mine] == [
        ("bluesky.override", "down", "maintenance")
    ]
    # Acme posts to another target: not its outage.
    assert not [e for e in after(ACME.key, cursors[ACME.key]) if e["type"].startswith("bluesky.")]
    every = after(admin_key, cursors[admin_key])
    assert mine[0]["id"] in {e["id"] for e in every}  # the operators' feed, same ids


def test_an_operator_override_reroutes_now_and_auto_hands_back(api, stack, healthy):
    since = datetime.now(UTC)
    url = f"/v1/health/{target_of(stack)}/override"
    assert api.post(url, json={"mode": "down", "reason": "x"}, headers=auth(INITECH)).status_code == 401
    r = api.post(url, json={"mode": "down", "reason": "status page: feeds degraded"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["effective"] == "down"
    assert body["state"] == "up"  # the probes still say up; routing obeys the operator
    assert body["override"]["mode"] == "down"
    assert body["override"]["reason"] == "status page: feeds degraded"

    text = unique("Under override")
    pid = queue(api, INITECH, text)
    wait_deliveries(api, INITECH, pid, {"bluesky": "held", "rss": "delivered"})
    assert [n for n in notices(api, INITECH, since) if "having trouble" in n["text"]]
    event = next(e for e in history(api, stack) if e["type"] == "bluesky.override")
    assert event["reason"] == "status page: feeds degraded"
    assert event["effective"] == "down"

    r = api.post(url, json={"mode": "auto", "reason": "resolved"}, headers=ADMIN)
    assert r.status_code == 200
    assert r.json()["override"] is None
    assert r.json()["effective"] == "up"
    wait_deliveries(api, INITECH, pid, {"bluesky": "delivered"})
    assert on_bluesky(stack, text) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "sideways", "reason": "x"}, "body.mode"),
        ({"mode": "down"}, "body.reason"),
        ({"mode": "down", "reason": ""}, "body.reason"),
        ({"mode": "down", "reason": "x", "until": "never"}, "body.until"),
    ],
)
def test_a_bad_override_gets_422_naming_the_field(api, stack, body, field):
    r = api.post(f"/v1/health/{target_of(stack)}/override", json=body, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert field in [".".join(str(p) for p in e["loc"]) for e in r.json()["detail"]]


def test_health_shows_a_brand_its_own_target_and_the_admin_every_target(api, stack):
    mine = api.get("/v1/health", headers=auth(INITECH)).json()["targets"]
    assert [t["target"] for t in mine] == [target_of(stack)]
    assert mine[0]["brands"] == []  # other brands on the PDS are not a brand's business
    everything = {t["target"]: t for t in api.get("/v1/health", headers=ADMIN).json()["targets"]}
    assert target_of(stack) in everything
    assert everything[target_of(stack)]["brands"] == ["hooli", "initech", "umbrella"]
    assert everything[target_of(stack)]["pds_url"] == stack.outage_bluesky.url
    assert len(everything) >= 2
    metrics = api.get("/metrics").text
    assert f'broadcaster_bluesky_health_state{{state="up",target="{target_of(stack)}"}} 1.0' in metrics
    assert f'check="timeline",ok="true",target="{target_of(stack)}"' in metrics
    assert api.get(f"/v1/health/{target_of(stack)}", headers=auth(ACME)).status_code == 404
    assert api.get("/v1/health").status_code == 401
    assert api.get("/v1/health/nope.example", headers=ADMIN).status_code == 404
    assert (
        api.post(
            "/v1/health/nope.example/override", json={"mode": "up", "reason": "x"}, headers=ADMIN
        ).status_code
        == 404
    )


def _hit(key: str) -> float:
    """Where `key` falls for the sandbox's `partial` switch (`in_fraction` hits those below it)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def _extra_vantages(stack, appview: bool):
    """A watcher account on the outage PDS, on the other side of a `partial` switch from every
    outage brand (and, with `appview`, the fake's AppView listener as the public AppView);
    INITECH fails over on `partial`, the others keep the default (`notice_only`). The brands
    file is re-read on change: restored afterwards. Yields the `partial` fraction to use."""
    from broadcaster.sandbox.bluesky import did_for

    fake, original = stack.outage_bluesky, stack.brands_file.read_text()
    fraction = max(_hit(did_for(s.handle)) for s in OUTAGE_BRANDS) + 1e-9
    handle = next(h for n in range(10_000) if _hit(did_for(h := f"watcher{n}.test")) > fraction)
    fake.add_account(handle, INITECH.password)
    data = yaml.safe_load(original)
    for entry in data["brands"]:
        if entry["id"] == INITECH.id:
            entry["routing"] = entry.get("routing", {}) | {"on_partial": "failover"}
        if appview and entry["bluesky"]["pds_url"] == fake.url:
            entry["bluesky"]["appview_url"] = fake.start_appview()
    data["watchers"] = [
        {
            "id": "other-pds",
            "handle": handle,
            # Credentials by env var name (the worker's environment has this one already).
            "app_password_env": f"TEST_{INITECH.id.upper()}_BSKY_PASSWORD",
            "pds_url": fake.url,
            "targets": [target_of(stack)],
        }
    ]
    stack.brands_file.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        yield fraction
    finally:
        stack.brands_file.write_text(original)


@pytest.fixture
def with_watcher(stack):
    yield from _extra_vantages(stack, appview=False)


@pytest.fixture
def with_watcher_and_appview(stack):
    yield from _extra_vantages(stack, appview=True)


def test_three_vantages_failing_together_are_a_full_outage(api, stack, healthy, with_watcher_and_appview):
    fake = healthy
    names = {"brand", "watcher:other-pds", "appview"}
    wait_for(
        lambda: all(health(api, stack)["vantages"].get(n, {}).get("ok") is True for n in names),
        what="every vantage's first verdict",
    )
    fake.fail("feeds", "error")
    down = wait_effective(api, stack, "down")
    assert {n: down["vantages"][n]["ok"] for n in names} == dict.fromkeys(names, False)
    assert down["vantages"]["appview"]["error"] == "HTTP 502 UpstreamFailure"
    fake.heal()
    wait_effective(api, stack, "up")
    wait_for(  # each vantage's next verdict is good (a busy host's budget timeout may come first)
        lambda: all(health(api, stack)["vantages"][n]["ok"] is True for n in names),
        what="every vantage's verdict after the heal",
    )


def test_a_partial_outage_notices_everyone_and_fails_over_only_brands_that_ask(
    api, stack, healthy, with_watcher
):
    fake, since = healthy, datetime.now(UTC)
    wait_for(
        lambda: health(api, stack)["vantages"].get("watcher:other-pds", {}).get("ok") is True,
        what="the watcher's first verdict",
    )
    fake.fail("feeds", "partial", fraction=with_watcher)  # the brands' reads fail, the watcher's work
    part = wait_effective(api, stack, "partial")
    assert part["vantages"]["brand"]["ok"] is False
    # The watcher's reads work (on a busy host one may time out at the budget: wait for a good one).
    wait_for(
        lambda: (
            (h := health(api, stack))["effective"] == "partial"
            and h["vantages"]["watcher:other-pds"]["ok"] is True
        ),
        what="the watcher's verdict while the brands' reads fail",
    )
    event = next(e for e in history(api, stack) if e["type"] == "bluesky.partial")
    assert event["reason"] == f"{TH.confirm_after} signals in a row failed at some vantages"
    assert any(p.get("signal") == "partial" for p in part["last_probes"])

    failing_over = unique("Initech during a partial outage")
    staying = unique("Hooli during a partial outage")
    held_id, kept_id = queue(api, INITECH, failing_over), queue(api, HOOLI, staying)
    wait_deliveries(api, INITECH, held_id, {"bluesky": "held", "rss": "delivered"})
    wait_deliveries(api, HOOLI, kept_id, {"bluesky": "delivered"})  # notice_only: still on Bluesky
    for spec in (INITECH, HOOLI):  # every brand on the target gets its outage notice
        wait_for(
            lambda spec=spec: [n for n in notices(api, spec, since) if "having trouble" in n["text"]],
            what=f"{spec.id}'s outage notice",
        )

    fake.heal()
    up = wait_effective(api, stack, "up")
    assert up["outages"] == part["outages"]
    wait_deliveries(api, INITECH, held_id, {"bluesky": "delivered"})
    quiet(api, stack, posts=[held_id, kept_id], since=since)
    assert on_bluesky(stack, failing_over) == 1
    assert on_bluesky(stack, staying) == 1
    assert len([n for n in notices(api, INITECH, since) if "having trouble" in n["text"]]) == 1


def test_a_watcher_whose_network_lacks_a_probe_feed_reports_it_and_still_counts(
    api, stack, healthy, with_watcher
):
    """Each vantage's misconfigured feed is named with the vantage, left out of its verdict (the
    watcher still says ok), and forgotten once the feed answers again."""
    fake = healthy
    watcher = "watcher:other-pds"
    via = f"{SANDBOX_DISCOVER} (via {watcher})"
    wait_for(lambda: health(api, stack)["vantages"].get(watcher, {}).get("ok") is True, what="the watcher")
    fake.set_unknown_feeds([SANDBOX_DISCOVER])
    switched = time.time()
    try:
        h = wait_for(
            lambda: (h := health(api, stack))["misconfigured"].keys() >= {SANDBOX_DISCOVER, via} and h,
            what="the feed reported from both vantages",
        )
        assert "HTTP 400 UnknownFeed" in h["misconfigured"][via]["detail"]
        wait_for(
            lambda: (
                (v := health(api, stack)["vantages"][watcher])["ok"] is True
                and datetime.fromisoformat(v["at"]).timestamp() > switched
            ),
            what="a conclusive watcher verdict without the feed",
        )
        assert health(api, stack)["state"] == "up"
        checked = channels_check(stack, INITECH.id)  # at start: the watcher's row fails, naming it
        assert checked.returncode == 1, checked.stdout + checked.stderr
        row = flat(next(line for line in checked.stdout.splitlines() if watcher in line))
        assert "FAILED" in row
        assert SANDBOX_DISCOVER in flat(checked.stdout.split(watcher, 1)[1])
    finally:
        fake.set_unknown_feeds([])
    wait_for(lambda: not health(api, stack)["misconfigured"], what="both forgotten once the feed answers")
    checked = channels_check(stack, INITECH.id)
    row = next(line for line in checked.stdout.splitlines() if watcher in line)
    assert " ok " in row, checked.stdout
