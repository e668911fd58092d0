"""What an uploaded image may be, and how one too heavy for Bluesky is made to fit. Pure.

The type is read from the content with Pillow, never from a file name or a Content-Type. The
limits are the strictest of the channels a post may reach:

| rule                   | limit                          | whose                                       |
|------------------------|--------------------------------|---------------------------------------------|
| type                   | JPEG, PNG, WebP, GIF           | what every channel takes                    |
| bytes                  | 1,000,000                      | Bluesky's image blob limit (uploadBlob)     |
| width + height         | 10,000                         | Telegram sendPhoto                          |
| aspect ratio           | at most 20:1                   | Telegram sendPhoto                          |
| pixels                 | 40 million                     | ours: decoding a bigger image costs too much |

An image over the byte limit is re-encoded, then scaled down (aspect ratio kept) until it fits;
an animated GIF over it cannot be re-encoded without losing its frames and is refused.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

BLUESKY_MAX_BLOB_BYTES = 1_000_000
TELEGRAM_MAX_SIDES = 10_000  # width + height
TELEGRAM_MAX_RATIO = 20.0
MAX_PIXELS = 40_000_000
MIME_BY_FORMAT = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
_QUALITY = 85
_SHRINK = 0.8  # each step scales both sides by this
_MAX_STEPS = 20


class ImageRejected(ValueError):
    """Raised when the bytes are not an image every channel can take (the message says why)."""


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    width: int
    height: int
    size: int
    frames: int = 1


def inspect(data: bytes) -> ImageInfo:
    """The image's type and dimensions, read from its content; raises ImageRejected."""
    if not data:
        raise ImageRejected("is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                frames = getattr(img, "n_frames", 1)
                if fmt in MIME_BY_FORMAT:
                    _check_dimensions(width, height)
                    img.verify()  # a truncated or corrupt file fails here, not at send time
    except ImageRejected:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("is not a JPEG, PNG, WebP or GIF image (or is too large to decode)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(f"is a damaged image ({e})") from None
    if fmt not in MIME_BY_FORMAT:
        raise ImageRejected(f"is a {fmt or 'unknown'} image; JPEG, PNG, WebP or GIF only")
    return ImageInfo(MIME_BY_FORMAT[fmt], width, height, len(data), frames)


def _check_dimensions(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ImageRejected(f"is {width}x{height} pixels")
    if width * height > MAX_PIXELS:
        raise ImageRejected(f"is {width}x{height} pixels; at most {MAX_PIXELS:,} pixels")
    if width + height > TELEGRAM_MAX_SIDES:
        raise ImageRejected(
            f"is {width}x{height} pixels; width + height may be at most {TELEGRAM_MAX_SIDES:,} (Telegram)"
        )
    if max(width, height) / min(width, height) > TELEGRAM_MAX_RATIO:
        raise ImageRejected(
            f"is {width}x{height} pixels; the aspect ratio may be at most "
            f"{TELEGRAM_MAX_RATIO:.0f}:1 (Telegram)"
        )


def fit(data: bytes, limit: int = BLUESKY_MAX_BLOB_BYTES) -> tuple[bytes, ImageInfo]:
    """The image as stored: as uploaded when it is within `limit` bytes, else re-encoded and
    scaled down (aspect ratio kept, EXIF orientation applied) until it is. Raises ImageRejected."""
    info = inspect(data)
    if info.size <= limit:
        return data, info
    if info.frames > 1:
        raise ImageRejected(
            f"is an animated GIF of {info.size:,} bytes; at most {limit:,} (it cannot be shrunk "
            "without losing its animation)"
        )
    with Image.open(io.BytesIO(data)) as opened:
        img = ImageOps.exif_transpose(opened)
        img.load()
    fmt = _target_format(img, info)
    scale = 1.0
    for _ in range(_MAX_STEPS):
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        out = _encode(img if scale == 1.0 else img.resize(size, Image.Resampling.LANCZOS), fmt)
        if len(out) <= limit:
            return out, ImageInfo(MIME_BY_FORMAT[fmt], size[0], size[1], len(out))
        # Jump close to the target in one step (bytes grow with the area), then shrink gently.
        scale *= min(_SHRINK, math.sqrt(limit / len(out)) * 0.95)
    raise ImageRejected(f"is {info.size:,} bytes and could not be brought under {limit:,}")


def _target_format(img: Image.Image, info: ImageInfo) -> str:
    """Keep JPEG and WebP; a PNG or GIF with transparency stays PNG, without it becomes JPEG
    (a photo saved as PNG is what usually passes the limit)."""
    if info.mime in ("image/jpeg", "image/webp"):
        return "JPEG" if info.mime == "image/jpeg" else "WEBP"
    transparent = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    return "PNG" if transparent else "JPEG"


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=_QUALITY, optimize=True)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=_QUALITY)
    else:
        img.convert("RGBA").save(buf, "PNG", optimize=True)
    return buf.getvalue()
