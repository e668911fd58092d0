"""What the outage tests share: reading the outage target's health through the API, queueing
and following posts of the outage brands, and the quiet check before counting.

The outage tests break a second fake Bluesky (`stack.outage_bluesky`) that only the INITECH,
HOOLI and UMBRELLA brands use, so the rest of the suite keeps a healthy Bluesky.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime

import feedparser

from broadcaster.core.health import Thresholds
from tests.conftest import HOOLI, INITECH, UMBRELLA, auth
from tests.harness import FAST_SETTINGS, ROOT, wait_for, wait_quiet

ADMIN = {"Authorization": f"Bearer {FAST_SETTINGS['BROADCASTER_ADMIN_API_KEY']}"}
TH = Thresholds()  # the tests trip with the default rule (they recover after 2, FAST_SETTINGS)
PROBE_TIMEOUT_S = float(FAST_SETTINGS["BROADCASTER_HEALTH_PROBE_TIMEOUT_S"])
BUDGET_S = float(FAST_SETTINGS["BROADCASTER_HEALTH_LATENCY_BUDGET_S"])
# The suite's cadence (the default hysteresis, FAST_SETTINGS' intervals and budget).
AMPLE_BUDGET = {"ratelimit-remaining": "2990"}  # on a 429: the service sheds load, we are within ours
FAST_TH = Thresholds(
    probe_every_s=float(FAST_SETTINGS["BROADCASTER_HEALTH_PROBE_INTERVAL_S"]), latency_budget_s=BUDGET_S
)


def target_of(stack) -> str:
    return stack.outage_bluesky.url.split("://", 1)[1]


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def health(api, stack) -> dict:
    r = api.get(f"/v1/health/{target_of(stack)}", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def wait_effective(api, stack, state: str, timeout: float = 30) -> dict:
    return wait_for(
        lambda: (h := health(api, stack))["effective"] == state and h,
        timeout=timeout,
        interval=0.1,
        what=f"{target_of(stack)} to be {state}",
    )


def failed_probes_since(health_body: dict, since: float) -> list[dict]:
    """The failed probes among `last_probes` that ended after `since` (not an earlier test's)."""
    return [
        p
        for p in health_body["last_probes"]
        if p["source"] == "probe"
        and p["ok"] is False
        and datetime.fromisoformat(p["at"]).timestamp() >= since
    ]


def queue(api, spec, text: str) -> str:
    r = api.post("/v1/posts", json={"text": text}, headers=auth(spec))
    assert r.status_code == 202, r.text
    return r.json()["id"]


def post(api, spec, post_id: str) -> dict:
    r = api.get(f"/v1/posts/{post_id}", headers=auth(spec))
    assert r.status_code == 200, r.text
    body = r.json()
    body["by_channel"] = {d["channel"]: d for d in body["deliveries"]}
    return body


def wait_deliveries(api, spec, post_id: str, want: dict[str, str], timeout: float = 25) -> dict:
    def check():
        p = post(api, spec, post_id)
        states = {c: d["state"] for c, d in p["by_channel"].items()}
        return p if all(states.get(c) == s for c, s in want.items()) else None

    return wait_for(check, timeout=timeout, what=f"{post_id} to reach {want}")


def rss_entries(api, spec, stack) -> list[dict]:
    """The brand's feed entries, oldest first (from the ledger: the feed rounds times to seconds)."""
    feed = feedparser.parse(api.get(f"/feeds/{spec.id}.rss").content)
    assert feed.entries  # the public feed serves them too
    return sorted(stack.store().rss_entries(spec.id, 500), key=lambda e: e["published"])


def on_bluesky(stack, text: str) -> int:
    return sum(1 for p in stack.outage_bluesky.posts if p["text"] == text)


def bluesky_sends(stack):
    """The outage PDS's record writes (its request log also has the probes' reads, never quiet)."""
    return lambda: len(stack.outage_bluesky.requests.where("com.atproto.repo.createRecord"))


def quiet(api, stack, *watch, posts=(), since: datetime | None = None):
    """`wait_quiet` for these posts and, with `since`, the outage brands' notices since then."""
    ids = list(posts)
    if since is not None:
        ids += [n["id"] for spec in (INITECH, HOOLI, UMBRELLA) for n in notices(api, spec, since)]
    return wait_quiet(stack.store(), bluesky_sends(stack), *watch, posts=ids)


def notices(api, spec, since: datetime) -> list[dict]:
    r = api.get("/v1/posts?limit=200", headers=auth(spec))
    assert r.status_code == 200, r.text
    return [
        p
        for p in r.json()["items"]
        if p["kind"] == "notice" and datetime.fromisoformat(p["created_at"]) >= since
    ]


def history(api, stack) -> list[dict]:
    r = api.get(f"/v1/health/{target_of(stack)}/history?limit=200", headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()["items"]


SANDBOX_DISCOVER = "at://did:plc:sandbox/app.bsky.feed.generator/whats-hot"  # the brands' probe feed


def channels_check(stack, brand: str) -> subprocess.CompletedProcess:
    env = dict(stack.env) | {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    cmd = [sys.executable, "-m", "broadcaster.ops.cli", "channels", "check", "--brand", brand]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def flat(table: str) -> str:
    """A rich table's text with its borders and wrapping taken out (a long URI wraps)."""
    return table.replace("\n", "").replace("│", "").replace(" ", "")
