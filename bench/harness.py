"""What every benchmark stands on: a private redis-server, the sandbox in its own process,
brands pointing at it, real Celery workers and beat, the API under uvicorn.

Reuses the destructive tests' pieces (`tests.chaos.harness.RedisServer`, `tests.harness`'s
process helpers) so there is one way to start the stack. Nothing here touches the Redis
on 6379: every run gets a fresh redis-server on a free port (AOF everysec, as in
production), so numbers are not disturbed by other suites and nothing is left behind.

Nothing is left running, however the run ends: every child is the leader of its own
process group (stopped with `killpg`, TERM then KILL), and is told by the kernel to die
with us (`PR_SET_PDEATHSIG`, Linux) even if we are SIGKILLed; the sandbox also exits when
its parent goes away. A stack that fails half-way through starting stops what it started;
`close()` stops every part even when one of them fails or Ctrl-C arrives meanwhile; and
open stacks are closed at exit and on SIGTERM/SIGHUP (turned into KeyboardInterrupt so
`finally` blocks run).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from broadcaster.common.celeryconf import WORK_QUEUES
from broadcaster.core.brands import hash_api_key
from tests.chaos.harness import RedisServer, free_port
from tests.harness import ROOT, Proc, wait_for, write_brands

PREFIX = "fbbench:"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
TWILIO_SID = "AC" + "7" * 32
TWILIO_AUTH = "bench-twilio-auth-0123456789"
SMS_FROM = "+12015550100"
FINAL = {"delivery.delivered", "delivery.failed", "delivery.skipped", "delivery.uncertain"}
PR_SET_PDEATHSIG = 1


# ---- children that cannot outlive the benchmark ----------------------------------------------
def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def kill_group(p: subprocess.Popen, timeout: float = 15.0) -> None:
    """TERM the child's process group, KILL it if it has not exited within `timeout`."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout)
    # the group may outlive its leader (a prefork child): make sure none of it is left
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(5)


class BenchProc(Proc):
    """A child of the benchmark (worker, beat, API): own process group, dies with us."""

    preexec_fn = staticmethod(_die_with_parent)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if sig == signal.SIGTERM:
            kill_group(self.p, timeout)
        else:  # a chosen signal first (a benchmark may want a cold stop), then the same sweep
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.p.pid, sig)
            kill_group(self.p, timeout)
        if not self._log.closed:
            self._log.close()


def start_worker(
    env: dict[str, str],
    log_dir: Path,
    name: str,
    concurrency: int,
    pool: str = "prefork",
    queues: str | None = None,
) -> BenchProc:
    """`broadcaster worker -c N --pool P` (prefork: N child processes; threads: N threads in one)."""
    argv = [sys.executable, "-m", "broadcaster.ops.cli", "worker", "-c", str(concurrency), "-P", pool]
    if queues:
        argv += ["-Q", queues]
    return BenchProc(name, [*argv, "-n", f"{name}@%h"], env, log_dir)


def start_probe_worker(env: dict[str, str], log_dir: Path) -> BenchProc:
    """`broadcaster worker --probes`: the probes on threads, as `broadcaster up` runs them."""
    argv = [sys.executable, "-m", "broadcaster.ops.cli", "worker", "--probes"]
    return BenchProc("probes", argv, env, log_dir)


def start_beat(env: dict[str, str], log_dir: Path) -> BenchProc:
    return BenchProc("beat", [sys.executable, "-m", "broadcaster.ops.cli", "beat"], env, log_dir)


