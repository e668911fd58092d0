"""`broadcaster up` as a newcomer runs it: one command, a subprocess, free ports, SIGTERM at the end.

These runs never share the suite's Redis database: with no REDIS_URL and nothing answering at
the local address they start their own embedded Redis (its own port and data folder), which
is the path a fresh machine takes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ACME, auth
from tests.harness import FAST_SETTINGS, ROOT, brand_entry, free_port, http, wait_for, write_brands

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {FAST_SETTINGS['BROADCASTER_ADMIN_API_KEY']}"}


class UpProcess:
    """`python -m broadcaster.ops.cli <args>` in its own session, its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.lines: list[str] = []
        self.p = subprocess.Popen(
            [sys.executable, "-m", "broadcaster.ops.cli", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in iter(self.p.stdout.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def terminate(self, timeout: float = 90) -> int:
        self.p.send_signal(signal.SIGTERM)
        code = self.p.wait(timeout)
        self._reader.join(5)
        return code

    def kill_all(self) -> None:
        """Test cleanup if an assertion failed midway: nothing of ours may survive the test."""
        for proc in [*self.descendants(), psutil.Process(self.p.pid)] if self.p.poll() is None else []:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.p.poll() is None:
            self.p.wait(10)


def up_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCASTER_") and k != "REDIS_URL"}
    fast = {
        k: v for k, v in FAST_SETTINGS.items() if k not in ("BROADCASTER_REDIS_URL", "BROADCASTER_KEY_PREFIX")
    }
    env.update(fast)
    env.pop("BROADCASTER_PUBLIC_BASE_URL", None)
    env.update(
        {
            "BROADCASTER_KEY_PREFIX": "fbup:",
            # Nothing answers here, so `up` must start its embedded Redis.
            "BROADCASTER_LOCAL_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "BROADCASTER_DATA_DIR": str(tmp / "data"),
            "BROADCASTER_BRANDS_FILE": str(tmp / "brands.yaml"),
            "PYTHONUNBUFFERED": "1",
            # One API process, not uvicorn's manager and two (the default, unit-tested in
            # test_api_fast_path): two Python start-ups less for each `up` and demo of the suite.
            "BROADCASTER_API_WORKERS": "1",
        }
    )
    env.update(extra or {})
    return env


def test_it_starts_everything_delivers_a_post_and_stops_cleanly_on_sigterm(sandbox, tmp_path):
    secrets: dict[str, str] = {}
    write_brands(tmp_path / "brands.yaml", [brand_entry(ACME, sandbox, secrets)])
    api_port, flower_port = free_port(), free_port()
    up = UpProcess(
        ["up", "--api-port", str(api_port), "--flower-port", str(flower_port), "-c", "1"],
        up_env(tmp_path, secrets),
    )
    try:
        wait_for(lambda: "Press Ctrl-C" in up.text or up.p.poll() is not None, 90, what="`up` to be ready")
        assert up.p.poll() is None, up.text
        assert "(embedded)" in up.text
        assert "Press Ctrl-C to stop everything" in up.text
        assert "Logs       below, one line each, prefixed by the process" in up.text
        login = re.search(r"login: (\S+) / (\S+)", up.text)
        assert login, up.text
        api = f"http://127.0.0.1:{api_port}"
        flower = f"http://127.0.0.1:{flower_port}"

        # The one-machine stack delivers a post end to end.
        text = f"Up and running {time.time_ns()}"
        r = http.post(f"{api}/v1/posts", json={"text": text}, headers=auth(ACME), timeout=10)
        assert r.status_code == 202, r.text
        post_id = r.json()["id"]

        def delivered():
            body = http.get(f"{api}/v1/posts/{post_id}", headers=auth(ACME), timeout=5).json()
            return body if body["state"] == "delivered" else None

        wait_for(delivered, 60, what=f"post {post_id} to be delivered")
        assert any(p["text"] == text for p in sandbox.bluesky.posts)

        # Flower wants the login it printed.
        assert http.get(flower, timeout=5).status_code == 401
        assert http.get(flower, auth=(login[1], "wrong"), timeout=5).status_code == 401
        assert http.get(flower, auth=(login[1], login[2]), timeout=5).status_code == 200

        # Metrics come from the same ledger the worker wrote.
        families = {
            f.name: f for f in text_string_to_metric_families(http.get(f"{api}/metrics", headers=ADMIN).text)
        }
        delivered_count = {
            s.labels["channel"]: s.value
            for s in families["broadcaster_deliveries"].samples
            if s.name.endswith("_total") and s.labels["state"] == "delivered" and s.labels["brand"] == "acme"
        }
        assert delivered_count["bluesky"] >= 1
        wait_for(lambda: http.get(f"{api}/readyz").status_code == 200, 30, what="/readyz to say ready")

        children = up.descendants()
        names = " ".join(" ".join(c.cmdline()) for c in children)
        assert "redis-server" in names
        assert "worker" in names
        assert "flower" in names
        # The probes have a threads worker of their own; the delivery worker leaves them to it,
        # so the probes that keep coming can only be that worker's.
        commands = [c.cmdline() for c in children]
        assert any("--probes" in cmd for cmd in commands), commands
        workers = [cmd for cmd in commands if "worker" in cmd and "--probes" not in cmd]
        assert workers
        assert all("broadcaster,broadcaster.control" in cmd for cmd in workers), workers

        def latest_probe() -> str:
            targets = http.get(f"{api}/v1/health", headers=ADMIN, timeout=5).json()["targets"]
            return max((p["at"] for t in targets for p in t["last_probes"]), default="")

        before = latest_probe()
        wait_for(lambda: latest_probe() > before, 60, what="a new probe to be recorded")
    except BaseException:
        up.kill_all()
        raise

    code = up.terminate()
    assert code == 0, up.text[-3000:]
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"
    assert "Warm shutdown" in up.text  # the worker finished or requeued its tasks
    # The embedded Redis kept its data in the data folder, with AOF on.
    assert list((tmp_path / "data" / "redis").rglob("appendonly*"))


def test_it_names_the_url_and_stops_when_redis_url_points_nowhere(tmp_path):
    port = free_port()
    env = up_env(tmp_path, {"REDIS_URL": f"redis://:hunter2-secret@127.0.0.1:{port}/0"})
    up = UpProcess(["up", "--api-port", str(free_port()), "--flower-port", str(free_port())], env)
    try:
        code = up.p.wait(60)
    finally:
        up.kill_all()
    up._reader.join(5)
    assert code == 2
    assert f"redis://:***@127.0.0.1:{port}/0" in up.text
    assert "no Redis answers there" in up.text
    assert "hunter2-secret" not in up.text
    assert "worker" not in up.text.split("error:")[0]  # nothing was started


def test_flower_refuses_to_start_in_production_without_a_password(tmp_path):
    env = up_env(
        tmp_path,
        {"BROADCASTER_ENVIRONMENT": "production", "BROADCASTER_PUBLIC_BASE_URL": "https://b.example"},
    )
    env["BROADCASTER_REDIS_URL"] = "redis://127.0.0.1:1/0"  # never reached: it stops before connecting
    done = subprocess.run(
        [sys.executable, "-m", "broadcaster.ops.cli", "flower", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "BROADCASTER_FLOWER_PASSWORD" in done.stderr
