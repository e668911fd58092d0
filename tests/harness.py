"""Test harness: real Redis (a database of the suite's own), the sandbox services,
real Celery worker and beat processes, and the API app — wired through the environment
exactly as an operator would wire them."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
import yaml

from broadcaster.core.brands import hash_api_key
from broadcaster.ledger.tls import client_context

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = int(os.environ.get("BROADCASTER_TEST_REDIS_DB", "13"))
REDIS_HOST = os.environ.get("BROADCASTER_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BROADCASTER_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_DB}"
# Every key the suite writes in that database starts with SUITE_PREFIX followed by ":" (the
# stack's: its ledger, Celery's and RedBeat's keys) or "-" (a test's own prefix, `own_prefix`).
# Under pytest-xdist each worker has a prefix of its own ("fbtest_gw1"), so workers share the
# database, never a key, and each deletes only its own (tests/conftest.py).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
SUITE_PREFIX = f"fbtest_{XDIST_WORKER}" if XDIST_WORKER else "fbtest"
KEY_PREFIX = f"{SUITE_PREFIX}:"


def own_prefix(name: str) -> str:
    """A key prefix for one test's own deployment or store, inside the suite's (`name` unique)."""
    return f"{SUITE_PREFIX}-{name}:"


# Fast clocks so the suite waits seconds, not minutes.
FAST_SETTINGS = {
    "BROADCASTER_REDIS_URL": REDIS_URL,
    "BROADCASTER_KEY_PREFIX": KEY_PREFIX,
    "BROADCASTER_DISPATCH_INTERVAL_S": "0.5",
    "BROADCASTER_SWEEP_INTERVAL_S": "1",
    "BROADCASTER_SWEEP_DEADLINE_S": "4",
    # No link cards: a post's link would be fetched (DNS included) from the internet; the cards
    # are tested against a loopback page (tests/test_channel_media.py).
    "BROADCASTER_LINK_CARDS": "false",
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
    # The shipped trip rule (7 failed in a row, 12 of 20), so every outage test trips as
    # production does; recovery after 2 good signals instead of 5 (`broadcaster demo` and the
    # failover benchmark keep the shipped 5): about 20 recoveries, 0.75 s each saved.
    "BROADCASTER_HEALTH_RECOVER_AFTER": "2",
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


class OneShot:
    """httpx's one-shot calls (a client, so a fresh connection, per call) on the process's one TLS
    context. httpx builds a new `SSLContext` for every client it makes, loading the CA bundle (about
    20 ms of CPU) even for plain-HTTP calls to the fakes: a quarter of the suite's own CPU while the
    sandbox tests ran (py-spy)."""

    @staticmethod
    def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("verify", client_context())
        return httpx.request(method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)


http = OneShot()


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
        self._sent: set[int] = set()
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

    def send(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the process group, once (a second SIGTERM could cut a Celery warm
        shutdown short), without waiting: see `stop_together`."""
        if self.p.poll() is None and sig not in self._sent:
            self._sent.add(sig)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.p.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.p.poll() is None:
            self.send(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_together(*procs: Proc | None) -> None:
    """Stop the processes at once: SIGTERM to each, then wait for each. Their shutdowns (a Celery
    worker's warm shutdown, beat's last tick, uvicorn's) overlap instead of adding up."""
    running = [p for p in procs if p is not None]
    for proc in running:
        proc.send(signal.SIGTERM)
    for proc in running:
        proc.stop()


def kill_together(*procs: Proc | None) -> None:
    """SIGKILL the processes' groups and wait until every child of theirs (a pool process, beat
    under its runner) is gone too: for a stack thrown away with its keys, which no process of it
    may write after they are deleted. A warm shutdown would only add seconds (an idle Celery pool
    process alone lingers 3 s on its way out)."""
    running = [p for p in procs if p is not None]
    children: list[psutil.Process] = []
    for proc in running:
        with contextlib.suppress(psutil.Error):
            children += psutil.Process(proc.pid).children(recursive=True)
    for proc in running:
        proc.stop(signal.SIGKILL)
    # Dead is enough (a zombie writes nothing): an orphan is reaped by init in its own time.
    deadline = time.monotonic() + 15
    while alive := [c for c in children if _running(c)]:
        if time.monotonic() > deadline:
            raise AssertionError(f"still running after SIGKILL: {[c.pid for c in alive]}")
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        time.sleep(0.02)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


# ---- a test's own view of the event stream --------------------------------------------------------
def latest_event(store, brand: str | None = None) -> str:
    """The newest event id now, of the brand's stream or the whole deployment's ("0-0" if none):
    a test reads only the events after it."""
    stream = store.keys.brand_events(brand) if brand else store.keys.events
    newest = store.r.xrevrange(stream, "+", "-", count=1)
    return newest[0][0] if newest else "0-0"


def events_after(client, headers: dict[str, str], after: str) -> list[dict]:
    """Every event `/v1/events` gives after the cursor `after`, oldest first (page by page)."""
    items: list[dict] = []
    while True:
        page = client.get("/v1/events", params={"limit": 500, "after": after}, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        items += body["items"]
        if len(body["items"]) < 500:
            return items
        after = body["next_after"]


# ---- proving the deployment quiet before a negative check -----------------------------------------
# Tasks that carry or make a send of a post (or a notice): while one waits in a broker queue, waits
# for its countdown (kombu keeps it in `unacked`) or runs, the deployment is not quiet. The beat's
# periodic housekeeping (dispatch_due, sweep, probes, webhook fan-out) and webhook sends are not
# counted: they come and go all the time; what they start shows up here or in the ledger.
POST_TASKS = frozenset(
    {
        "broadcaster.deliver",
        "broadcaster.deliver_many",
        "broadcaster.dispatch_posts",
        "broadcaster.backfill",
        "broadcaster.health_actions",
    }
)
SWEEP_TASK = "broadcaster.sweep"


class TaskEvents:
    """Celery's task events of one deployment (what Flower shows), heard from now on by a thread.

    `seen` keeps every event; `sweep_done_after(t)` says whether a sweeper pass the worker
    received after `t` (by the worker's clock: the same host's) has finished.
    """

    def __init__(self, redis_url: str, key_prefix: str):
        from celery import Celery

        # The deployment's kombu keys (event channels included) live under its key prefix.
        self.app = Celery(broker=redis_url, broker_transport_options={"global_keyprefix": key_prefix})
        self.seen: list[dict] = []
        self._lock = threading.Lock()
        self._sweeps: dict[str, float] = {}  # uuid -> when the worker received it
        self._swept: list[float] = []  # received-at of the sweeps that succeeded
        self._recv = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def of(cls, store) -> TaskEvents:
        return cls(store.settings.redis_url, store.settings.key_prefix)

    def _on_event(self, event: dict) -> None:
        with self._lock:
            self.seen.append(event)
            kind = event.get("type")
            if kind == "task-received" and event.get("name") == SWEEP_TASK:
                self._sweeps[event["uuid"]] = float(event.get("timestamp") or 0)
            elif kind == "task-succeeded" and event.get("uuid") in self._sweeps:
                self._swept.append(self._sweeps.pop(event["uuid"]))

    def _run(self) -> None:
        with self.app.connection() as conn:
            self._recv = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            with contextlib.suppress(Exception):  # stopping (or a chaos test's Redis going away)
                self._recv.capture(limit=None, timeout=None, wakeup=False)

    def sweep_done_after(self, t: float) -> bool:
        with self._lock:
            return any(received > t for received in self._swept)

    def stop(self) -> None:
        if self._recv is not None:
            self._recv.should_stop = True
        self._thread.join(3)


def _task_name(raw: str) -> str:
    """The task a kombu message (a queue entry, or an `unacked` entry: [message, exchange, key]) runs."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        return str(message.get("headers", {}).get("task", ""))
    except (ValueError, AttributeError, IndexError, TypeError):
        return raw  # not what kombu writes: counted as busy below if it names a post task


def why_busy(store, posts: Iterable[str] = ()) -> str | None:
    """Why the deployment is not quiet (None if it is): a post of `posts` (every post if none is
    named) in flight, dispatching or held; a due post in the schedule; a post task queued,
    waiting for its countdown or running."""
    from broadcaster.common.celeryconf import CONTROL_QUEUE, QUEUE

    r, keys, ids = store.r, store.keys, set(posts)
    inflight = [m for m in r.zrange(keys.inflight, 0, -1) if not ids or m.split("|", 1)[0] in ids]
    if inflight:
        return f"in flight: {inflight[:5]}"
    dispatching = [p for p in r.zrange(keys.dispatching, 0, -1) if not ids or p in ids]
    if dispatching:
        return f"dispatching: {dispatching[:5]}"
    for key in r.scan_iter(match=keys.held("*"), count=1000):
        held = [p for p in r.zrange(key, 0, -1) if not ids or p in ids]
        if held:
            return f"held in {key}: {held[:5]}"
    due = r.zrangebyscore(keys.sched, "-inf", store.now(), start=0, num=5)
    if due:
        return f"due in the schedule: {due}"
    for name in (QUEUE, CONTROL_QUEUE):
        waiting = [t for t in map(_task_name, r.lrange(keys.broker_queue(name), 0, -1)) if t in POST_TASKS]
        if waiting:
            return f"queued in {name}: {waiting[:5]}"
    running = [
        _task_name(raw)
        for raw in r.hvals(keys.prefix + "unacked")
        if _task_name(raw) in POST_TASKS and not _only_final_posts(store, raw)
    ]
    if running:
        return f"running or waiting for a countdown: {running[:5]}"
    return None


def _only_final_posts(store, raw: str) -> bool:
    """An unacked task whose posts are all settled: if kombu restores it (a connection lost with
    Redis, say), its claims answer `done` and it sends nothing, so it keeps nobody busy."""
    from broadcaster.core.models import FINAL_STATES

    try:
        message = json.loads(raw)
        message = message[0] if isinstance(message, list) else message
        args = json.loads(base64.b64decode(message["body"]))[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return False
    ids = [a for a in args if isinstance(a, str) and a.startswith("p_")]
    ids += [p for a in args if isinstance(a, list) for p in a if isinstance(p, str)]
    if not ids:
        return False
    for pid in ids:
        loaded = store.load(pid)
        if loaded is None or any(d.state not in FINAL_STATES for d in loaded[1].values()):
            return False
    return True


def _observe(watch: Iterable[Any]) -> list[Any]:
    """What each watched thing shows now: a fake's request count, or a callable's value."""
    return [len(w.requests) if hasattr(w, "requests") else w() for w in watch]


def wait_quiet(
    store,
    *watch: Any,
    posts: Iterable[str] = (),
    not_before: float | None = None,
    timeout: float = 60.0,
    events: TaskEvents | None = None,
) -> list[Any]:
    """Wait until the deployment is provably quiet, then return what `watch` shows: count after it.

    Quiet: `why_busy` finds nothing, then a full sweeper pass runs (started after that check, by
    the ledger clock, and finished: the sweeper records it, `readiness.record_sweep`), and
    afterwards `why_busy` still finds nothing and nothing in `watch` changed across the pass.
    `watch`: sandbox fakes (their request log's length) or callables (e.g. the number of a text's
    posts on a fake). `not_before`: first wait until the ledger clock (`Store.now`) passes this (a
    canceled post's due time, say). `events`: unused, kept for callers that pass their
    `TaskEvents` (the sweeper sends no task events).
    """
    from broadcaster.ledger.readiness import last_sweep_started

    posts = list(posts)
    deadline = time.monotonic() + timeout
    if not_before is not None:
        wait_for(lambda: store.now() > not_before, timeout=timeout, what=f"the ledger clock at {not_before}")
    last = "nothing checked yet"

    def sweep_done_after(mark: float) -> bool:
        return last_sweep_started(store.r, store.settings) > mark

    while time.monotonic() < deadline:
        before = _observe(watch)
        busy = why_busy(store, posts)
        if busy is not None:
            last = busy
            time.sleep(0.1)
            continue
        mark = store.now()
        while not sweep_done_after(mark) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not sweep_done_after(mark):
            last = "no sweeper pass finished (is the worker and beat up?)"
            break
        after = _observe(watch)
        busy = why_busy(store, posts)
        if busy is None and after == before:
            return after
        last = busy or f"changed during the sweeper pass: {before} -> {after}"
    raise AssertionError(f"the deployment was not quiet within {timeout}s: {last}")