@dataclass
class BenchBrand:
    """One brand of a benchmark and its accounts in the sandbox."""

    id: str
    channels: tuple[str, ...] = ("mastodon", "telegram", "sms")
    routing: dict[str, Any] = field(default_factory=dict)
    target: int | None = None  # index of an extra fake Bluesky (its own health target); None = main

    @property
    def key(self) -> str:
        return f"fb_{self.id}_bench_key_0123456789abcdef"

    @property
    def handle(self) -> str:
        return f"{self.id}.test"

    @property
    def password(self) -> str:
        return f"{self.id}-app-password"

    @property
    def mastodon_token(self) -> str:
        return f"{self.id}-mastodon-token-0123456789"

    @property
    def bot(self) -> str:
        return f"{7_100_000 + zlib.crc32(self.id.encode()) % 800_000}:AA{self.id}BenchBot0123456789abcdef"

    @property
    def chat(self) -> str:
        return f"@{self.id.replace('-', '_')}_news"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def sandbox_spec(brands: list[BenchBrand], extra_targets: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "bluesky": [],
        "mastodon": [],
        "telegram_bots": [],
        "telegram_chats": [],
        "twilio": [[TWILIO_SID, TWILIO_AUTH]],
        "extra_bluesky": [[] for _ in range(extra_targets)],
    }
    for b in brands:
        account = [b.handle, b.password]
        (spec["bluesky"] if b.target is None else spec["extra_bluesky"][b.target]).append(account)
        spec["mastodon"].append([b.mastodon_token, b.id])
        spec["telegram_bots"].append([b.bot, f"{b.id}_bot"])
        spec["telegram_chats"].append(b.chat)
    return spec


def brand_entries(brands: list[BenchBrand], urls: dict[str, Any], secrets: dict[str, str]) -> list[dict]:
    """The brands file: every credential an env var name, its value in `secrets`."""
    entries = []
    for b in brands:
        env_id = b.id.upper().replace("-", "_")
        secrets[f"BENCH_{env_id}_BSKY"] = b.password
        pds = urls["bluesky"] if b.target is None else urls["extra_bluesky"][b.target]
        entry: dict[str, Any] = {
            "id": b.id,
            "name": b.id.title(),
            "api_keys": [hash_api_key(b.key)],
            "bluesky": {
                "handle": b.handle,
                "app_password_env": f"BENCH_{env_id}_BSKY",
                "pds_url": pds,
                "probe_feeds": ["at://did:plc:sandbox/app.bsky.feed.generator/whats-hot"],
            },
            "rss": {"title": f"{b.id} news", "link": f"https://{b.id}.example/", "description": "news"},
        }
        if "mastodon" in b.channels:
            secrets[f"BENCH_{env_id}_MASTODON"] = b.mastodon_token
            entry["mastodon"] = {
                "instance_url": urls["mastodon"],
                "access_token_env": f"BENCH_{env_id}_MASTODON",
            }
        if "telegram" in b.channels:
            secrets[f"BENCH_{env_id}_TELEGRAM"] = b.bot
            # Pacing far above the fake's needs: the benchmark measures the pipeline, not the pacer.
            entry["telegram"] = {
                "bot_token_env": f"BENCH_{env_id}_TELEGRAM",
                "chat_ids": [b.chat],
                "api_base_url": urls["telegram"],
                "chat_per_minute": 1_000_000,
                "chat_burst": 10_000,
                "bot_per_s": 100_000,
            }
        if "sms" in b.channels:
            secrets["BENCH_TWILIO_AUTH"] = TWILIO_AUTH
            entry["sms"] = {
                "account_sid": TWILIO_SID,
                "auth_token_env": "BENCH_TWILIO_AUTH",
                "from_number": SMS_FROM,
                "api_base_url": urls["twilio"],
                "rate_per_s": 100_000,
                "daily_segment_budget": 100_000_000,
            }
        if b.routing:
            entry["routing"] = b.routing
        entries.append(entry)
    return entries


