"""Images' metadata in Redis, and when their bytes may go: the media verbs, one script each.

An upload is recorded (`record`) with its brand and what Pillow read; the bytes are in the blob
store (`broadcaster.ledger.blobs`). A post names its images, and `attach` links them to it
(before the post is created, so an image is never collected under a post being queued). The
bytes follow the post's retention: `collect`, run by the sweeper, finds images due for a check
in `media:gc` and deletes those none of whose posts exists any more (the post hash expires
with its retention) nor is still listed in its brand's feed, and those never attached after
`media_unattached_ttl_s`. An image still
used is checked again when its last post's hash would expire.

A collected image is first marked `dying` (no post can attach it from then on), then its blob
is deleted, then its records: a crash in between leaves it in `media:gc` to finish next time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import httpx
import redis

from broadcaster.core import images
from broadcaster.core.images import ImageInfo
from broadcaster.core.settings import Settings
from broadcaster.ledger import safe_http
from broadcaster.ledger.blobs import BlobStore
from broadcaster.ledger.keys import Keys

# KEYS: meta, gc. ARGV: id, brand, mime, width, height, size, now, check_at
_RECORD = """
redis.call('HSET', KEYS[1], 'brand', ARGV[2], 'mime', ARGV[3], 'width', ARGV[4],
           'height', ARGV[5], 'size', ARGV[6], 'created', ARGV[7])
redis.call('ZADD', KEYS[2], ARGV[8], ARGV[1])
return 1
"""

# KEYS: gc, then meta and posts of each image. ARGV: post id, brand, check_at, then the ids.
# All or nothing: the first image that is unknown, another brand's or dying stops it.
_ATTACH = """
local n = #ARGV - 3
for i = 1, n do
  local meta = KEYS[1 + 2 * i - 1]
  local owner, dying = unpack(redis.call('HMGET', meta, 'brand', 'dying'))
  if owner ~= ARGV[2] or dying then return i end
end
for i = 1, n do
  redis.call('SADD', KEYS[1 + 2 * i], ARGV[1])
  redis.call('ZADD', KEYS[1], 'GT', ARGV[3], ARGV[3 + i])
end
return 0
"""

# KEYS: gc. ARGV: now, limit, meta prefix, posts prefix, post prefix, recheck_s, rss prefix.
# Images due for a check: still used -> checked again when their posts may have expired;
# not used -> marked dying and returned, for the caller to delete the blob, then `forget`.
# A post's feed entry outlives the post (the feed keeps its last entries, whatever their age):
# while the brand's feed still lists the post, its images stay.
_DOOMED = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local now, recheck = tonumber(ARGV[1]), tonumber(ARGV[6])
local dead = {}
for _, id in ipairs(due) do
  local live, later = false, 0
  local brand = redis.call('HGET', ARGV[3] .. id, 'brand')
  for _, post in ipairs(redis.call('SMEMBERS', ARGV[4] .. id)) do
    local ttl = redis.call('PTTL', ARGV[5] .. post)
    if ttl == -1 then live = true; later = math.max(later, recheck)
    elseif ttl >= 0 then live = true; later = math.max(later, ttl / 1000 + 1)
    elseif brand and redis.call('HEXISTS', ARGV[7] .. brand .. ':e', post) == 1 then
      live = true; later = math.max(later, recheck)
    end
  end
  if live and redis.call('HGET', ARGV[3] .. id, 'dying') == false then
    redis.call('ZADD', KEYS[1], now + later, id)
  else
    redis.call('HSET', ARGV[3] .. id, 'dying', '1')
    table.insert(dead, id)
  end
end
return dead
"""

