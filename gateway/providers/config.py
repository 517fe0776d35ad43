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

Unknown keys are rejected when the configuration is read; :meth:`ProviderConfig.problems` finds
what only the start can check (kind, adapter options, models, the key's variable).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from gateway.config_errors import did_you_mean

KEYLESS_AUTH: dict[str, str] = {"bedrock": "signed with AWS credentials"}
"""How a provider of these kinds authenticates when ``api_key_env`` is unset (the start-up line says so)."""
WEBHOOK_SECRET_PREFIX = "whsec_"
"""The prefix of a webhook signing secret whose rest is the key in base64 (as OpenAI shows it)."""

KIND_CAPS: dict[str, dict[str, int]] = {
    "openrouter": {"max_requests_per_batch": 5_000, "max_bytes_per_batch": 200 * 1000 * 1000},
    "openai:groq": {"max_bytes_per_batch": 100 * 1000 * 1000},
    "openai:together": {"max_requests_per_batch": 50_000, "max_bytes_per_batch": 100 * 1000 * 1000},
}
"""Most a kind's provider API takes in one batch (a dialect's own as ``kind:dialect``): the limits where a
provider's ``limits`` table does not set them, and a configuration problem where it sets more."""

Problem = tuple[tuple[str, ...], str]
"""A key's path below the provider's table (``("options", "inline_max")``) and what is wrong with it."""


class ProviderLimits(BaseModel):
    """What one provider accepts; the engine splits and queues work to stay inside."""

    model_config = ConfigDict(extra="forbid")

    max_requests_per_batch: int = Field(
        50_000, ge=1, description="Requests in one provider batch (unset: 50,000; openrouter 5,000)."
    )
    min_requests_per_batch: int | None = Field(
        None, ge=1, description="Fewest requests in one provider batch (unset: the kind's own; bedrock 100, else 1)."
    )
    max_bytes_per_batch: int = Field(
        200 * 1024**2,
        ge=1024,
        description="Bytes of one provider batch (unset: 200 MiB; openrouter 200 MB, groq and together 100 MB).",
    )
    max_batches_in_flight: int = Field(100, ge=1, description="Provider batches running at once.")
    max_enqueued_tokens_per_model: int | None = Field(
        None, ge=1, description="Provider queue quota of input tokens per model, if it has one."
    )
    requests_per_minute: int | None = Field(None, ge=1, description="API calls per minute.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Tokens per minute (sync fan-out).")
    max_concurrency: int = Field(16, ge=1, description="Requests at once (sync fan-out).")

    @model_validator(mode="after")
    def _minimum_fits(self) -> ProviderLimits:
        if self.min_requests_per_batch is not None and self.min_requests_per_batch > self.max_requests_per_batch:
            raise ValueError(
                f"min_requests_per_batch ({self.min_requests_per_batch}) is above "
                f"max_requests_per_batch ({self.max_requests_per_batch}): no batch could hold both"
            )
        return self


class ProviderConfig(BaseModel):
    """One configured provider."""

    model_config = ConfigDict(extra="forbid")

    name: str = ""
    kind: str = Field(description="Adapter kind, e.g. 'openai'.")
    base_url: str
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    webhook_secret_env: str | None = Field(
        None,
        description="Environment variable holding the signing secret (whsec_...) of the provider's batch webhooks "
        "(OpenAI): with it, POST /webhooks/providers/<name> takes them and polls the ended batch at once.",
    )
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

    @property
    def caps(self) -> dict[str, int]:
        """The most one batch of this provider's kind (and dialect) takes, by limit."""
        dialect = self.options.get("dialect")
        return KIND_CAPS.get(f"{self.kind}:{dialect}" if isinstance(dialect, str) else self.kind, {})

    @model_validator(mode="after")
    def _kind_limits(self) -> ProviderConfig:
        defaults = {name: value for name, value in self.caps.items() if name not in self.limits.model_fields_set}
        if defaults:
            self.limits = ProviderLimits.model_validate({**self.limits.model_dump(exclude_unset=True), **defaults})
        return self

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

    def webhook_key(self) -> bytes | None:
        """The key webhooks are signed with, from the secret in the environment (never logged, never returned by
        the API), by OpenAI's rule: a ``whsec_`` secret holds the key in base64, any other secret is the key's
        UTF-8 bytes. None when the variable is unset or empty; raises ``ValueError`` for bad base64 or an empty key."""
        secret = os.environ.get(self.webhook_secret_env) if self.webhook_secret_env else None
        if not secret:
            return None
        if not secret.startswith(WEBHOOK_SECRET_PREFIX):
            return secret.encode()
        where = self.webhook_secret_env
        try:
            key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
        except binascii.Error:
            raise ValueError(f"the {WEBHOOK_SECRET_PREFIX} secret in {where} is not base64") from None
        if not key:
            raise ValueError(f"the {WEBHOOK_SECRET_PREFIX} secret in {where} holds no key")
        return key

    def public_dict(self) -> dict[str, object]:
        """Configuration safe to show to an admin: names the key's variable, never the key."""
        return self.model_dump(mode="json")

    def host(self) -> str:
        """Host (and port) of ``base_url``: no scheme, path, query or credentials."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError:
            port = None
        return f"{host}:{port}" if port else host

    def describe(self) -> str:
        """One log line: kind and adapter options, host, key variable, models and limits; never the key or the
        full URL (adapter options hold settings such as ``dialect``, never secrets)."""
        if not self.enabled:
            return f"provider {self.name}: disabled"
        models = ", ".join(name if name == model else f"{name}={model}" for name, model in self.models.items())
        limits = " ".join(f"{k}={v}" for k, v in self.limits.model_dump().items() if v is not None)
        key = f"key from {self.api_key_env}" if self.api_key_env else KEYLESS_AUTH.get(self.kind, "no key")
        prices = f", prices of {self.catalog_provider}" if self.catalog_provider else ""
        options = "".join(f", {name} {value}" for name, value in self.options.items())
        hooks = f", webhooks signed with {self.webhook_secret_env}" if self.webhook_secret_env else ""
        return (
            f"provider {self.name}: kind {self.kind}{options}, host {self.host()}, {key}{prices}{hooks}, "
            f"models {models or 'none'}, limits {limits}"
        )

    def problems(
        self,
        kinds: Mapping[str, Mapping[str, Any]],
        *,
        require_key: bool = True,
        sellers: Collection[str] | None = None,
    ) -> list[Problem]:
        """What stops this provider from starting; nothing for a disabled one.

        ``kinds`` maps each adapter kind to its options and their types; ``require_key`` asks that
        ``api_key_env`` names a set variable; ``sellers`` are the providers the model catalog prices.
        """
        if not self.enabled:
            return []
        found: list[Problem] = []
        scheme = urlsplit(self.base_url).scheme
        if scheme not in ("http", "https") or not urlsplit(self.base_url).hostname:
            found.append((("base_url",), "base_url must be an http:// or https:// URL with a host"))
        if not self.models:
            found.append((("models",), "serves no models: 'models' needs at least one entry"))
        for name, model in self.models.items():
            if not name.strip():
                found.append((("models",), "models has an empty model name"))
            elif not model.strip():
                found.append((("models",), f"models maps {name!r} to an empty provider model id"))
        if require_key and self.api_key_env and not os.environ.get(self.api_key_env):
            found.append(
                (("api_key_env",), f"api_key_env names {self.api_key_env}, which is not set in the environment")
            )
        if self.webhook_secret_env and (self.kind != "openai" or self.options.get("dialect", "openai") != "openai"):
            text = "webhook_secret_env is set, but only kind 'openai' (its own dialect) sends batch webhooks"
            found.append((("webhook_secret_env",), text))
        elif require_key and self.webhook_secret_env and not os.environ.get(self.webhook_secret_env):
            text = f"webhook_secret_env names {self.webhook_secret_env}, which is not set in the environment"
            found.append((("webhook_secret_env",), text))
        elif self.webhook_secret_env:
            try:
                self.webhook_key()
            except ValueError as exc:
                found.append((("webhook_secret_env",), f"webhook_secret_env: {exc}"))
        if sellers is not None and self.catalog_provider and self.catalog_provider not in sellers:
            hint = did_you_mean(self.catalog_provider, sellers)
            text = f"catalog_provider {self.catalog_provider!r} prices nothing in the catalog{hint}"
            found.append((("catalog_provider",), text))
        if self.kind not in kinds:
            hint = did_you_mean(self.kind, kinds)
            found.append((("kind",), f"unknown kind {self.kind!r}{hint}; kinds: {', '.join(sorted(kinds))}"))
            return found
        for limit, cap in self.caps.items():
            if getattr(self.limits, limit) > cap:
                which = f"{self.kind} ({self.options['dialect']})" if "dialect" in self.options else self.kind
                text = f"{limit} {getattr(self.limits, limit)} is more than one {which} batch takes ({cap})"
                found.append((("limits", limit), text))
        options = kinds[self.kind]
        for option, value in self.options.items():
            if option not in options:
                hint = did_you_mean(option, options)
                known = ", ".join(sorted(options)) or "none"
                found.append((("options", option), f"unknown option {option!r}{hint}; options of {self.kind}: {known}"))
                continue
            try:
                TypeAdapter(options[option]).validate_python(value)
            except ValidationError as exc:
                found.append((("options", option), f"option {option!r}: {exc.errors()[0]['msg']}"))
        return found
