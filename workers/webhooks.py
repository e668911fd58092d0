"""Celery tasks for brand webhooks: follow the ledger's events, and send each delivery.

Arguments are ids only (a webhook delivery id): the body and the secret stay in Redis.
"""

from __future__ import annotations

from broadcaster.ledger import hooks as webhooks
from workers.celery_app import app
from workers.runtime import runtime
from workers.webhook_client import client


def enqueue_webhook(delivery_id: str) -> None:
    send_webhook.apply_async((delivery_id,))


@app.task(name="broadcaster.webhook_fanout", ignore_result=True, send_events=False)  # housekeeping
def webhook_fanout() -> int:
    rt = runtime()
    return webhooks.fanout(rt.store, rt.brands, enqueue_webhook)


@app.task(name="broadcaster.send_webhook", bind=True, ignore_result=True, max_retries=None)
def send_webhook(self, delivery_id: str) -> str:
    rt = runtime()
    hooks = webhooks.HookStore(rt.redis, rt.settings)
    outcome = webhooks.send_once(
        hooks, delivery_id, client(rt.settings.webhook_timeout_s, rt.settings.webhooks_allow_private)
    )
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=None)
    return outcome.result
