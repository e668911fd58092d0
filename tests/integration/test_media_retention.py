"""Images follow their posts' retention: an upload no post uses is deleted after its grace, an
attached one when the last post using it has expired, the bytes before the records."""

from __future__ import annotations

from pathlib import Path

import pytest

from broadcaster.core.images import ImageInfo
from broadcaster.ledger.blobs import BlobMissing, LocalBlobStore
from broadcaster.ledger.keys import Keys
from broadcaster.ledger.media import MediaLedger
from tests import channel_direct

pytestmark = pytest.mark.integration

INFO = ImageInfo("image/png", 4, 3, 5)
TTL = 100.0


@pytest.fixture
def ledger(direct_redis) -> MediaLedger:
    return MediaLedger(direct_redis, channel_direct.settings(media_unattached_ttl_s=TTL))


def _upload(ledger: MediaLedger, blobs: LocalBlobStore, media_id: str, now: float) -> str:
    blobs.put(Keys(channel_direct.PREFIX).media_blob(media_id), b"bytes", INFO.mime)
    ledger.record(media_id, "acme", INFO, now)
    return media_id


def _exists(blobs: LocalBlobStore, media_id: str) -> bool:
    try:
        blobs.get(Keys(channel_direct.PREFIX).media_blob(media_id))
    except BlobMissing:
        return False
    return True


def test_an_upload_no_post_uses_is_deleted_after_its_grace(ledger, tmp_path: Path):
    blobs = LocalBlobStore(tmp_path)
    _upload(ledger, blobs, "med_a", now=1000)
    assert ledger.collect(blobs, now=1000 + TTL - 1) == 0
    assert _exists(blobs, "med_a")
    assert ledger.collect(blobs, now=1000 + TTL + 1) == 1
    assert not _exists(blobs, "med_a")
    assert ledger.load("acme", ["med_a"]) == {}
    assert ledger.attach("p_late", "acme", ["med_a"], now=1200) == "med_a"  # gone: cannot be attached


def test_an_attached_image_lives_as_long_as_a_post_using_it(ledger, direct_redis, tmp_path: Path):
    blobs = LocalBlobStore(tmp_path)
    keys = Keys(channel_direct.PREFIX)
    _upload(ledger, blobs, "med_b", now=1000)
    assert ledger.attach("p_one", "acme", ["med_b"], now=1000) is None
    assert ledger.attach("p_two", "acme", ["med_b"], now=1000) is None
    direct_redis.hset(keys.post("p_one"), "post", "{}")  # still active: no expiry yet
    direct_redis.hset(keys.post("p_two"), "post", "{}")
    direct_redis.expire(keys.post("p_two"), 50)  # finished: expires with its retention

    assert ledger.collect(blobs, now=1000 + TTL + 1) == 0
    assert _exists(blobs, "med_b")
    direct_redis.delete(keys.post("p_one"))  # p_one expired; p_two still has its retention to go
    assert ledger.collect(blobs, now=1000 + 2 * TTL + 2) == 0
    direct_redis.delete(keys.post("p_two"))
    assert ledger.collect(blobs, now=1000 + 4 * TTL) == 1
    assert not _exists(blobs, "med_b")
    assert direct_redis.exists(keys.media_meta("med_b"), keys.media_posts("med_b")) == 0


def test_another_brands_image_cannot_be_attached(ledger, tmp_path: Path):
    blobs = LocalBlobStore(tmp_path)
    _upload(ledger, blobs, "med_c", now=1000)
    assert ledger.attach("p_x", "globex", ["med_c"], now=1000) == "med_c"
    assert ledger.load("globex", ["med_c"]) == {}
    assert set(ledger.load("acme", ["med_c"])) == {"med_c"}


def test_an_image_stays_while_the_brands_feed_still_lists_its_post(ledger, direct_redis, tmp_path: Path):
    blobs = LocalBlobStore(tmp_path)
    keys = Keys(channel_direct.PREFIX)
    _upload(ledger, blobs, "med_d", now=1000)
    assert ledger.attach("p_feed", "acme", ["med_d"], now=1000) is None
    direct_redis.hset(keys.rss_entries("acme"), "p_feed", "{}")  # the post expired, its entry did not
    assert ledger.collect(blobs, now=1000 + TTL + 1) == 0
    assert _exists(blobs, "med_d")
    direct_redis.hdel(keys.rss_entries("acme"), "p_feed")  # pushed out by newer entries
    assert ledger.collect(blobs, now=1000 + 3 * TTL) == 1
    assert not _exists(blobs, "med_d")
