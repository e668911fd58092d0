"""The media contract: the local blob store (bytes by key, atomic writes, a typed miss) and
text_for (a channel gets its variant)."""

from pathlib import Path

import pytest

from broadcaster.core.settings import Settings
from broadcaster.ledger.blobs import BlobMissing, LocalBlobStore, open_blob_store
from broadcaster.ledger.keys import Keys


def test_it_gives_back_what_was_put_and_forgets_it_on_delete(tmp_path: Path):
    store = LocalBlobStore(tmp_path)
    key = Keys("fb:").media_blob("med_abc")
    store.put(key, b"\x89PNG...", "image/png")
    assert store.get(key) == b"\x89PNG..."
    store.delete(key)
    with pytest.raises(BlobMissing):
        store.get(key)
    store.delete(key)  # deleting what is gone is not an error


def test_it_refuses_keys_that_climb_out_of_its_directory(tmp_path: Path):
    with pytest.raises(ValueError, match="not a blob key"):
        LocalBlobStore(tmp_path / "blobs").put("fb:../../etc/x", b"x", "image/png")


def test_the_settings_choose_the_local_directory(tmp_path: Path):
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    store = open_blob_store(settings)
    store.put("fb:media:med_1", b"abc", "image/gif")
    assert (tmp_path / "media" / "fb" / "media" / "med_1").read_bytes() == b"abc"


def test_a_channel_gets_its_variant_and_the_others_the_posts_text():
    from datetime import UTC, datetime

    from broadcaster.core.models import MediaRef, Post, text_for

    now = datetime.now(UTC)
    post = Post(
        id="p_1",
        brand="acme",
        text="The long text for Bluesky and Mastodon.",
        scheduled_at=now,
        created_at=now,
        variants={"sms": "Short SMS"},
        media=[MediaRef(id="med_1", alt="A red kite", mime="image/png", width=4, height=3, size=99)],
    )
    assert text_for(post, "sms") == "Short SMS"
    assert text_for(post, "mastodon") == post.text
    assert Post.model_validate_json(post.model_dump_json()).media[0].alt == "A red kite"
