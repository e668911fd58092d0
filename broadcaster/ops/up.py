"""`broadcaster up`: Redis (found or embedded), API, worker, probe worker, beat and Flower on one machine.

Used by `broadcaster demo` too, which adds the sandbox services and a scripted outage.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from broadcaster.common.celeryconf import WORK_QUEUES
from broadcaster.core.settings import Settings
from broadcaster.ops import embedded_redis
from broadcaster.ops.embedded_redis import RedisChoice
from broadcaster.ops.supervisor import ChildSpec, Supervisor


@dataclass
class UpOptions:
    host: str = "127.0.0.1"
    api_port: int = 8000
    flower_port: int = 5555
    concurrency: int = 2
    flower: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Running:
    redis: RedisChoice
    api_url: str
    flower_url: str | None
    flower_user: str
    flower_password: str
    env: dict[str, str]
    brands_problem: str | None = None  # the brands file cannot be read: the API answers 503


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "broadcaster.ops.cli", *args]


def resolve_redis(settings: Settings, sup: Supervisor, data_dir: Path) -> RedisChoice:
    """REDIS_URL, else a local Redis that answers, else an embedded one (a child of `sup`)."""
    # REDIS_URL from the environment, or from a .env file the settings read.
    configured = embedded_redis.configured_url()
    origin = None
    if configured is None and "redis_url" in settings.model_fields_set:
        configured = settings.redis_url
        origin = env_file_of(settings)
    choice = embedded_redis.choose(
        configured,
        settings.local_redis_url,
        lambda url: embedded_redis.ping(url, settings.redis_sentinel_master),
        origin,
    )
    if choice is not None:
        return choice
    binary = embedded_redis.find_server(settings.embedded_redis_bin)
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = embedded_redis.free_port()
    sup.say(f"no Redis answers at {settings.local_redis_url}: starting {binary} with its data in {folder}")
    sup.start(
        ChildSpec("redis", embedded_redis.server_argv(binary, folder, port), stop_timeout=20, stops_last=True)
    )
    url = f"redis://127.0.0.1:{port}/0"
    sup.wait_for(lambda: embedded_redis.ping(url), 20, "the embedded Redis to answer")
    return RedisChoice(url, "embedded")


def env_file_of(settings: Settings) -> str | None:
    """The .env file the settings read (relative to the current folder), if there is one."""
    name = settings.model_config.get("env_file")
    if not isinstance(name, str | Path) or not Path(name).is_file():
        return None
    return str(Path(name).resolve())


def _api_answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def brands_problem(api_url: str) -> str | None:
    """What the API says is wrong with the brands file (its `/readyz` brands check), or None."""
    try:
        body = httpx.get(f"{api_url}/readyz", timeout=5.0).json()
        check = body["checks"]["brands"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None  # not the API's answer to judge by: the banner says nothing about it
    return None if check.get("ok") else str(check.get("detail"))


def _flower_answers(url: str, user: str, password: str) -> bool:
    try:
        return httpx.get(f"{url}/healthcheck", auth=(user, password), timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def start(
    settings: Settings, sup: Supervisor, opts: UpOptions, redis_choice: RedisChoice | None = None
) -> Running:
    """Start everything and wait until the API (and Flower) answer."""
    data_dir = Path(opts.extra_env.get("BROADCASTER_DATA_DIR", settings.data_dir))
    choice = redis_choice or resolve_redis(settings, sup, data_dir)
    api_url = f"http://{opts.host}:{opts.api_port}"
    password = settings.flower_password.get_secret_value() if settings.flower_password else ""
    if not password:
        if settings.environment == "production":
            raise SystemExit("production mode: set BROADCASTER_FLOWER_PASSWORD before starting Flower")
        password = secrets.token_urlsafe(12)
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.update(
        {
            "BROADCASTER_REDIS_URL": choice.url,
            "BROADCASTER_FLOWER_PASSWORD": password,
            "BROADCASTER_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.setdefault("BROADCASTER_PUBLIC_BASE_URL", api_url)
    env.update(opts.extra_env)
    sup.start(
        ChildSpec(
            "worker",
            _cli("worker", "-c", str(opts.concurrency), "-Q", WORK_QUEUES, "-n", "worker@%h"),
            env,
            stop_timeout=40,
        )
    )
    sup.start(ChildSpec("probes", _cli("worker", "--probes"), env, stop_timeout=20))
    sup.start(ChildSpec("beat", _cli("beat"), env))
    sup.start(ChildSpec("api", _cli("api", "--host", opts.host, "--port", str(opts.api_port)), env))
    flower_url = None
    if opts.flower:
        flower_url = f"http://{opts.host}:{opts.flower_port}"
        sup.start(
            ChildSpec("flower", _cli("flower", "--host", opts.host, "--port", str(opts.flower_port)), env)
        )
    sup.wait_for(lambda: _api_answers(api_url), 60, f"the API at {api_url}")
    if flower_url:
        sup.wait_for(
            lambda: _flower_answers(flower_url, settings.flower_user, password), 60, f"Flower at {flower_url}"
        )
    problem = brands_problem(api_url)
    return Running(choice, api_url, flower_url, settings.flower_user, password, env, problem)


def banner(run: Running, brands_file: Path) -> str:
    missing = not brands_file.exists()
    if run.brands_problem and not missing:
        first = f"error: {run.brands_problem}"
    else:
        first = "Failover Broadcaster is up."
    lines = [
        first,
        f"  Redis      {embedded_redis.hide_password(run.redis.url)}  ({run.redis.source})",
        f"  API        {run.api_url}   docs: {run.api_url}/docs",
        f"  metrics    {run.api_url}/metrics   readiness: {run.api_url}/readyz",
        f"  RSS feeds  {run.api_url}/feeds/<brand>.rss",
    ]
    if run.flower_url:
        lines.append(f"  Flower     {run.flower_url}   login: {run.flower_user} / {run.flower_password}")
    if run.brands_problem and not missing:
        lines.append(
            "  Every API route answers 503 until the brands file is fixed (it is re-read on change)."
        )
    if missing:
        lines.append(f"  (no brands file at {brands_file}: copy config/brands.example.yaml to queue posts)")
    lines.append(
        "  Logs       below, one line each, prefixed by the process (api |, worker |, beat |, flower |)"
    )
    lines.append("Press Ctrl-C to stop everything (API, workers, beat, Flower and an embedded Redis).")
    return "\n".join(lines)


def run_up(opts: UpOptions) -> int:
    """The `broadcaster up` command: start, print where to look, stream logs, stop cleanly."""
    from broadcaster.core.settings import get_settings
    from broadcaster.ops.embedded_redis import RedisUnavailable
    from broadcaster.ops.supervisor import ChildExited

    settings = get_settings()
    sup = Supervisor()
    sup.handle_signals()
    try:
        run = start(settings, sup, opts)
        sup.say(banner(run, settings.brands_file))
        return sup.run()
    except RedisUnavailable as e:
        sup.say(f"error: {e}", "up", "31")
        return 2
    except (ChildExited, TimeoutError) as e:
        sup.say(f"error: {e}", "up", "31")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        sup.stop_all()
        sup.say("stopped.")
