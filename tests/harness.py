"""Test harness: real Redis (a database of the suite's own), the sandbox services,
real Celery worker and beat processes, and the API app — wired through the environment
exactly as an operator would wire them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from broadcaster.core.brands import hash_api_key

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = int(os.environ.get("BROADCASTER_TEST_REDIS_DB", "13"))
REDIS_HOST = os.environ.get("BROADCASTER_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BROADCASTER_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_DB}"
KEY_PREFIX = "fbtest:"

# Fast clocks so the suite waits seconds, not minutes.
FAST_SETTINGS = {
    "BROADCASTER_REDIS_URL": REDIS_URL,
    "BROADCASTER_KEY_PREFIX": KEY_PREFIX,
    "BROADCASTER_DISPATCH_INTERVAL_S": "0.5",
    "BROADCASTER_SWEEP_INTERVAL_S": "1",
    "BROADCASTER_SWEEP_DEADLINE_S": "4",
    "BROADCASTER_SEND_LEASE_S": "6",
    "BROADCASTER_RETRY_BASE_S": "0.3",
    "BROADCASTER_RETRY_MAX_S": "1.5",
    "BROADCASTER_MAX_ATTEMPTS": "4",
    "BROADCASTER_HTTP_CONNECT_TIMEOUT_S": "2",
    "BROADCASTER_HTTP_READ_TIMEOUT_S": "2",
    "BROADCASTER_PUBLIC_BASE_URL": "http://testserver",
    "BROADCASTER_ADMIN_API_KEY": "test-admin-key-0123456789",
    "BROADCASTER_LOG_LEVEL": "INFO",
    "BROADCASTER_HEALTH_PROBE_INTERVAL_S": "0.25",
    "BROADCASTER_HEALTH_PROBE_TIMEOUT_S": "0.8",
    "BROADCASTER_HEALTH_LATENCY_BUDGET_S": "0.5",
    "BROADCASTER_BACKFILL_RATE_PER_S": "5",
    "BROADCASTER_WEBHOOKS_ALLOW_PRIVATE": "true",
    "BROADCASTER_WEBHOOK_RETRY_BASE_S": "0.2",
    "BROADCASTER_WEBHOOK_RETRY_MAX_S": "1",
    "BROADCASTER_WEBHOOK_TIMEOUT_S": "2",
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for processes a test starts)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or check} (last: {last!r})")


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=5)


@dataclass
class BrandSpec:
    id: str
    key: str
    handle: str
    password: str
    extra: dict = field(default_factory=dict)


def brand_entry(spec: BrandSpec, sandbox, env: dict[str, str]) -> dict:
    env_name = f"TEST_{spec.id.upper().replace('-', '_')}_BSKY_PASSWORD"
    env[env_name] = spec.password
    entry = {
        "id": spec.id,
        "name": spec.id.title(),
        "api_keys": [hash_api_key(spec.key)],
        "bluesky": {
            "handle": spec.handle,
            "app_password_env": env_name,
            "pds_url": sandbox.bluesky.url,
            "probe_feeds": ["at://did:plc:sandbox/app.bsky.feed.generator/whats-hot"],
        },
        "rss": {
            "title": f"{spec.id} news",
            "link": f"https://{spec.id}.example/",
            "description": f"{spec.id} announcements",
        },
    }
    entry.update(spec.extra)
    return entry


def write_brands(path: Path, entries: list[dict]) -> None:
    path.write_text(yaml.safe_dump({"brands": entries}, sort_keys=False), encoding="utf-8")


class Proc:
    """A child process of the suite (worker, beat), logging to a file, killed at the end."""

    preexec_fn: Callable[[], None] | None = None  # run in the child before exec (the bench's: die with us)

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        try:
            self.p = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=type(self).preexec_fn,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker", concurrency: int = 2) -> Proc:
    argv = [sys.executable, "-m", "broadcaster.ops.cli", "worker", "-c", str(concurrency), "-n", f"{name}@%h"]
    return Proc(name, argv, env, log_dir)


def start_beat(env: dict[str, str], log_dir: Path) -> Proc:
    return Proc("beat", [sys.executable, "-m", "broadcaster.ops.cli", "beat"], env, log_dir)


# ---- putting a post in a given state through the ledger's own verbs -------------------------------
def dispatch_lost(store, post_id: str) -> None:
    """The post was dispatched, then every message handed out was lost: its deliveries wait in
    the in-flight index with a deadline already past (the sweeper's to find)."""
    store.claim_now(post_id, time.time() + 60)
    store.dispatch(post_id, {}, False, "", time.time() - 1)


def claimed_and_lost(store, post_id: str, channel: str) -> None:
    """A worker claimed the delivery (attempt 1) and vanished: its lease has already run out."""
    past = time.time() - 100
    store.claim(post_id, channel, past, 1, True, time.time() - 1)


def settle_as(store, post_id: str, channel: str, state) -> None:
    """Move one delivery to `state` the way the workers would (claim, then the outcome)."""
    from broadcaster.core.models import DeliveryState
    from broadcaster.core.routing import Route

    if state in (DeliveryState.held, DeliveryState.pending, DeliveryState.skipped):
        store.route(post_id, {channel: Route(state)}, time.time() + 60)
        return
    store.route(post_id, {channel: Route(DeliveryState.pending)}, time.time() + 60)  # (from held)
    store.claim(post_id, channel, time.time(), 60, True, time.time() + 60)
    if state == DeliveryState.delivered:
        store.delivered(post_id, channel, f"remote-{post_id}", None)
    elif state == DeliveryState.failed:
        store.fail(post_id, channel, "failed for the test")
    else:
        store.decided(post_id, channel, state, f"{state} for the test")