# KEYS: gc, meta, posts. ARGV: id.
_FORGET = """
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class StoredMedia:
    """An upload as recorded: whose it is and what Pillow read from it."""

    id: str
    brand: str
    mime: str
    width: int
    height: int
    size: int


class MediaLedger:
    """The media verbs of one deployment. Cheap to build."""

    def __init__(self, r: redis.Redis, settings: Settings):
        self.r = r
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._record = r.register_script(_RECORD)
        self._attach = r.register_script(_ATTACH)
        self._doomed = r.register_script(_DOOMED)
        self._forget = r.register_script(_FORGET)

    def record(self, media_id: str, brand: str, info: ImageInfo, now: float) -> None:
        """A new upload (its blob already stored): collected if no post uses it in time."""
        k = self.keys
        self._record(
            keys=[k.media_meta(media_id), k.media_gc],
            args=[media_id, brand, info.mime, info.width, info.height, info.size, now, self._check_at(now)],
        )

    def load(self, brand: str, ids: Iterable[str]) -> dict[str, StoredMedia]:
        """The brand's images among `ids` (another brand's, unknown or dying ones are left out)."""
        ids = list(dict.fromkeys(ids))
        pipe = self.r.pipeline(transaction=False)
        for media_id in ids:
            pipe.hgetall(self.keys.media_meta(media_id))
        found: dict[str, StoredMedia] = {}
        for media_id, raw in zip(ids, cast("list[dict[str, str]]", pipe.execute()), strict=True):
            if raw.get("brand") == brand and "dying" not in raw:
                found[media_id] = StoredMedia(
                    media_id, brand, raw["mime"], int(raw["width"]), int(raw["height"]), int(raw["size"])
                )
        return found

    def load_public(self, media_id: str) -> StoredMedia | None:
        """Any brand's image, for the public `GET /media/{id}` (the id is the capability)."""
        raw = cast("dict[str, str]", self.r.hgetall(self.keys.media_meta(media_id)))
        if not raw or "dying" in raw:
            return None
        return self.load(raw["brand"], [media_id]).get(media_id)

    def attach(self, post_id: str, brand: str, ids: list[str], now: float) -> str | None:
        """Link the images to a post about to be created; the first id that cannot be, or None."""
        if not ids:
            return None
        k = self.keys
        keys = [k.media_gc]
        for media_id in ids:
            keys += [k.media_meta(media_id), k.media_posts(media_id)]
        bad = int(cast("int", self._attach(keys=keys, args=[post_id, brand, self._check_at(now), *ids])))
        return ids[bad - 1] if bad else None

    def collect(self, blobs: BlobStore, now: float, limit: int = 200) -> int:
        """Delete the images no post needs any more (bytes first, then records); how many."""
        k = self.keys
        doomed = cast(
            "list[str]",
            self._doomed(
                keys=[k.media_gc],
                args=[
                    now,
                    limit,
                    k.media_meta(""),
                    k.media_posts(""),
                    k.post_prefix(),
                    self.settings.media_unattached_ttl_s,
                    k.rss(""),
                ],
            ),
        )
        for media_id in doomed:
            blobs.delete(k.media_blob(media_id))
            self._forget(keys=[k.media_gc, k.media_meta(media_id), k.media_posts(media_id)], args=[media_id])
        return len(doomed)

    def _check_at(self, now: float) -> float:
        return now + self.settings.media_unattached_ttl_s


# ---- an upload, from bytes or a URL --------------------------------------------------------------
class MediaRejected(ValueError):
    """Raised when an upload or a URL cannot become a stored image (the message says why)."""


class BlobStoreFailed(RuntimeError):
    """Raised when the blob store could not take an image (S3 unreachable, a full disk): the
    upload is not recorded; the cause is chained."""


def ingest(
    media: MediaLedger, blobs: BlobStore, brand: str, data: bytes, media_id: str, now: float
) -> StoredMedia:
    """Check the image, shrink it under Bluesky's blob limit if need be, store bytes then record."""
    try:
        stored, info = images.fit(data)
    except images.ImageRejected as e:
        raise MediaRejected(str(e)) from None
    try:
        blobs.put(media.keys.media_blob(media_id), stored, info.mime)
    except Exception as e:  # boto3/botocore and OSError have no common base worth naming
        raise BlobStoreFailed(f"{type(e).__name__}: {e}") from e
    media.record(media_id, brand, info, now)
    return StoredMedia(media_id, brand, info.mime, info.width, info.height, info.size)


def fetch(url: str, settings: Settings) -> bytes:
    """The image at a brand's URL, through the address-checked client (no private addresses unless
    `webhooks_allow_private`), within `media_fetch_timeout_s` and `media_max_upload_bytes`."""
    cap = settings.media_max_upload_bytes
    try:
        with safe_http.client(settings.media_fetch_timeout_s, settings.webhooks_allow_private) as c:
            answer = safe_http.get(
                c, url, settings.media_fetch_timeout_s, cap + 1, {"Accept-Encoding": "identity"}
            )
    except safe_http.AddressRefused as e:
        raise MediaRejected(f"cannot be fetched: {e}") from None
    except httpx.TimeoutException:
        raise MediaRejected(f"did not answer within {settings.media_fetch_timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise MediaRejected(f"cannot be fetched: {type(e).__name__}") from None
    if answer.status != 200:
        raise MediaRejected(f"answered HTTP {answer.status}, not the image")
    if len(answer.body) > cap:
        raise MediaRejected(f"is larger than {cap:,} bytes")
    if answer.headers.get("content-encoding", "identity") != "identity":
        raise MediaRejected("answered with a Content-Encoding; send the image as it is")
    return answer.body