class BenchRedis(RedisServer):
    """The private redis-server, dying with us too (it is not in a session of its own)."""

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
                *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
                *("--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        wait_for(lambda: _pings(client), timeout=15, what=f"redis-server on {self.port}")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class SandboxProcess:
    """`bench.sandbox_proc` as a child process; its fakes are driven over their control API."""

    def __init__(self, spec: dict[str, Any], workdir: Path):
        spec_path = workdir / "sandbox.json"
        spec_path.write_text(json.dumps(spec))
        self._log = (workdir / "sandbox.log").open("ab")
        self.http = httpx.Client(timeout=10)
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bench.sandbox_proc", str(spec_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            assert self.p.stdout is not None
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"the sandbox did not start (see {workdir / 'sandbox.log'})")
            self.urls: dict[str, Any] = json.loads(line)
        except BaseException:
            self.stop()
            raise

    def control(self, url: str, action: str, **body: Any) -> dict[str, Any]:
        r = self.http.post(f"{url}/_sandbox/{action}", json=body)
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        """Forget recorded requests and items (accounts stay): the fakes keep no growing state."""
        urls = [self.urls[s] for s in ("bluesky", "mastodon", "telegram", "twilio")]
        for url in [*urls, *self.urls["extra_bluesky"]]:
            self.control(url, "reset")

    def set_latency(self, ms: float) -> None:
        """Every fake (extra Bluesky servers too) answers `ms` milliseconds late, asynchronously."""
        urls = [self.urls[s] for s in ("bluesky", "mastodon", "telegram", "twilio")]
        for url in [*urls, *self.urls["extra_bluesky"]]:
            self.control(url, "latency", ms=ms)

    def requests(self, url: str, limit: int = 100_000) -> list[dict[str, Any]]:
        return self.http.get(f"{url}/_sandbox/requests", params={"limit": limit}).json()["requests"]

    def stop(self) -> None:
        self.http.close()
        kill_group(self.p, 10)
        if self.p.stdout is not None:
            self.p.stdout.close()
        if not self._log.closed:
            self._log.close()


class ApiProcess(BenchProc):
    """The API as `broadcaster api` serves it, plus a bare route (`bench.api_server`)."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.port = free_port()
        super().__init__(
            "api", [sys.executable, "-m", "bench.api_server", "--port", str(self.port)], env, log_dir
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_for(self._up, timeout=90, what=f"the API (log {self.log_path})")
        except BaseException:  # never leave a half-started API behind
            self.stop()
            raise

    def _up(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        return False


def bench_env(redis_url: str, brands_file: Path, secrets: dict[str, str], **settings: Any) -> dict[str, str]:
    """The processes' environment: production defaults unless a benchmark overrides a setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROADCASTER_")}
    env |= {
        "BROADCASTER_REDIS_URL": redis_url,
        "BROADCASTER_KEY_PREFIX": PREFIX,
        "BROADCASTER_BRANDS_FILE": str(brands_file),
        "BROADCASTER_ADMIN_API_KEY": ADMIN_KEY,
        "BROADCASTER_PUBLIC_BASE_URL": "http://127.0.0.1:8000",
        "PYTHONUNBUFFERED": "1",
    }
    env |= {f"BROADCASTER_{k.upper()}": str(v) for k, v in settings.items()}
    return env | secrets


