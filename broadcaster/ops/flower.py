"""Flower for admins: basic auth always, persistent state, credentials kept off the command line.

"Always" includes `/metrics` and `/healthcheck`: Flower 2.x serves those two without checking
the login (its `Metrics` and `Healthcheck` handlers lack `tornado.web.authenticated`, and Flower
has no option to change that), so `require_login_everywhere` wraps them before Flower starts.

Flower reads `FLOWER_*` environment variables for its options, so the login and the cookie
secret go there (never into argv, which `ps` shows to every user). In production Flower
refuses to start without a real password; in development a random one is made and printed.
Task events are on in every worker (`-E`, `worker_send_task_events`) and Flower keeps them
enabled, so every task (`broadcaster.deliver`, `broadcaster.dispatch_due`, ...) shows up
with its id-only arguments.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys

from broadcaster.common.logs import configure_logging
from broadcaster.core.settings import PLACEHOLDER_SECRETS, Settings, get_settings


class FlowerConfigError(RuntimeError):
    """Raised when Flower would start without authentication where that is not allowed."""


def login(settings: Settings) -> tuple[str, str, bool]:
    """(user, password, generated): the configured login, or a fresh random one in development."""
    password = settings.flower_password.get_secret_value() if settings.flower_password else ""
    if settings.environment == "production":
        if not password or password.strip().lower() in PLACEHOLDER_SECRETS:
            raise FlowerConfigError(
                "refusing to start Flower in production without a password: set BROADCASTER_FLOWER_PASSWORD"
            )
        return settings.flower_user, password, False
    if password:
        return settings.flower_user, password, False
    return settings.flower_user, secrets.token_urlsafe(12), True


def flower_env(settings: Settings, user: str, password: str) -> dict[str, str]:
    cookie = hmac.new(password.encode(), b"broadcaster-flower-cookie", hashlib.sha256).hexdigest()
    return {"FLOWER_BASIC_AUTH": f"{user}:{password}", "FLOWER_COOKIE_SECRET": cookie}


def flower_argv(settings: Settings, host: str, port: int) -> list[str]:
    db = settings.flower_db or settings.data_dir / "flower.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return [
        "flower",
        f"--address={host}",
        f"--port={port}",
        "--persistent=True",
        f"--db={db}",
        "--state_save_interval=30000",
        "--purge_offline_workers=600",
        "--enable_events=True",
        "--tasks_columns=name,uuid,state,args,received,started,runtime,worker,retries",
    ]


def require_login_everywhere() -> None:
    """Make Flower's `/metrics` and `/healthcheck` ask for the login like every other page.

    With basic auth configured, Flower's `get_current_user` answers 401 to a request without
    the right `Authorization` header; `tornado.web.authenticated` makes a handler ask it."""
    import tornado.web
    from flower.views import monitor

    for handler in (monitor.Metrics, monitor.Healthcheck):
        get = handler.get
        if not getattr(get, "_broadcaster_login", False):
            guarded = tornado.web.authenticated(get)
            guarded._broadcaster_login = True  # type: ignore[attr-defined]
            handler.get = guarded


def run_flower(host: str, port: int | None) -> int:
    settings = get_settings()
    configure_logging(settings, "flower")
    try:
        user, password, generated = login(settings)
    except FlowerConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if generated:
        print(f"Flower login (generated, set BROADCASTER_FLOWER_PASSWORD to choose): {user} / {password}")
    os.environ.update(flower_env(settings, user, password))
    from workers.celery_app import app

    require_login_everywhere()
    app.start(flower_argv(settings, host, port or settings.flower_port))
    return 0
