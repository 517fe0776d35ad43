"""All configuration of batch-gateway, in one pydantic-settings class.

Values come, highest priority first, from keyword arguments (tests), environment variables with the
``BATCHGW_`` prefix (nested sections use ``__``, e.g. ``BATCHGW_LIMITS__MAX_UPLOAD_BYTES``), and an
optional TOML file named by ``BATCHGW_CONFIG_FILE``. With nothing set, the gateway runs on a SQLite
file and a local blob folder under ``./batchgw-data``.

Every table rejects keys it does not know, and a named file must exist. :meth:`Settings.load`
(what the ``batchgw`` commands use) also rejects ``BATCHGW_`` variables that name no setting, and
turns every mistake into one :class:`~gateway.config_errors.ConfigError` line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from gateway.config_errors import (
    CONFIG_FILE_VARIABLE,
    ConfigError,
    ConfigProblem,
    ConfigSources,
    read_config_file,
)
from gateway.providers.config import ProviderConfig


class _Section(BaseModel):
    """A table of the configuration: unknown keys are mistakes, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LimitSettings(_Section):
    """Limits on client input; exceeding one answers a clear 4xx error."""

    max_upload_bytes: int = Field(2 * 1024**3, ge=1, description="Largest accepted upload, in bytes.")
    max_file_lines: int = Field(
        1_000_000,
        ge=1,
        description="Most requests (lines) in one batch input file; validation holds ~70 bytes per line.",
    )
    max_line_bytes: int = Field(1024**2, ge=64, description="Longest accepted input line, in bytes.")
    min_completion_window_s: int = Field(
        3600, ge=1, description="Shortest completion_window a client may ask for (longest: 7 days)."
    )
    max_errors_reported: int = Field(1000, ge=1, description="Validation errors kept in a batch's errors.data.")
    upload_check_processes: int = Field(
        1,
        ge=0,
        description="Processes of the API's own that check an upload's lines while it arrives, so that a batch "
        "naming a clean file need not read it again; 0 leaves every check to the batch's validation.",
    )
    files_list_max: int = Field(10_000, ge=1, description="Largest page size of GET /v1/files.")
    key_requests_per_minute: int = Field(
        0, ge=0, description="Client API requests one key may make a minute, across every API replica (0: no limit)."
    )
    team_requests_per_minute: int = Field(
        0, ge=0, description="Client API requests all keys of one team may make a minute, together (0: no limit)."
    )


class WorkerSettings(_Section):
    """The execution engine inside `batchgw worker` (and inside `batchgw serve` by default)."""

    enabled_in_serve: bool = Field(True, description="Run a worker inside `batchgw serve`.")
    poll_interval_s: float = Field(
        0.5, gt=0, description="Longest idle sleep between claim attempts where other processes' work is not announced."
    )
    idle_max_s: float = Field(
        5.0, gt=0, description="Longest idle sleep on PostgreSQL, where every hand-off is announced (LISTEN/NOTIFY)."
    )
    lease_s: float = Field(30.0, ge=1, description="How long a claimed job stays owned without a heartbeat.")
    provider_poll_min_s: float = Field(
        0.25, gt=0, description="First delay between provider status polls (doubling: a small batch is seen done soon)."
    )
    provider_poll_announced_min_s: float = Field(
        5.0,
        gt=0,
        description="First delay between status polls at a provider whose webhooks announce ended batches "
        "(webhook_secret_env): there the webhook brings the end, and a poll is a safety net and a progress read.",
    )
    provider_poll_max_s: float = Field(30.0, gt=0, description="Longest delay between provider status polls.")
    concurrency: int = Field(
        8, ge=1, description="Shard steps (submit, poll, fan-out, collect) one process runs at once."
    )
    batch_concurrency: int = Field(
        2, ge=1, description="Batch stages (validate, route, merge) one process runs at once, in a lane of their own."
    )
    cpu_processes: int = Field(
        2,
        ge=0,
        description="Processes of a worker's own for its CPU-heavy steps (validating input, joining results), so "
        "they hold neither its event loop nor the API's: the first starts with the worker, another when steps "
        "overlap (shards that end together are joined side by side); 0 runs them in threads of the worker's "
        "process.",
    )
    stage_max_attempts: int = Field(
        5, ge=1, description="Attempts of a stage that raised before its batch or shard ends with the error."
    )
    stage_retry_base_s: float = Field(5.0, gt=0, description="Wait after a stage's first failed attempt; doubles.")
    stage_retry_max_s: float = Field(300.0, gt=0, description="Longest wait between two attempts of a stage.")
    abandoned_sweep_s: float = Field(
        2.0, gt=0, description="How often abandoned provider batches due for a cancel or a poll are looked at."
    )
    blob_gc_interval_s: float = Field(600.0, gt=0, description="How often blobs no database row names are removed.")
    blob_gc_grace_s: float = Field(
        3600.0, ge=0, description="Age a blob no row names must reach before removal (writers still publishing)."
    )
    shutdown_grace_s: float = Field(
        20.0,
        ge=0,
        description="On SIGTERM or Ctrl-C, how long running steps may finish; then they are stopped and their "
        "leases released, so other workers take them at once (keep it below the pod's termination grace period).",
    )


