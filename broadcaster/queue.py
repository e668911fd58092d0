"""A thin task producer for the API: sends tasks by name, never imports the workers."""

from __future__ import annotations

import threading

from celery import Celery

from broadcaster.celeryconf import celery_config
from broadcaster.settings import Settings

_producers: dict[str, Celery] = {}
_lock = threading.Lock()


def producer(settings: Settings) -> Celery:
    with _lock:
        app = _producers.get(settings.redis_url)
        if app is None:
            app = Celery("broadcaster-api")
            app.conf.update(celery_config(settings))
            _producers[settings.redis_url] = app
        return app


def kick_dispatcher(settings: Settings) -> None:
    """Ask a worker to dispatch due posts now rather than at the next beat tick."""
    producer(settings).send_task("broadcaster.dispatch_due", expires=60)
