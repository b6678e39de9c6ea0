"""Settings: environment variables ``UNITY_*`` and an optional TOML file with the same keys.

Precedence, highest first: keyword arguments, environment, the TOML file, defaults.
No module-level instance: ``create_app`` and the CLI build one and pass it down.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from unity.errors import ConfigError

Role = Literal["all", "api", "scheduler"]


class Settings(BaseSettings):
    """Everything Unity can be configured with; every field is ``UNITY_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="UNITY_", extra="ignore", toml_file=None)

    data_dir: Path = Path("./data")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite+aiosqlite:///<data_dir>/unity.db. "
        "postgresql+asyncpg://… selects PostgreSQL.",
    )
    redis_url: str | None = Field(default=None, description="redis://… enables Redis.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    role: Role = "all"
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    # collection
    default_interval_s: int = Field(default=60, ge=1)
    execution_timeout_s: float = Field(default=30.0, gt=0)
    scheduler_jitter: bool = True
    stale_after_intervals: int = Field(default=3, ge=1)
    stale_check_interval_s: float = Field(default=15.0, gt=0)
    degraded_after_errors: int = Field(default=2, ge=1)
    failing_after_errors: int = Field(default=5, ge=1)
    trusted_plugins: list[str] = Field(
        default_factory=list,
        description="Ids of third-party plugins (entry points) to treat as verified.",
    )
    autoenable_plugins: list[str] = Field(
        default_factory=lambda: ["system_info"],
        description="Plugins enabled on first start of a new database.",
    )

    # batch writer
    writer_flush_interval_s: float = Field(default=0.1, gt=0)
    writer_max_batch: int = Field(default=10_000, ge=1)
    writer_max_pending: int = Field(
        default=1_000_000, ge=1, description="Samples buffered before producers wait."
    )

    # live data
    ws_heartbeat_s: float = Field(default=30.0, gt=0, description="WebSocket heartbeat interval.")
    ws_queue_size: int = Field(
        default=1000, ge=1, description="Messages buffered per WebSocket client before it lags."
    )
    event_history_size: int = Field(
        default=10_000, ge=100, description="Events kept for replay after a reconnect."
    )

    # security
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (CORS off when empty).",
    )
    default_rate_limit_per_minute: int | None = Field(
        default=600, ge=1, description="Per-key limit for keys that set none; null for no limit."
    )
    default_rate_limit_per_hour: int | None = Field(default=None, ge=1)
    default_rate_limit_per_day: int | None = Field(default=None, ge=1)
    rate_limit_failed_auth_per_minute: int = Field(
        default=20, ge=1, description="Requests with a wrong key allowed per client address."
    )
    key_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        le=5,
        description="How long a revocation can take to reach other processes.",
    )
    key_usage_flush_interval_s: float = Field(default=5.0, gt=0)
    audit_retention_days: int = Field(default=90, ge=1)
    audit_flush_interval_s: float = Field(default=1.0, gt=0)

    # runs
    run_check_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often approval deadlines are checked and waiting runs picked up.",
    )
    run_shutdown_grace_s: float = Field(
        default=10.0, ge=0, description="How long a stopping Unity lets applies finish."
    )

    # cache TTLs (seconds)
    cache_ttl_latest_s: int = 300
    cache_ttl_dashboard_s: int = 60
    cache_ttl_status_s: int = 30
    redis_retry_interval_s: float = Field(
        default=5.0, gt=0, description="How long Redis stays bypassed after a failure."
    )

    # webhooks
    webhook_dispatch: bool = Field(
        default=True, description="Deliver webhooks from this process (off: only enqueue)."
    )
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        description="Delay before each attempt after the previous failure (with jitter); "
        "a delivery is exhausted after the last.",
    )
    webhook_timeout_s: float = Field(default=15.0, gt=0, description="Per-attempt timeout.")
    webhook_disable_after_s: float = Field(
        default=5 * 86400, gt=0, description="Disable an endpoint failing for this long."
    )
    webhook_rotation_grace_s: float = Field(
        default=86400, ge=0, description="How long the old secret also signs after a rotation."
    )
    webhook_allow_networks: list[str] = Field(
        default_factory=list, description="When set, webhooks may only reach these networks."
    )
    webhook_deny_networks: list[str] = Field(
        default_factory=list, description="Networks webhooks may not reach (CIDR)."
    )
    webhook_concurrency: int = Field(
        default=64, ge=1, description="Endpoints delivered to at once by one process."
    )
    webhook_poll_interval_s: float = Field(
        default=1.0, gt=0, description="How often the outbox is checked for due retries."
    )
    webhook_lease_s: float = Field(
        default=60.0, gt=0, description="How long a process owns an endpoint's deliveries."
    )
    webhook_secret_key: str | None = Field(
        default=None,
        description="Fernet key encrypting webhook secrets; default <data_dir>/webhooks.key.",
    )

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _non_negative_delays(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must not be negative")
        return value

    @field_validator("webhook_allow_networks", "webhook_deny_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return value

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def effective_database_url(self) -> str:
        """The database URL in use: the configured one or the SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'unity.db').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment, ``config_file`` (or ``./unity.toml`` if present)."""
    path = config_file
    if path is None and Path("unity.toml").is_file():
        path = Path("unity.toml")
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")

    class _FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    values = _FileSettings(**overrides).model_dump()
    return Settings.model_validate(values)