class RoutingSettings(_Section):
    """How jobs are placed on providers, and when work moves to another one."""

    default_policy: str = Field("cheapest", description="Policy used when a batch names none in its metadata.")
    max_request_attempts: int = Field(
        3, ge=1, description="Tries of one request (first run included) before a retryable error is final."
    )
    submit_retry_base_s: float = Field(2.0, gt=0, description="First wait after a failed provider call.")
    circuit_failure_threshold: int = Field(
        3, ge=1, description="Consecutive failed calls (errors, timeouts) that open a provider's circuit."
    )
    circuit_cooldown_s: float = Field(30.0, gt=0, description="Open circuit: wait this long, then one probe decides.")
    provider_down_failover_s: float = Field(
        300.0, gt=0, description="A running shard whose provider stays unreachable this long moves elsewhere."
    )
    stall_timeout_s: float = Field(
        21600.0, gt=0, description="A provider batch with no progress this long is cancelled and re-routed."
    )
    escalate_before_deadline_s: float = Field(
        900.0,
        ge=0,
        description=(
            "A provider batch still running this long before its batch's deadline hint (or halfway from its "
            "submission to a nearer deadline) is cancelled, and its unfinished requests move to the fastest tier "
            "that fits what is left (0: never)."
        ),
    )
    turnaround_samples: int = Field(50, ge=1, description="Finished shards per provider model kept for p50/p90.")
    canary_requests: int = Field(
        100, ge=0, description="Canary size for large jobs that ask for none (0: only batches with a 'canary' hint)."
    )
    canary_min_requests: int = Field(5_000, ge=1, description="Jobs at least this large get the default canary.")
    canary_max_error_rate: float = Field(
        0.2, ge=0, le=1, description="A canary whose share of failed requests is above this stops its batch."
    )


class CatalogSettings(_Section):
    """The priced model catalog (see gateway/catalog/models.toml)."""

    file: Path | None = Field(None, description="A catalog file replacing the shipped one.")
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Fields of shipped offers to replace, keyed by 'provider/provider_model'.",
    )


