"""Identifiers: sortable post ids and the Bluesky record key (TID) derived from a post.

A TID is 64 bits: 53 bits of microseconds since the epoch and 10 bits of clock id,
written in base32-sortable. Deriving it from the post (creation time + a hash of
the id) means a redelivered task asks the PDS for the *same* record key, so it can
never create a second record.
"""

from __future__ import annotations

import hashlib
import secrets
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_S32 = "234567abcdefghijklmnopqrstuvwxyz"


def new_media_id() -> str:
    """`med_` + a ULID (see `new_post_id`): unguessable, since `GET /media/{id}` is public."""
    return "med_" + new_post_id()[2:]


MEDIA_ID_PATTERN = r"^med_[0-9A-HJKMNP-TV-Z]{26}$"


def new_post_id(now_ms: int | None = None) -> str:
    """`p_` + a ULID: 48-bit millisecond time + 80 random bits, so ids sort by creation."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "p_" + "".join(reversed(chars))


def tid_for(post_id: str, created_at_us: int, salt: str = "") -> str:
    """The Bluesky record key for one post (and, with `salt`, one part of a thread)."""
    clock_id = int.from_bytes(hashlib.sha256((post_id + salt).encode()).digest()[:2], "big") & 0x3FF
    value = ((created_at_us & ((1 << 53) - 1)) << 10) | clock_id
    chars = []
    for _ in range(13):
        chars.append(_S32[value & 31])
        value >>= 5
    return "".join(reversed(chars))
