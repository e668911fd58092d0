"""Process settings, read from the environment (and an optional `.env`).

Built by `get_settings()` rather than at import so tests and the CLI can point a
process at another Redis, brands file or port before anything connects.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "admin", "password", ""}


class Settings(BaseSettings):
    """Every knob an operator can turn; env var = `BROADCASTER_` + the upper-cased name."""

    model_config = SettingsConfigDict(
        env_prefix="BROADCASTER_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    environment: Literal["development", "production"] = "development"
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("BROADCASTER_REDIS_URL", "REDIS_URL"),
        description="Redis for the ledger, the broker and the schedule (redis:// or sentinel://).",
    )
    redis_sentinel_master: str = "mymaster"
    key_prefix: str = "fb:"
    brands_file: Path = Path("config/brands.yaml")
    admin_api_key: SecretStr | None = None
    public_base_url: str = "http://127.0.0.1:8000"

    # Scheduling and delivery
    dispatch_interval_s: float = 1.0
    dispatch_batch: int = 500
    sweep_interval_s: float = 10.0
    sweep_deadline_s: float = 45.0
    send_lease_s: float = 40.0
    max_attempts: int = 8
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    max_schedule_ahead_days: int = 365
    retention_days: float = 30.0

    # HTTP clients and the broker: libraries default to no timeout or to 300 s
    http_connect_timeout_s: float = 5.0
    http_read_timeout_s: float = 10.0
    broker_socket_timeout_s: float = 15.0

    # RSS
    rss_max_entries: int = Field(50, ge=1, le=1000)

    # Logs
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

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

    def key(self, *parts: str) -> str:
        """A Redis key under this deployment's prefix."""
        return self.key_prefix + ":".join(parts)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings (tests and the CLI change the environment first)."""
    get_settings.cache_clear()
