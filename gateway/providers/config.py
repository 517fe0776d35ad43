"""Provider configuration: one table per provider in the gateway's TOML config file.

Example (``[providers.<name>]`` in the file named by ``BATCHGW_CONFIG_FILE``)::

    [providers.openai]
    kind = "openai"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"
    models = { "gpt-4o-mini" = "gpt-4o-mini" }
    [providers.openai.limits]
    max_requests_per_batch = 50000

Every field can be overridden from the environment, e.g.
``BATCHGW_PROVIDERS__OPENAI__BASE_URL=http://127.0.0.1:9101/v1``. The key itself is never stored
in configuration: ``api_key_env`` names the environment variable that holds it.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, Field, field_validator


class ProviderLimits(BaseModel):
    """What one provider accepts; the engine splits and queues work to stay inside."""

    max_requests_per_batch: int = Field(50_000, ge=1, description="Requests in one provider batch.")
    max_bytes_per_batch: int = Field(200 * 1024**2, ge=1024, description="Bytes of one provider batch.")
    max_batches_in_flight: int = Field(100, ge=1, description="Provider batches running at once.")
    max_enqueued_tokens_per_model: int | None = Field(
        None, ge=1, description="Provider queue quota of input tokens per model, if it has one."
    )
    requests_per_minute: int | None = Field(None, ge=1, description="API calls per minute.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Tokens per minute (sync fan-out).")
    max_concurrency: int = Field(16, ge=1, description="Requests at once (sync fan-out).")


class ProviderConfig(BaseModel):
    """One configured provider."""

    name: str = ""
    kind: str = Field(description="Adapter kind, e.g. 'openai'.")
    base_url: str
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    models: dict[str, str] = Field(
        default_factory=dict, description="Gateway model name -> the provider's own model id."
    )
    catalog_provider: str | None = Field(
        None, description="Whose prices in the model catalog apply (default: this provider's name)."
    )
    timeout_s: float = Field(60.0, gt=0, description="Timeout of one HTTP call to the provider.")
    enabled: bool = True
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings of this provider's adapter kind, e.g. inline_max_bytes for gemini.",
    )
    limits: ProviderLimits = Field(default_factory=ProviderLimits)

    @field_validator("models", mode="before")
    @classmethod
    def _models_from_list(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return {str(model): str(model) for model in value}
        return value

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def api_key(self) -> str | None:
        """The secret from the environment (never logged, never returned by the API)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def public_dict(self) -> dict[str, object]:
        """Configuration safe to show to an admin: names the key's variable, never the key."""
        return self.model_dump(mode="json")
