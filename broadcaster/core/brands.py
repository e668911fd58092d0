"""Brands: who may queue posts, where their audience lives, and how to route around an outage.

Brands are configured in a YAML file (`config/brands.yaml`, see `config/brands.example.yaml`).
The file never holds a secret: API keys are stored as SHA-256 hashes and every
credential is the *name* of an environment variable, read when a channel needs it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CHANNELS = ("bluesky", "mastodon", "telegram", "sms", "rss")
ChannelName = Literal["bluesky", "mastodon", "telegram", "sms", "rss"]
DISCOVER_FEED = "at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.generator/whats-hot"


class Priority(IntEnum):
    """How much a post matters; SMS (paid per recipient) goes out only above a threshold."""

    low = 0
    normal = 1
    high = 2
    urgent = 3


PriorityName = Literal["low", "normal", "high", "urgent"]


class BrandsFileError(ValueError):
    """Raised when the brands file is missing, is not YAML, or does not validate."""


class MissingSecret(RuntimeError):
    """Raised when a credential's environment variable is not set; the message names the variable."""


def read_secret(env_name: str, what: str) -> str:
    value = os.environ.get(env_name, "")
    if not value:
        raise MissingSecret(f"{what} is not set (environment variable {env_name})")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BlueskyConfig(_Strict):
    handle: str
    app_password_env: str
    pds_url: str = "https://bsky.social"
    probe_feeds: list[str] = Field(default_factory=lambda: [DISCOVER_FEED])
    langs: list[str] = Field(default_factory=lambda: ["en"])
    # The target's public AppView (e.g. https://public.api.bsky.app): an extra vantage point that
    # reads the brand's author feed and the probe feeds without a session. None: not used.
    appview_url: str | None = None

    @field_validator("appview_url")
    @classmethod
    def _appview_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("appview_url must start with http:// or https://")
        return v.rstrip("/") if v else v

    @field_validator("pds_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("pds_url must start with http:// or https://")
        return v.rstrip("/")

    @property
    def target(self) -> str:
        """The health target this account depends on: its PDS (and the AppView behind it)."""
        return self.pds_url.split("://", 1)[1].replace("/", "_")


class RssConfig(_Strict):
    title: str
    link: str
    description: str
    language: str = "en"


def _base_url(name: str, v: str) -> str:
    """Channel base URLs are settings so the sandbox (or any compatible server) can stand in."""
    if not v.startswith(("http://", "https://")):
        raise ValueError(f"{name} must start with http:// or https://")
    return v.rstrip("/")


class MastodonConfig(_Strict):
    instance_url: str
    access_token_env: str
    visibility: Literal["public", "unlisted", "private", "direct"] = "public"
    spoiler_text: str | None = None
    language: str | None = None
    max_characters: int = Field(500, ge=50)

    @field_validator("instance_url")
    @classmethod
    def _instance_url(cls, v: str) -> str:
        return _base_url("instance_url", v)


class TelegramConfig(_Strict):
    bot_token_env: str
    chat_ids: list[int | str] = Field(min_length=1)
    api_base_url: str = "https://api.telegram.org"
    # Pacing below Telegram's flood limits: ~30 messages/s per bot, 20/min per group or channel.
    # A bucket of `chat_burst` refilled at `chat_per_minute` sends at most burst + rate per minute.
    chat_per_minute: float = Field(18, gt=0)
    chat_burst: int = Field(2, ge=1)
    bot_per_s: float = Field(25, gt=0)

    @field_validator("api_base_url")
    @classmethod
    def _api_base_url(cls, v: str) -> str:
        return _base_url("api_base_url", v)

    @field_validator("chat_ids")
    @classmethod
    def _chat_refs(cls, ids: list[int | str]) -> list[int | str]:
        for ref in ids:
            text = str(ref)
            if not (text.lstrip("-").isdigit() or (text.startswith("@") and len(text) > 1)):
                raise ValueError(f"chat id {text!r} must be a number or a @channel name")
        return ids


class SmsConfig(_Strict):
    account_sid: str
    auth_token_env: str
    from_number: str | None = None
    messaging_service_sid: str | None = None
    api_base_url: str = "https://api.twilio.com"
    max_segments: int = Field(3, ge=1, le=10)
    rate_per_s: float = Field(1.0, gt=0)
    daily_segment_budget: int = Field(1000, ge=0)
    # Region for subscriber numbers written without +country code (e.g. "US"); None = E.164 only.
    default_region: str | None = None
    # Send a post's images as MMS (Twilio MediaUrl: US/Canada numbers, priced per message);
    # off, the SMS carries a link to each image instead.
    mms: bool = False

    @field_validator("api_base_url")
    @classmethod
    def _api_base_url(cls, v: str) -> str:
        return _base_url("api_base_url", v)

    @model_validator(mode="after")
    def _needs_a_sender(self) -> SmsConfig:
        if not (self.from_number or self.messaging_service_sid):
            raise ValueError("sms needs from_number or messaging_service_sid")
        return self


class PublicPage(_Strict):
    """What the brand's public page (`/b/<brand>`) tells its audience; every field is optional.

    Channels are configured for sending, not for reading: the page needs the addresses a
    follower opens (the Mastodon account, the Telegram channel), which the sending side lacks.
    """

    mastodon_url: str | None = None  # the account's page, e.g. https://mastodon.social/@acme
    telegram_url: str | None = None  # default: https://t.me/<name> for a "@name" chat id
    sms_keyword: str | None = None  # what to text to sign up, e.g. JOIN (no keyword: no SMS line)
    sms_number: str | None = None  # where to text it; default: the SMS channel's from_number
    website: str | None = None

    @field_validator("mastodon_url", "telegram_url", "website")
    @classmethod
    def _page_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


def _default_primary() -> list[ChannelName]:
    return ["bluesky"]


def _default_failover() -> list[ChannelName]:
    return ["mastodon", "telegram", "sms"]


def _default_always_on() -> list[ChannelName]:
    return ["rss"]


class RoutingPolicy(_Strict):
    primary: list[ChannelName] = Field(default_factory=_default_primary)
    failover: list[ChannelName] = Field(default_factory=_default_failover)
    always_on: list[ChannelName] = Field(default_factory=_default_always_on)
    sms_min_priority: PriorityName = "high"
    failback: Literal["backfill", "skip"] = "backfill"
    outage_notice: str | None = (
        "{brand} here: Bluesky is having trouble. Until it is back, follow us on {channels}."
    )
    recovery_notice: str | None = None
    lookback_minutes: float = Field(30, ge=0)
    # When some vantage points fail and others do not (`partial`): `notice_only` posts the outage
    # notice and keeps posting to Bluesky (most of the audience still sees it); `failover`
    # treats the target as down for this brand (holds and reroutes, backfills after).
    on_partial: Literal["notice_only", "failover"] = "notice_only"


class Brand(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    name: str
    api_keys: list[str] = Field(min_length=1)
    bluesky: BlueskyConfig
    rss: RssConfig
    mastodon: MastodonConfig | None = None
    telegram: TelegramConfig | None = None
    sms: SmsConfig | None = None
    routing: RoutingPolicy = Field(default_factory=RoutingPolicy)
    # Every image a post carries needs alt text (screen readers); a brand may relax it.
    require_alt_text: bool = True
    page: PublicPage = Field(default_factory=PublicPage)

    @field_validator("api_keys")
    @classmethod
    def _hashed(cls, keys: list[str]) -> list[str]:
        for k in keys:
            if not (k.startswith("sha256:") and len(k) == 71):
                raise ValueError(
                    "api_keys must hold hashes ('sha256:<64 hex>'); "
                    "make one with `broadcaster keys new <brand>`"
                )
        return keys

    @property
    def channels(self) -> list[str]:
        """The channels this brand has configured (Bluesky and RSS always)."""
        return [c for c in CHANNELS if c in ("bluesky", "rss") or getattr(self, c) is not None]


class Watcher(_Strict):
    """A reader account on another PDS: an extra vantage point on the targets it watches (its
    timeline and the probe feeds, through its own PDS and session)."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    handle: str
    app_password_env: str
    pds_url: str = "https://bsky.social"
    targets: list[str] = Field(default_factory=list, description="Targets (PDS hosts) watched; [] every one.")

    @field_validator("pds_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("pds_url must start with http:// or https://")
        return v.rstrip("/")

    def watches(self, target: str) -> bool:
        return not self.targets or target in self.targets


class BrandsFile(_Strict):
    brands: list[Brand]
    watchers: list[Watcher] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> BrandsFile:
        ids = [b.id for b in self.brands]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"duplicate brand ids: {sorted(dupes)}")
        return self


def hash_api_key(key: str) -> str:
    """Keys are long random tokens, so a plain SHA-256 is enough to store them safely."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_api_key(brand_id: str) -> str:
    return f"fb_{brand_id}_{secrets.token_urlsafe(24)}"


class Brands:
    """The loaded brands, indexed by id and by API key hash."""

    def __init__(self, brands: list[Brand], watchers: list[Watcher] | None = None):
        self.watchers = list(watchers or [])
        self._by_id = {b.id: b for b in brands}
        self._by_key = {h: b for b in brands for h in b.api_keys}

    def __iter__(self) -> Iterator[Brand]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, brand_id: str) -> Brand | None:
        return self._by_id.get(brand_id)

    def require(self, brand_id: str) -> Brand:
        brand = self._by_id.get(brand_id)
        if brand is None:
            raise KeyError(f"unknown brand {brand_id!r}")
        return brand

    def by_api_key(self, key: str) -> Brand | None:
        return self._by_key.get(hash_api_key(key))


def parse_brands(text: str, source: str = "<brands>") -> Brands:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        # One line: PyYAML's message spans several (the problem, then where it is).
        raise BrandsFileError(f"{source} is not valid YAML: {' '.join(str(e).split())}") from e
    try:
        parsed = BrandsFile.model_validate(data or {})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise BrandsFileError(f"{source}: {problems}") from None
    return Brands(parsed.brands, parsed.watchers)


class BrandsFileReport:
    """Decides when a process says what is wrong with the brands file: once per change of the
    file (its modification time) or of the error, and once when it is readable again, not on
    every read (a worker reads it on every task and every probe)."""

    def __init__(self) -> None:
        self.last: tuple[float | None, str] | None = None  # the problem last reported, None if fine

    def line(self, error: str | None, mtime: float | None) -> str | None:
        """The line to log now for this read (`error` None: it was read fine), or None."""
        if error is None:
            if self.last is None:
                return None
            self.last = None
            return "the brands file is readable again"
        if self.last == (mtime, error):
            return None
        self.last = (mtime, error)
        return (
            f"{error} (every task needing the brands waits until the file is fixed; it is re-read on change)"
        )


_cache: dict[Path, tuple[float, Brands]] = {}


def load_brands(path: Path) -> Brands:
    """Load (and re-load when the file changes) the brands file."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise BrandsFileError(
            f"brands file {path} not found (set BROADCASTER_BRANDS_FILE; see config/brands.example.yaml)"
        ) from None
    cached = _cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    brands = parse_brands(path.read_text(encoding="utf-8"), str(path))
    _cache[path] = (mtime, brands)
    return brands
