"""The dispatcher's delivery batch: many deliveries, few Celery messages, none lost or doubled."""

from __future__ import annotations

from workers.tasks import DELIVER_BATCH, DeliveryBatch


def _batch() -> tuple[DeliveryBatch, list, list]:
    ones: list[tuple[str, str]] = []
    manys: list[tuple[str, list[str]]] = []
    return DeliveryBatch(lambda p, c: ones.append((p, c)), lambda c, ids: manys.append((c, ids))), ones, manys


def test_a_lone_delivery_travels_as_a_deliver_task_of_its_own():
    batch, ones, manys = _batch()
    batch("p1", "bluesky")
    batch("p1", "rss")
    batch.flush()
    assert sorted(ones) == [("p1", "bluesky"), ("p1", "rss")]
    assert manys == []


def test_many_deliveries_are_grouped_by_channel_in_order_and_capped_per_message():
    batch, ones, manys = _batch()
    n = DELIVER_BATCH * 2 + 1
    for i in range(n):
        batch(f"p{i}", "mastodon")
        batch(f"p{i}", "rss")
    batch.flush()
    for channel in ("mastodon", "rss"):
        sent = [ids for c, ids in manys if c == channel] + [[p] for p, c in ones if c == channel]
        assert all(len(ids) <= DELIVER_BATCH for ids in sent)
        assert [p for ids in sent for p in ids] == [f"p{i}" for i in range(n)]
    assert len(manys) == 4
    assert len(ones) == 2


def test_flush_empties_the_batch():
    batch, ones, _manys = _batch()
    batch("p1", "rss")
    batch.flush()
    batch.flush()
    assert ones == [("p1", "rss")]
