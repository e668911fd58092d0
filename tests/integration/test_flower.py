"""Flower as `broadcaster flower` starts it: every page wants the login, `/metrics` and
`/healthcheck` included (Flower itself serves those two to anyone)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.harness import FAST_SETTINGS, ROOT, free_port, wait_for

pytestmark = pytest.mark.integration

USER, PASSWORD = "ops", "flower-test-password-42"


def test_flower_answers_nothing_without_the_login(redis_available, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCASTER_") and k != "REDIS_URL"}
    env.update(FAST_SETTINGS)
    env.update(
        {
            "BROADCASTER_FLOWER_USER": USER,
            "BROADCASTER_FLOWER_PASSWORD": PASSWORD,
            "BROADCASTER_DATA_DIR": str(tmp_path / "data"),
            "BROADCASTER_BRANDS_FILE": str(tmp_path / "brands.yaml"),
        }
    )
    flower = subprocess.Popen(
        [sys.executable, "-m", "broadcaster.ops.cli", "flower", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert flower.poll() is None, "Flower exited"
        try:
            httpx.get(f"{url}/", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    try:
        wait_for(answers, 60, what="Flower to answer")
        for path in ("/metrics", "/healthcheck", "/"):
            anonymous = httpx.get(f"{url}{path}", timeout=10)
            assert anonymous.status_code == 401, (path, anonymous.status_code, anonymous.text[:200])
            wrong = httpx.get(f"{url}{path}", auth=(USER, "wrong"), timeout=10)
            assert wrong.status_code == 401, (path, wrong.status_code)
            good = httpx.get(f"{url}{path}", auth=(USER, PASSWORD), timeout=10)
            assert good.status_code == 200, (path, good.status_code)
        assert "flower_events" in httpx.get(f"{url}/metrics", auth=(USER, PASSWORD), timeout=10).text
    finally:
        flower.terminate()
        try:
            flower.wait(20)
        except subprocess.TimeoutExpired:
            flower.kill()
            flower.wait(10)
