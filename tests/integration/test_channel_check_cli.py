"""`broadcaster channels check`: each configured channel's credentials, verified against its service."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.harness import ROOT

pytestmark = pytest.mark.integration


def check(stack, *args: str) -> subprocess.CompletedProcess:
    env = dict(stack.env) | {"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "broadcaster.ops.cli", "channels", "check", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def rows(output: str) -> dict[str, str]:
    """channel -> its table row."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        if len(cells) > 3 and cells[2] in ("bluesky", "mastodon", "telegram", "sms", "rss"):
            found[cells[2]] = line
    return found


def test_it_prints_a_table_of_working_channels_and_exits_0(stack):
    done = check(stack, "--brand", "social")
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    assert set(table) == {"bluesky", "mastodon", "telegram", "sms", "rss"}
    assert all(" ok " in row for row in table.values())
    assert "@social on http://127.0.0.1" in table["mastodon"]
    assert "@social_bot (bot 7000001)" in table["telegram"]
    assert "Sandbox (active), sending as +12015550100" in table["sms"]
    assert "social.test" in table["bluesky"]


def test_it_names_each_rejected_credential_and_exits_1(stack):
    done = check(stack, "--brand", "wrongkeys")
    assert done.returncode == 1, done.stdout + done.stderr
    table = rows(done.stdout)
    assert "FAILED" in table["mastodon"]
    assert "Mastodon rejected the access token for brand wrongkeys" in table["mastodon"]
    assert "Telegram rejected the bot token for brand wrongkeys" in table["telegram"]
    assert "Twilio rejected the account SID or auth token for brand wrongkeys" in table["sms"]
    assert " ok " in table["rss"]
    assert "not-the-twilio-auth-token" not in done.stdout


def test_an_unknown_brand_is_an_error(stack):
    done = check(stack, "--brand", "nobody")
    assert done.returncode == 2
    assert "no brand 'nobody'" in done.stderr
