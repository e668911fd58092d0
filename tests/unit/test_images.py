"""Uploaded images: the type by content, the channels' dimension rules, and the resize that
brings an image over Bluesky's 1,000,000-byte blob limit under it with its aspect ratio kept."""

import io
import os

import pytest
from PIL import Image

from broadcaster.core.images import BLUESKY_MAX_BLOB_BYTES, ImageRejected, fit, inspect


def _image(fmt: str, size=(40, 30), mode="RGB", noise=False) -> bytes:
    img = Image.frombytes(mode, size, os.urandom(size[0] * size[1] * len(mode))) if noise else None
    img = img or Image.new(mode, size, (200, 30, 30) if mode == "RGB" else (200, 30, 30, 128))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 100} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_it_reads_the_type_and_size_from_the_content(fmt, mime):
    info = inspect(_image(fmt))
    assert (info.mime, info.width, info.height) == (mime, 40, 30)


def test_it_refuses_other_formats_and_non_images_whatever_they_are_called():
    with pytest.raises(ImageRejected, match="BMP image; JPEG, PNG, WebP or GIF only"):
        inspect(_image("BMP"))
    with pytest.raises(ImageRejected, match="not a JPEG, PNG, WebP or GIF"):
        inspect(b"%PDF-1.7 pretending to be photo.jpg")
    with pytest.raises(ImageRejected, match="empty"):
        inspect(b"")


def test_it_refuses_a_truncated_image():
    data = _image("PNG", (300, 300), noise=True)
    with pytest.raises(ImageRejected):
        inspect(data[: len(data) // 2])


def test_it_refuses_what_telegram_would_refuse():
    with pytest.raises(ImageRejected, match="aspect ratio"):
        inspect(_image("PNG", (2100, 100)))
    with pytest.raises(ImageRejected, match="width \\+ height"):
        inspect(_image("PNG", (6000, 4500)))


def test_an_image_within_the_limit_is_kept_byte_for_byte():
    data = _image("PNG")
    stored, info = fit(data)
    assert stored == data
    assert info.size == len(data)


def test_a_heavy_photo_is_scaled_under_the_blob_limit_with_its_aspect_ratio():
    data = _image("PNG", (1600, 900), noise=True)  # random pixels: about 4 MB as PNG
    assert len(data) > BLUESKY_MAX_BLOB_BYTES
    stored, info = fit(data)
    assert len(stored) == info.size <= BLUESKY_MAX_BLOB_BYTES
    assert info.mime == "image/jpeg"  # no transparency: a photo saved as PNG becomes a JPEG
    assert abs(info.width / info.height - 1600 / 900) < 0.01
    assert inspect(stored).width == info.width


def test_a_transparent_png_stays_png_when_it_is_shrunk():
    data = _image("PNG", (1000, 800), mode="RGBA", noise=True)
    stored, info = fit(data, limit=500_000)
    assert info.mime == "image/png"
    assert len(stored) <= 500_000
    assert abs(info.width / info.height - 1.25) < 0.01


def test_an_animated_gif_over_the_limit_is_refused_not_flattened():
    frames = [Image.frombytes("L", (300, 300), os.urandom(90_000)) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRejected, match="animated GIF"):
        fit(buf.getvalue(), limit=100_000)