class BillingSettings(_Section):
    """Budgets, billing alerts and the alert webhook."""

    webhook_url: SecretStr | None = Field(
        None, description="URL that receives each alert as a Slack-compatible JSON POST; unset: alerts are only stored."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook POST.")
    webhook_max_attempts: int = Field(8, ge=1, description="POSTs of one alert before it is given up (recorded).")
    webhook_backoff_s: float = Field(5.0, ge=0, description="Delay before the first retry; doubles on each failure.")
    webhook_backoff_max_s: float = Field(600.0, ge=0, description="Longest delay between two attempts.")
    webhook_poll_interval_s: float = Field(2.0, gt=0, description="How often the worker looks for alerts to post.")

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _blank_url_is_unset(cls, value: object) -> object:
        # An empty variable (BATCHGW_BILLING__WEBHOOK_URL=) means "no webhook", not a URL to retry forever.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    anomaly_factor: float = Field(
        3.0, gt=1, description="Alert when a batch's actual cost per request exceeds its estimate by this factor."
    )
    anomaly_min_requests: int = Field(20, ge=1, description="Finished requests needed before the anomaly rule runs.")
    default_thresholds: list[float] = Field(
        [0.5, 0.8, 1.0], description="Alert thresholds (fractions of the limit) of a budget created without any."
    )
    canary_action: Literal["hold", "alert"] = Field(
        "hold",
        description="A canary projecting above anomaly_factor x the estimate, or above what a hard budget can take: "
        "'hold' the batch for an operator (with an alert), or only 'alert' and go on.",
    )
    min_batch_savings_usd: float = Field(
        0.50, ge=0, description="The estimate advisor flags jobs where batching saves less than this (USD)."
    )


class EventSettings(_Section):
    """Batch webhooks: teams' endpoints get batch.completed / failed / expired / cancelled, signed."""

    poll_interval_s: float = Field(1.0, gt=0, description="How often a worker queues new events and posts due ones.")
    timeout_s: float = Field(10.0, gt=0, description="Timeout of one POST to an endpoint.")
    backoff_s: float = Field(5.0, gt=0, description="Delay before an event's first retry; doubles on each failure.")
    backoff_max_s: float = Field(3600.0, gt=0, description="Longest delay between two attempts.")
    give_up_after_s: float = Field(
        72 * 3600.0, gt=0, description="An event not delivered this long after it was queued is given up."
    )


class MetricsSettings(_Section):
    """Prometheus metrics: the API serves ``/metrics``; a ``batchgw worker`` process serves its own counters."""

    worker_port: int | None = Field(
        None, ge=1, le=65535, description="Port where `batchgw worker` serves its counters at /metrics; unset: none."
    )


