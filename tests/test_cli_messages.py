"""The first hour at the command line: `broadcaster` alone lists its commands, a busy port
names the port and the flag that changes it, and a REDIS_URL that came from a .env file is
named as such. Each runs the real CLI in a subprocess, as a newcomer would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.harness import ROOT, free_port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCASTER_") and k != "REDIS_URL"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def broadcaster(*args: str, cwd=ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broadcaster.ops.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_broadcaster_alone_lists_every_command_with_one_line_each():
    run = broadcaster()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for command in ("api", "worker", "beat", "flower", "healthcheck", "up", "demo", "keys", "channels"):
        line = next((x for x in lines if x.strip().startswith(command + " ")), None)
        assert line is not None, f"{command} missing from:\n{run.stdout}"
        assert len(line.split(None, 1)[1]) > 10  # with what it does
    assert "broadcaster demo" in run.stdout  # where a newcomer starts


@pytest.fixture
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["api", "--port"], "--port"),
        (["flower", "--port"], "--port"),
        (["up", "--flower-port", "{free}", "--api-port"], "--api-port"),
        (["demo", "--api-port", "{free}", "--flower-port"], "--flower-port"),
    ],
)
def test_a_busy_port_is_named_with_the_flag_that_changes_it(taken_port, command, flag):
    argv = [c.replace("{free}", str(free_port())) for c in command] + [str(taken_port)]
    run = broadcaster(*argv)
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"port {taken_port} on 127.0.0.1 is already in use" in run.stderr
    assert f"with {flag}" in run.stderr
    assert "Errno" not in run.stderr + run.stdout
    assert "Traceback" not in run.stderr


def test_a_redis_url_from_a_dotenv_file_that_no_redis_answers_names_the_file(tmp_path):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    (tmp_path / ".env").write_text(f"REDIS_URL={dead}\nBROADCASTER_BRANDS_FILE=brands.yaml\n")
    run = broadcaster("up", "--api-port", str(free_port()), "--flower-port", str(free_port()), cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert f"REDIS_URL is set to {dead} in {tmp_path / '.env'}" in out
    assert "delete the REDIS_URL line" in out
    assert "embedded Redis" in out
    assert "Traceback" not in out
