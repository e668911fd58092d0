"""Celery settings shared by the workers and by the API's thin task producer.

Reliability choices (see ../shared/notes/celery-redis.md): late acks and requeue on a
lost worker, one message prefetched per process, explicit broker socket timeouts
(kombu waits forever by default), task events on for Flower, no result backend
(the Redis ledger is the record), and short time limits so a hung remote cannot
pin a worker.

Flower shows deliveries, notices, backfills and webhooks, not housekeeping: the dispatcher's
tick, the sweeper, the probes and the webhook fan-out run several times a second and are
declared with `send_events=False` (Celery's `Task.send_events`: the worker sends no
received/started/succeeded events for them). `task-sent` is off: the producer sends it for
every task or none (`task_send_sent_event` is app-wide), so it would list each housekeeping
run as pending forever; a delivery appears in Flower when a worker receives it.
"""

from __future__ import annotations

from typing import Any

from broadcaster.core.settings import Settings
from broadcaster.ledger.keys import CONTROL_QUEUE, PROBE_QUEUE, QUEUE, SHARE_TASK

__all__ = [
    "CONTROL_QUEUE",
    "PROBE_QUEUE",
    "QUEUE",
    "SHARE_TASK",
    "WORKER_QUEUES",
    "WORK_QUEUES",
    "broker_url",
    "celery_config",
]

VISIBILITY_TIMEOUT_S = 3600
WORKER_QUEUES = f"{QUEUE},{CONTROL_QUEUE},{PROBE_QUEUE}"  # a lone worker serves everything
WORK_QUEUES = f"{QUEUE},{CONTROL_QUEUE}"  # beside a probe worker (`broadcaster worker --probes`)


def broker_url(settings: Settings) -> str:
    return settings.redis_url


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "socket_timeout": settings.broker_socket_timeout_s,
        "socket_connect_timeout": settings.http_connect_timeout_s,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": 25,
        # Every kombu key (queues, unacked messages, bindings, event channels) under the
        # deployment's prefix: two deployments share a Redis database without sharing tasks.
        "global_keyprefix": settings.key_prefix,
    }
    if settings.redis_url.startswith("sentinel://"):
        transport["master_name"] = settings.redis_sentinel_master
    return {
        "broker_url": broker_url(settings),
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_pool_limit": 10,
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": True,
        "task_send_sent_event": False,  # app-wide only; see the docstring
        "task_time_limit": 120,
        "task_soft_time_limit": 90,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_max_tasks_per_child": 10_000,
        # a bound on memory whatever a task carries (one deliver_many is up to ten deliveries)
        "worker_max_memory_per_child": settings.worker_max_memory_mb * 1024,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 5,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        "timezone": "UTC",
    }
