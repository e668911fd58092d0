"""`broadcaster demo` end to end as a subprocess: its own embedded Redis, free ports, the sandbox,
the scripted outage played to the end, and nothing left running afterwards."""

from __future__ import annotations

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import FAST_SETTINGS, free_port, http, wait_for
from tests.integration.test_up import UpProcess, up_env

pytestmark = pytest.mark.integration

STAGES = (
    "stack",
    "queued",
    "on_bluesky",
    "broken",
    "degraded",
    "down",
    "notice",
    "failover",
    "healed",
    "up",
    "backfill",
)


def demo(tmp_path, *args: str, api_port: int | None = None) -> UpProcess:
    ports = ["--api-port", str(api_port or free_port()), "--flower-port", str(free_port())]
    return UpProcess(["demo", *ports, "--plain", *args], up_env(tmp_path))


def counter(api: str, family: str, **labels: str) -> float:
    admin = {"Authorization": f"Bearer {FAST_SETTINGS['BROADCASTER_ADMIN_API_KEY']}"}
    text = http.get(f"{api}/metrics", headers=admin, timeout=5).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == family
        for s in f.samples
        if s.name == f"{family}_total" and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_the_demo_plays_every_stage_of_an_outage_and_stops_cleanly(tmp_path):
    api_port = free_port()
    run = demo(tmp_path, "--duration", "240", api_port=api_port)
    try:
        wait_for(
            lambda: (
                "stages reached" in run.text or "some stages missing" in run.text or run.p.poll() is not None
            ),
            timeout=240,
            interval=0.5,
            what="the demo script to finish",
        )
        assert f"all {len(STAGES)} stages reached" in run.text, run.text[-4000:]
        for key in STAGES:
            assert f"✓ {key}:" in run.text
        assert "Flower" in run.text
        assert "login: admin / " in run.text
        assert "/feeds/demo.rss" in run.text
        assert "/docs" in run.text
        # The stage table in words: no Python lists; the notice on every channel that got it.
        assert "['" not in run.text
        notice = next(line for line in run.text.splitlines() if "✓ notice:" in line)
        for place in ("Mastodon", "Telegram", "RSS"):
            assert place in notice, notice
        failover = next(line for line in run.text.splitlines() if "✓ failover:" in line)
        assert "2 Bluesky copies of 2 held for the backfill" in failover
        # It says from the start where its logs are and how to stop, and at the end what to try.
        assert "process logs go to" in run.text
        assert "Ctrl-C stops everything" in run.text
        closing = next(line for line in run.text.splitlines() if "what next:" in line)
        assert f"http://127.0.0.1:{api_port}/b/demo" in closing
        assert "Flower" in closing
        assert "/feeds/demo.rss" in closing
        assert "or Ctrl-C" in run.text
        page = http.get(f"http://127.0.0.1:{api_port}/b/demo", timeout=5)
        assert page.status_code == 200
        assert "Demo Coffee" in page.text
        # The outage shows in the metrics: 2 posts failed over, 2 backfilled, SMS delivered.
        api = f"http://127.0.0.1:{api_port}"
        assert counter(api, "broadcaster_failovers", brand="demo") >= 2
        assert counter(api, "broadcaster_backfills", brand="demo") >= 2
        assert counter(api, "broadcaster_deliveries", brand="demo", channel="sms", state="delivered") >= 2
        children = run.descendants()
        assert children
    except BaseException:
        run.kill_all()
        raise
    assert run.terminate() == 0, run.text[-3000:]  # SIGTERM, as Ctrl-C would
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]


def test_the_demo_without_an_outage_stops_by_itself_after_its_duration(tmp_path):
    run = demo(tmp_path, "--no-outage", "--duration", "5")
    try:
        code = run.p.wait(120)
    finally:
        run.kill_all()
    run._reader.join(5)
    # How far the script got in 5 s depends on the machine's load (on a busy one the stack's
    # start alone takes most of it): the stages themselves are the other test's; here, that no
    # outage is played, the demo stops by itself, and stopping where the user said is no error
    # (exit 0), naming the stages it did not reach.
    assert code == 0, run.text[-3000:]
    if "✓ on_bluesky:" not in run.text:
        assert "--duration reached; stopping before: " in run.text, run.text[-3000:]
    if "✓ queued:" in run.text:
        assert "(the first with an image and alt text)" in run.text
    assert "broken" not in run.text
    assert "--duration reached" in run.text
    assert "stopped." in run.text
