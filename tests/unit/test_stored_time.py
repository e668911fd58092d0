"""The ledger stores a record's times as integer microseconds since the epoch (bytes per post),
reads the ISO strings written before, and the API still answers ISO."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from broadcaster.api.schemas import DeliveryPublic
from broadcaster.core.models import Delivery, DeliveryState
from broadcaster.ledger.store import _dump, parse_delivery

AT = datetime(2026, 12, 5, 12, 15, 39, 840094, tzinfo=UTC)


def test_a_stored_delivery_keeps_its_times_as_exact_integer_microseconds():
    d = Delivery(
        channel="mastodon", state=DeliveryState.delivered, created_at=AT, updated_at=AT, delivered_at=AT
    )
    raw = _dump(d)
    stored = json.loads(raw)
    assert stored["created_at"] == stored["updated_at"] == stored["delivered_at"] == 1796472939840094
    assert parse_delivery("mastodon", raw) == d  # to the microsecond, with its time zone
    assert '"2026-' not in raw  # no ISO string left


def test_a_delivery_stored_with_iso_times_before_still_reads():
    iso = "2026-12-05T12:15:39.840094Z"
    old = f'{{"state":"held","attempts":0,"created_at":"{iso}","updated_at":"{iso}"}}'
    d = parse_delivery("bluesky", old)
    assert d.created_at == AT
    assert d.updated_at == AT
    assert json.loads(_dump(d))["created_at"] == 1796472939840094  # written back in the new form


def test_the_api_answers_iso_times():
    d = Delivery(channel="rss", state=DeliveryState.delivered, created_at=AT, updated_at=AT, delivered_at=AT)
    body = json.loads(DeliveryPublic.of(d).model_dump_json())
    assert body["created_at"] == body["delivered_at"] == "2026-12-05T12:15:39.840094Z"