class BenchStack:
    """Redis, sandbox, brands, API, beat and workers for one benchmark; `close()` stops them all."""

    def __init__(
        self,
        brands: list[BenchBrand],
        settings: dict[str, Any] | None = None,
        extra_targets: int = 0,
        workdir: Path | None = None,
    ):
        self.brands = brands
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="fb-bench-"))
        self.workers: list[Proc] = []
        self.beat: Proc | None = None
        self.api: ApiProcess | None = None
        self.sandbox: SandboxProcess | None = None  # type: ignore[assignment]
        self._saved_env: dict[str, str] | None = None
        self._closed = False
        self._n = 0
        self._queues: str | None = None  # every queue, unless a probe worker serves the probes
        self.redis_server = BenchRedis(self.workdir)
        _OPEN.add(self)
        _install_cleanup()
        try:
            self.redis_server.start()
            _production_tuning(self.redis_server.client())
            self.sandbox = SandboxProcess(sandbox_spec(brands, extra_targets), self.workdir)
            self.secrets: dict[str, str] = {}
            self.brands_file = self.workdir / "brands.yaml"
            write_brands(self.brands_file, brand_entries(brands, self.sandbox.urls, self.secrets))
            self.env = bench_env(self.redis_server.url, self.brands_file, self.secrets, **(settings or {}))
            self._saved_env = dict(os.environ)
            os.environ.update({k: v for k, v in self.env.items() if k.startswith(("BROADCASTER_", "BENCH_"))})
            _forget_cached_settings()
            self.redis = redis.Redis(port=self.redis_server.port, decode_responses=True, socket_timeout=30)
        except BaseException:
            self.close()
            raise

    # ---- processes ---------------------------------------------------------------------------
    def start(
        self, concurrency: int | None = 2, beat: bool = True, api: bool = True, probes: bool = False
    ) -> BenchStack:
        """Start everything at once (each boots in seconds), then wait for the workers and the API.
        `probes`: the probes get their own threads worker and the others leave them to it, as
        under `broadcaster up`.

        A part that fails to start stops the whole stack (the caller's `close()` may never run:
        a stack made outside its `try`).
        """
        try:
            if probes:
                self._queues = WORK_QUEUES
                self.workers.append(start_probe_worker(self.env, self.workdir))
            if concurrency:
                self.start_workers(concurrency, wait=False)
            if beat:
                self.beat = start_beat(self.env, self.workdir)
            if api:
                self.api = ApiProcess(self.env, self.workdir)
            if concurrency:
                self.wait_for_workers()
        except BaseException:
            self.close()
            raise
        return self

    def start_workers(
        self, concurrency: int, processes: int = 1, wait: bool = True, pool: str = "prefork"
    ) -> None:
        """`broadcaster worker -c N --pool P`, `processes` times (prefork: N children each;
        threads: N threads in each one process)."""
        for _ in range(processes):
            self._n += 1
            self.workers.append(
                start_worker(self.env, self.workdir, f"worker{self._n}", concurrency, pool, self._queues)
            )
        if wait:
            self.wait_for_workers()

    def wait_for_workers(self) -> None:
        app = self.producer()
        wait_for(
            lambda: len(app.control.ping(timeout=0.5) or []) >= len(self.workers),
            timeout=60,
            what=f"{len(self.workers)} workers to answer (logs in {self.workdir})",
        )

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers.clear()

    def worker_pids(self) -> list[int]:
        """Every worker process: each main process and its prefork children."""
        import psutil

        pids = []
        for w in self.workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                main = psutil.Process(w.pid)
                pids += [main.pid] + [c.pid for c in main.children(recursive=True)]
        return pids

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each part of the stack: where the cores went."""
        import psutil

        def cpu(pids: list[int]) -> float:
            total = 0.0
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = psutil.Process(pid).cpu_times()
                    total += t.user + t.system
            return round(total, 2)

        def tree(pid: int | None) -> list[int]:
            if pid is None:
                return []
            with contextlib.suppress(psutil.NoSuchProcess):
                return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
            return []

        return {
            "workers": cpu(self.worker_pids()),
            "redis": cpu(tree(self.redis_server.proc.pid if self.redis_server.proc else None)),
            "sandbox": cpu(tree(self.sandbox.p.pid)),
            "api": cpu(tree(self.api.pid if self.api else None)),
            "beat": cpu(tree(self.beat.pid if self.beat else None)),
        }

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of every process of the stack, by name:
        `worker1`, `worker1.child2` (prefork), `redis`, `sandbox`, `api`, `beat`."""
        import psutil

        out: dict[str, float] = {}

        def add(name: str, pid: int | None, children: bool = True) -> None:
            if pid is None:
                return
            with contextlib.suppress(psutil.NoSuchProcess):
                main = psutil.Process(pid)
                t = main.cpu_times()
                out[name] = round(t.user + t.system, 3)
                for i, c in enumerate(main.children(recursive=True) if children else [], 1):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        ct = c.cpu_times()
                        out[f"{name}.child{i}"] = round(ct.user + ct.system, 3)

        for i, w in enumerate(self.workers, 1):
            add(f"worker{i}", w.pid)
        add("redis", self.redis_server.proc.pid if self.redis_server.proc else None)
        add("sandbox", self.sandbox.p.pid)
        add("api", self.api.pid if self.api else None)
        add("beat", self.beat.pid if self.beat else None)
        return out

    def redis_commands(self) -> dict[str, int]:
        """Calls so far of each Redis command (`INFO commandstats`): what a delivery costs Redis."""
        stats = self.redis.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def redis_info(self) -> dict[str, str]:
        """The version and binary of the redis-server this run really used (not what PATH says)."""
        info = self.redis.info("server")
        return {"version": str(info.get("redis_version")), "executable": str(info.get("executable", "?"))}

    def producer(self):
        from broadcaster.common.queue import producer

        return producer(self.settings())

    def settings(self):
        from broadcaster.core.settings import Settings

        return Settings(_env_file=None)  # from this process's environment, set like the workers' one

    def store(self):
        from broadcaster.ledger.store import Store

        return Store(self.redis, self.settings())

    def add_subscribers(self, numbers: list[str]) -> None:
        from broadcaster.ledger.subscribers import Subscribers

        for b in self.brands:
            if "sms" in b.channels:
                Subscribers(self.redis, self.settings(), b.id).add(numbers)

    def http(self) -> httpx.Client:
        assert self.api is not None
        return httpx.Client(base_url=self.api.url, timeout=30)

    def close(self) -> None:
        """Stop every part, each even if another fails or Ctrl-C arrives meanwhile; idempotent."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        interrupted: BaseException | None = None
        parts = [*self.workers, self.beat, self.api, self.sandbox]
        for part in parts:
            if part is None:
                continue
            try:
                part.stop()
            except BaseException as e:  # keep going: the next part must not be left running
                interrupted = interrupted or e
                with contextlib.suppress(BaseException):
                    kill_group(part.p, 2)
        self.workers.clear()
        try:
            self._stop_redis()
        except BaseException as e:
            interrupted = interrupted or e
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            _forget_cached_settings()
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)
        if interrupted is not None and not isinstance(interrupted, Exception):
            raise interrupted  # Ctrl-C / SystemExit: after the cleanup, not instead of it

    def _stop_redis(self) -> None:
        proc = self.redis_server.proc
        try:
            self.redis_server.stop()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- closing what is open, however the run ends -------------------------------------------------
_OPEN: set[BenchStack] = set()  # strong refs: a stack nobody holds any more is still closed
_installed = False


def close_all() -> None:
    """Close every stack still open (atexit, and after SIGTERM/SIGHUP)."""
    for stack in list(_OPEN):
        with contextlib.suppress(BaseException):
            stack.close()


def _on_term(signum: int, frame: object) -> None:
    # Turn SIGTERM/SIGHUP into KeyboardInterrupt: `finally: stack.close()` blocks run, and
    # atexit (close_all) catches any stack made outside one.
    raise KeyboardInterrupt(f"signal {signum}")


def _install_cleanup() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(close_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_term)


def _production_tuning(client: redis.Redis) -> None:
    """Apply config/redis.conf's encoding settings (what an operator's Redis runs with)."""
    for line in (ROOT / "config" / "redis.conf").read_text().splitlines():
        if line.startswith(("hash-max-", "zset-max-", "list-max-", "set-max-")):
            name, value = line.split()[:2]
            client.config_set(name, value)


def _forget_cached_settings() -> None:
    from broadcaster.core.brands import _cache
    from broadcaster.core.settings import reset_settings_cache
    from broadcaster.ledger.connection import reset_redis_cache

    reset_settings_cache()
    reset_redis_cache()
    _cache.clear()


# ---- following the ledger ------------------------------------------------------------------------
class EventFollower:
    """Reads the event stream from where it last stopped; counts final deliveries of some posts."""

    def __init__(self, r: redis.Redis, start: str = "0-0"):
        self.r = r
        self.key = PREFIX + "events"
        self.last = start
        self.finals: list[tuple[float, str, str, str]] = []  # (epoch s, post, channel, state)

    @classmethod
    def from_now(cls, r: redis.Redis) -> EventFollower:
        last = r.xrevrange(PREFIX + "events", count=1)
        return cls(r, last[0][0] if last else "0-0")

    def poll(self, posts: set[str] | None = None) -> int:
        while True:
            rows = self.r.xrange(self.key, f"({self.last}", "+", count=10_000)
            if not rows:
                return len(self.finals)
            for eid, body in rows:
                if body.get("type") in FINAL and (posts is None or body.get("post") in posts):
                    ms = int(eid.split("-")[0])
                    self.finals.append((ms / 1000, body["post"], body["channel"], body["type"][9:]))
            self.last = rows[-1][0]

    def wait(self, count: int, posts: set[str] | None, timeout: float, interval: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.poll(posts) >= count:
                return True
            time.sleep(interval)
        return self.poll(posts) >= count


def states(finals: Iterable[tuple[float, str, str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, _, _, state in finals:
        out[state] = out.get(state, 0) + 1
    return out
