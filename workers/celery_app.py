"""The Celery app: tasks, the beat schedule (dispatcher, sweeper, probes), per-process setup.

Run it with `broadcaster worker` / `broadcaster beat` (or `celery -A workers.celery_app ...`).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from broadcaster.celeryconf import QUEUE, celery_config
from broadcaster.settings import get_settings
from workers.runtime import reset_runtime

CONTROL_QUEUE = "broadcaster.control"


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("broadcaster", include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    app.conf.update(
        task_routes={
            "broadcaster.dispatch_due": {"queue": CONTROL_QUEUE},
            "broadcaster.sweep": {"queue": CONTROL_QUEUE},
        },
        task_queues=None,
        beat_schedule={
            "dispatch-due": {
                "task": "broadcaster.dispatch_due",
                "schedule": settings.dispatch_interval_s,
                "options": {"expires": max(5.0, settings.dispatch_interval_s * 5)},
            },
            "sweep": {
                "task": "broadcaster.sweep",
                "schedule": settings.sweep_interval_s,
                "options": {"expires": max(10.0, settings.sweep_interval_s * 3)},
            },
        },
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix=settings.key_prefix + "redbeat",
        redbeat_lock_timeout=30,
        beat_max_loop_interval=5,
    )
    return app


app = make_app()
QUEUES = f"{QUEUE},{CONTROL_QUEUE}"


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    reset_runtime()
