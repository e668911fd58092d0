"""Celery tasks. Thin: load ids, call the worker logic, turn its outcome into a retry.

Task arguments are ids only (post id, channel name): Flower shows arguments.
"""

from __future__ import annotations

from workers import delivery, dispatch
from workers.celery_app import app
from workers.runtime import runtime


def enqueue_delivery(post_id: str, channel: str) -> None:
    deliver.apply_async((post_id, channel))


@app.task(name="broadcaster.dispatch_due", ignore_result=True)
def dispatch_due() -> int:
    return dispatch.dispatch_due(runtime(), enqueue_delivery)


@app.task(name="broadcaster.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    return dispatch.sweep(runtime(), enqueue_delivery)


@app.task(name="broadcaster.deliver", bind=True, ignore_result=True, max_retries=None)
def deliver(self, post_id: str, channel: str) -> str:
    outcome = delivery.deliver_once(runtime(), post_id, channel)
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.result
