"""Which providers the simulator emulates: :class:`ProviderSpec` rows, read from TOML or built in.

A configuration file looks like::

    control_port = 9100

    [[provider]]
    name = "openai-sim"
    kind = "openai"
    models = ["gpt-4o-mini", "llama-3.3-70b"]
    port = 9101
    api_key = "sk-sim"            # optional: calls without it get a 401
    processing_delay_s = 1.0

    [provider.faults]             # optional: initial fault settings (see state.Faults)
    fail_fraction = 0.1
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from gateway.simulator.openai_dialects import DialectName
from gateway.simulator.state import Faults

DEFAULT_CONTROL_PORT = 9100
BATCH_FILE_MAX_BYTES = 200 * 1024 * 1024
BATCH_MAX_LINES = 50_000
DEFAULT_REGION = "us-east-1"
BEDROCK_MIN_RECORDS = 100
OPENROUTER_USD_PER_MTOK = (0.075, 0.3)

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ProviderSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One emulated provider.

    ``port`` 0 picks a free port. ``api_key`` set means every call must carry ``Authorization: Bearer <key>``.
    ``processing_delay_s`` is roughly how long a batch takes from creation to its terminal status.
    ``dialect`` (kind ``openai`` only) switches the OpenAI protocol to Azure's, Groq's or Together's variant
    (see :mod:`gateway.simulator.openai_dialects`).

    Kind ``bedrock`` only: ``s3_endpoint_url`` is the S3-compatible server holding the jobs' input and output
    (None: AWS S3; credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), ``region`` the region of the
    job ARNs and of the SigV4 scope calls must carry, ``min_records`` the "Minimum number of records per batch
    inference job" quota (``max_lines`` is the maximum).

    Kind ``openai`` only: ``webhook_url`` and ``webhook_secret`` (``whsec_`` + base64, as OpenAI shows it) make
    the provider send a signed ``batch.completed`` (``failed``, ``expired``, ``cancelled``) event to that URL when a
    batch ends (:mod:`gateway.simulator.webhooks`).

    Kind ``openrouter`` only: ``usd_per_mtok`` is ``[input, output]``, the USD per million tokens the emulated
    OpenRouter bills (each result's and each batch's ``usage.cost``).
    """

    name: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    kind: str = "openai"
    models: list[str] = msgspec.field(default_factory=lambda: ["gpt-4o-mini"])
    port: Port = 0
    api_key: str | None = None
    processing_delay_s: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    faults: Faults = msgspec.field(default_factory=Faults)
    max_file_bytes: Annotated[int, msgspec.Meta(ge=1)] = BATCH_FILE_MAX_BYTES
    max_lines: Annotated[int, msgspec.Meta(ge=1)] = BATCH_MAX_LINES
    dialect: DialectName = "openai"
    s3_endpoint_url: str | None = None
    region: Annotated[str, msgspec.Meta(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")] = DEFAULT_REGION
    min_records: Annotated[int, msgspec.Meta(ge=1)] = BEDROCK_MIN_RECORDS
    usd_per_mtok: list[float] = msgspec.field(default_factory=lambda: list(OPENROUTER_USD_PER_MTOK))
    webhook_url: str | None = None
    webhook_secret: str | None = None

    def __post_init__(self) -> None:
        if (self.webhook_url is None) != (self.webhook_secret is None):
            raise ValueError(f"provider {self.name}: webhook_url and webhook_secret go together")
        if self.webhook_url is not None and (self.kind != "openai" or self.dialect != "openai"):
            raise ValueError(f"provider {self.name}: webhooks are OpenAI's: they need kind 'openai' and its dialect")
        if self.webhook_secret is not None and not self.webhook_secret.startswith("whsec_"):
            raise ValueError(f"provider {self.name}: webhook_secret must be a whsec_ secret (whsec_ + base64)")
        if self.dialect != "openai" and self.kind != "openai":
            raise ValueError(f"provider {self.name}: dialect {self.dialect!r} needs kind 'openai', not {self.kind!r}")
        bedrock_only = {
            "s3_endpoint_url": self.s3_endpoint_url is not None,
            "region": self.region != DEFAULT_REGION,
            "min_records": self.min_records != BEDROCK_MIN_RECORDS,
        }
        for field, is_set in bedrock_only.items():
            if is_set and self.kind != "bedrock":
                raise ValueError(f"provider {self.name}: {field} needs kind 'bedrock', not {self.kind!r}")
        price = self.usd_per_mtok
        # Checked here rather than by type constraints, which msgspec applies only when decoding.
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in price)
        if len(price) != 2 or not numbers:
            raise ValueError(f"provider {self.name}: usd_per_mtok must be two numbers >= 0 ([input, output])")
        if price != list(OPENROUTER_USD_PER_MTOK) and self.kind != "openrouter":
            raise ValueError(f"provider {self.name}: usd_per_mtok needs kind 'openrouter', not {self.kind!r}")


class SimulatorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A set of emulated providers and the port of the control server."""

    control_port: Port | None = DEFAULT_CONTROL_PORT
    providers: list[ProviderSpec] = msgspec.field(name="provider", default_factory=list)

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")
        ports = [spec.port for spec in self.providers if spec.port]
        if self.control_port:
            ports.append(self.control_port)
        if len(set(ports)) != len(ports):
            raise ValueError(f"ports must be distinct, got {sorted(ports)}")


def default_config() -> SimulatorConfig:
    """The set `batchgw simulate` runs without a file: one emulated provider per protocol.

    ``gateway/config/simulated.toml`` is the gateway configuration that points at exactly this set.
    """
    return SimulatorConfig(
        control_port=DEFAULT_CONTROL_PORT,
        providers=[
            ProviderSpec(
                name="openai-sim",
                kind="openai",
                models=["gpt-4o-mini", "llama-3.3-70b"],
                port=9101,
                processing_delay_s=1.0,
            ),
            ProviderSpec(
                name="anthropic-sim",
                kind="anthropic",
                models=["claude-haiku-4-5"],
                port=9102,
                processing_delay_s=1.0,
                max_lines=100_000,
                max_file_bytes=256 * 1024 * 1024,
            ),
            ProviderSpec(
                name="gemini-sim", kind="gemini", models=["gemini-2.5-flash"], port=9103, processing_delay_s=1.0
            ),
            # Serves the synchronous endpoints the gateway's fan-out drives (as DeepSeek or vLLM would).
            ProviderSpec(name="deepseek-sim", kind="openai", models=["deepseek-chat"], port=9104),
        ],
    )


def parse_config(text: str) -> SimulatorConfig:
    """Parse TOML text; raises ``ValueError`` with the offending field on bad input."""
    try:
        return msgspec.convert(tomllib.loads(text), SimulatorConfig)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"invalid simulator configuration: {exc}") from exc


def load_config(path: Path) -> SimulatorConfig:
    """Read a simulator configuration file."""
    return parse_config(path.read_text(encoding="utf-8"))


def load_specs(path: Path) -> list[ProviderSpec]:
    """Only the ``[[provider]]`` tables of a configuration file."""
    return load_config(path).providers
