"""The scheduler's app (`workers.beat_app`): the worker app's schedule and routes, none of its
task modules. Beat sends each entry by name, so a route that only a task module knew would send
that entry to the wrong queue: the routes must come from the config alone."""

from __future__ import annotations

import subprocess
import sys

from broadcaster.common.celeryconf import CONTROL_QUEUE, PROBE_QUEUE
from workers import beat_app, celery_app


def test_beat_has_the_workers_schedule_and_routes():
    assert beat_app.app.conf.beat_schedule == celery_app.app.conf.beat_schedule
    assert beat_app.app.conf.task_routes == celery_app.app.conf.task_routes
    assert beat_app.app.conf.include == []
    assert list(celery_app.app.conf.include) == list(celery_app.TASK_MODULES)


def test_each_scheduled_task_is_routed_by_its_name_alone():
    router = beat_app.app.amqp.router
    for entry in beat_app.app.conf.beat_schedule.values():
        queue = router.route({}, entry["task"])["queue"].name
        assert queue == CONTROL_QUEUE, entry
    # what a scheduled tick sends on (a probe is on the probe worker's queue)
    assert router.route({}, "broadcaster.probe_target")["queue"].name == PROBE_QUEUE


def test_the_scheduler_loads_no_task_module_and_no_client_library():
    heavy = ("workers.tasks", "workers.webhooks", "workers.delivery")
    heavy += ("atproto", "telegram", "twilio", "mastodon")
    code = (
        "import sys, workers.beat_app as b; b.app.loader.import_default_modules(); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
