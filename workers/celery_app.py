"""The Celery app: tasks, the beat schedule (dispatcher, sweeper, probes), per-process setup.

Run it with `broadcaster worker` / `broadcaster beat` (or `celery -A workers.celery_app worker`;
beat runs `workers.beat_app`, the same schedule without the task modules).
"""

from __future__ import annotations

import contextlib
import logging
import socket

from celery import Celery, Task
from celery.signals import (
    heartbeat_sent,
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from broadcaster.common.celeryconf import CONTROL_QUEUE, PROBE_QUEUE, SHARE_TASK, celery_config
from broadcaster.common.logs import configure_logging
from broadcaster.core.brands import BrandsFileError
from broadcaster.core.settings import get_settings
from broadcaster.ledger.connection import get_redis
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.readiness import forget_worker, record_worker
from workers.runtime import reset_runtime


def _redbeat_redis(url: str, master: str) -> dict:
    """redbeat speaks `redis-sentinel://` plus a host list, not kombu's `sentinel://a;sentinel://b/0`."""
    if not url.startswith("sentinel://"):
        return {"redbeat_redis_url": url}
    from urllib.parse import urlparse

    parts = [urlparse(p) for p in url.split(";")]
    db = next((int(p.path.strip("/")) for p in parts if p.path.strip("/")), 0)
    options = {
        "sentinels": [(p.hostname or "127.0.0.1", p.port or 26379) for p in parts],
        "service_name": master,
        "db": db,
        "password": next((p.password for p in parts if p.password), None),
        "socket_timeout": 5.0,
    }
    return {"redbeat_redis_url": "redis-sentinel://", "redbeat_redis_options": options}


class QuietTask(Task):
    """Every task: one that needs an unreadable brands file ends there, without a traceback.

    `Runtime.brands()` has already logged what is wrong with the file (once per change of it);
    the work stays where the ledger has it (scheduled, in flight) and the next run, or the
    sweeper, takes it up once the file is fixed."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except BrandsFileError:
            return None


TASK_MODULES = ("workers.tasks", "workers.webhooks")


def make_app(include: tuple[str, ...] = TASK_MODULES) -> Celery:
    """The app with its config and schedule; `include` names the task modules a worker imports."""
    settings = get_settings()
    probe_tick = min(settings.health_confirm_interval_s, settings.health_probe_interval_s)
    app = Celery("broadcaster", include=list(include), task_cls=QuietTask)
    app.conf.update(celery_config(settings))
    app.conf.update(
        task_routes={
            "broadcaster.dispatch_due": {"queue": CONTROL_QUEUE},
            # a backlog's shares: what reroutes an outage's posts does not wait behind deliveries
            SHARE_TASK: {"queue": CONTROL_QUEUE},
            "broadcaster.sweep": {"queue": CONTROL_QUEUE},
            "broadcaster.webhook_fanout": {"queue": CONTROL_QUEUE},
            "broadcaster.probe_bluesky": {"queue": CONTROL_QUEUE},
            # each probe may wait out a hang: on the probe worker's threads, not a delivery slot
            "broadcaster.probe_target": {"queue": PROBE_QUEUE},
            "broadcaster.health_actions": {"queue": CONTROL_QUEUE},
            "broadcaster.backfill": {"queue": CONTROL_QUEUE},
        },
        task_queues=None,
        beat_schedule={
            "dispatch-due": {
                "task": "broadcaster.dispatch_due",
                "schedule": settings.dispatch_interval_s,
                "options": {"expires": max(5.0, settings.dispatch_interval_s * 5)},
            },
            "webhook-fanout": {
                "task": "broadcaster.webhook_fanout",
                "schedule": settings.dispatch_interval_s,
                "options": {"expires": max(5.0, settings.dispatch_interval_s * 5)},
            },
            "probe-bluesky": {  # every fast interval: it sends only the probes that are due
                "task": "broadcaster.probe_bluesky",
                "schedule": probe_tick,
                "options": {"expires": max(1.0, probe_tick * 2)},
            },
            "sweep": {
                "task": "broadcaster.sweep",
                "schedule": settings.sweep_interval_s,
                "options": {"expires": max(10.0, settings.sweep_interval_s * 3)},
            },
        },
        beat_scheduler="redbeat.RedBeatScheduler",
        **_redbeat_redis(settings.redis_url, settings.redis_sentinel_master),
        redbeat_key_prefix=Keys(settings.key_prefix).redbeat,
        # A restarted scheduler waits at most this for a dead one's lock (one lost with Redis
        # cannot be released). Each tick extends it, and ticks come at least every
        # `beat_max_loop_interval` (every second in practice: the dispatcher's interval).
        redbeat_lock_timeout=10,
        beat_max_loop_interval=2,
    )
    return app


app = make_app()


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    reset_runtime()
    from workers.webhook_client import reset_clients

    reset_clients()


@worker_process_init.connect
def _event_loop_per_process(**_: object) -> None:
    """One asyncio loop per pool process for python-telegram-bot (see workers/event_loop.py).

    Connected after `_fresh_connections_after_fork`, so it offers the loop to the new runtime.
    """
    from workers import event_loop
    from workers.runtime import runtime

    event_loop.start()
    event_loop.install(runtime().extras)


@worker_process_shutdown.connect
def _close_event_loop(**_: object) -> None:
    from workers import event_loop

    event_loop.stop()


@worker_shutdown.connect
def _close_event_loop_of_the_main_process(**_: object) -> None:
    """`--pool threads` / `solo`: the tasks ran in this process, on its loop (prefork: a no-op)."""
    from workers import event_loop

    event_loop.stop()


@setup_logging.connect
def _our_logging(**_: object) -> None:
    """Worker and beat log through broadcaster.common.logs (JSON in production, redacted always)."""
    configure_logging(get_settings(), "celery")


@heartbeat_sent.connect
def _worker_heartbeat(sender: object, **_: object) -> None:
    """Every ~2 s in each worker's main process: /readyz counts workers by this."""
    try:
        record_worker(get_redis(get_settings()), get_settings(), _hostname(sender))
    except Exception:  # readiness goes stale on its own; never break the worker's timer
        logging.getLogger("broadcaster.worker").warning("could not record the worker heartbeat")


@worker_shutdown.connect
def _worker_gone(sender: object = None, **_: object) -> None:
    with contextlib.suppress(Exception):
        forget_worker(get_redis(get_settings()), get_settings(), _hostname(sender))


def _hostname(sender: object) -> str:
    eventer = getattr(sender, "eventer", None)
    name = getattr(eventer, "hostname", None) or getattr(sender, "hostname", None)
    return str(name or socket.gethostname())