class StorageSettings(_Section):
    """Where blobs live: a local folder (the embedded default) or S3-compatible object storage."""

    url: str | None = Field(
        None,
        description="'s3://bucket/prefix': object storage shared by every replica; unset: the local blob folder.",
    )
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for non-AWS stores (MinIO, Ceph, R2, GCS's S3 interface); unset: AWS."
    )
    region: str | None = Field(None, description="Region of the bucket; unset: from the environment (AWS_REGION).")
    allow_http: bool = Field(False, description="Allow a plain-http endpoint (a store on a private network).")
    force_path_style: bool = Field(
        True, description="Address the bucket in the path (http://host/bucket/key), as MinIO and Ceph expect."
    )
    multipart_part_bytes: int = Field(
        16 * 1024**2,
        ge=5 * 1024**2,
        le=5 * 1024**3,
        description="Part size of multipart uploads; an upload holds about (upload_concurrency + 1) parts in memory.",
    )
    upload_concurrency: int = Field(2, ge=1, le=32, description="Parts of one upload sent at once.")
    request_timeout_s: float = Field(
        300.0, gt=0, description="Longest time one request to the store may take (a part, a ranged read, a listing)."
    )

    @field_validator("url", "endpoint_url", "region")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value:
            parse_s3_url(value)
        return value

    @model_validator(mode="after")
    def _endpoint(self) -> StorageSettings:
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            scheme = parts.scheme
            if "@" in parts.netloc:
                raise ValueError(
                    "storage.endpoint_url takes no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                )
            if scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("storage.endpoint_url must be an http(s) URL such as https://minio.internal:9000")
            if scheme == "http" and not self.allow_http:
                raise ValueError("storage.endpoint_url is plain http: set storage.allow_http = true to allow it")
        return self


class Settings(BaseSettings):
    """Every setting of the gateway. See README's configuration section."""

    model_config = SettingsConfigDict(
        env_prefix="BATCHGW_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    data_dir: Path = Field(Path("batchgw-data"), description="Folder for the SQLite file and blobs.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite in data_dir. postgresql://... selects PostgreSQL."
    )
    blob_dir: Path | None = Field(None, description="Folder for file blobs; default data_dir/blobs.")
    scratch_dir: Path | None = Field(
        None, description="Folder for this process's temporary files (local copies of blobs); default data_dir/scratch."
    )
    host: str = Field("127.0.0.1", description="Address `batchgw serve` listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port `batchgw serve` listens on.")
    admin_key: SecretStr | None = Field(None, description="Bearer key for /admin endpoints; unset disables them.")
    auto_migrate: bool = Field(True, description="Apply database migrations when the gateway starts.")
    status_cache_s: float = Field(
        1.0,
        ge=0,
        description="Longest an API process answers status reads of a batch from memory; every read still reads its "
        "key, the batch's updated_at and its open shards' count and latest updated_at, so a revocation or a "
        "later change shows at once. 0: never.",
    )
    public_base_url: str | None = Field(None, description="Base URL clients use, for links in responses.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Python logging level."
    )

    log_format: Literal["text", "json"] = Field(
        "text", description="'text': one escaped line per record; 'json': one JSON object per line."
    )
    limits: LimitSettings = Field(default_factory=LimitSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    providers: dict[str, ProviderConfig] = Field(
        default_factory=dict, description="Configured providers by name; see gateway/providers/config.py."
    )

    _sources: ConfigSources | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _name_providers(self) -> Settings:
        for name, provider in self.providers.items():
            provider.name = name
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        """``debug`` and ``DEBUG`` alike, as Python's logging takes them."""
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_VARIABLE)
        if config_file:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=read_config_file(config_file)))
        return tuple(sources)

    @classmethod
    def load(cls) -> Settings:
        """The settings from the environment and the config file, or :class:`ConfigError` naming every mistake.

        Beyond what constructing :class:`Settings` checks, ``BATCHGW_`` variables that name no
        setting are mistakes too (see :meth:`ConfigSources.unknown_variables`).
        """
        sources = ConfigSources.read()
        problems = sources.unknown_variables(cls)
        try:
            settings = cls()
        except ValidationError as exc:
            raise ConfigError([*problems, *sources.explain(exc, cls)]) from None
        except SettingsError as exc:
            raise ConfigError([*problems, ConfigProblem("the environment", (), str(exc))]) from None
        if problems:
            raise ConfigError(problems)
        settings._sources = sources
        return settings

    def config_problem(self, path: tuple[str, ...], text: str) -> ConfigProblem:
        """A problem with the setting at ``path`` (tables, then the key), naming the file or variable that set it."""
        sources = self._sources or ConfigSources.read()
        return sources.problem(path, text)

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL in use (driver filled in)."""
        return async_database_url(self.database_url or f"sqlite:///{self.data_dir / 'batchgw.db'}")

    @property
    def resolved_blob_dir(self) -> Path:
        """The folder holding file blobs."""
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def resolved_scratch_dir(self) -> Path:
        """The folder for this process's temporary files."""
        return self.scratch_dir or self.data_dir / "scratch"

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to show: secrets masked."""
        return self.model_dump(mode="json", exclude={"admin_key"}) | {
            "admin_key": "set" if self.admin_key else None,
            "database_url": redact_url(self.resolved_database_url),
        }


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix without slashes at either end); ValueError if malformed.

    The messages never repeat the URL: a malformed one may hold credentials.
    """
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ValueError("storage.url takes no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("storage.url must look like 's3://bucket/prefix'")
    if parts.query or parts.fragment:
        raise ValueError("storage.url takes no query or fragment: 's3://bucket/prefix'")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ValueError("storage.url has an empty, '.' or '..' segment in its prefix")
    return parts.netloc, prefix


def async_database_url(url: str) -> str:
    """Give a plain ``sqlite://`` or ``postgresql://`` URL the async driver this gateway uses."""
    if url.startswith("sqlite:"):
        return url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://", "postgresql+asyncpg://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redact_url(url: str) -> str:
    """Hide the password of a database URL."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
