"""The scheduler's app: the schedule and routes without the task modules.

Beat sends its entries by task name (and routes them by name), so it never runs a task: the
task modules and the client libraries they load were half of its start-up CPU and memory.
"""

from __future__ import annotations

from workers.celery_app import make_app

app = make_app(include=())
