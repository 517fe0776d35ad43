"""Provider tables: what stops the start (unset key variable, no models, unknown kind or option) and the start-up lines.

The subprocess tests run ``python -m gateway.cli serve`` / ``worker`` with each mistake and check
the exit code, the one line on stderr and that nothing listens; a correct configuration logs one
line per provider and per routing policy, without the key or the URL's credentials.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from gateway.providers.config import ProviderConfig
from gateway.providers.registry import ADAPTER_KINDS, adapter_options
from router_policies.registry import BUILTIN_POLICIES, default_registry
from tests.conftest import GatewayProcess, free_port

KINDS = {kind: adapter_options(adapter) for kind, adapter in ADAPTER_KINDS.items()}
SECRET = "gsk-never-logged-7f3a"


def config(**fields: object) -> ProviderConfig:
    values: dict[str, object] = {"name": "groq", "kind": "openai", "base_url": "https://api.groq.com/openai/v1"}
    values |= {"models": {"llama-3.3-70b": "llama-3.3-70b-versatile"}} | fields
    return ProviderConfig.model_validate(values)


# --- in process -------------------------------------------------------------------------------------------


def test_a_complete_provider_has_no_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROQ_TEST_KEY", SECRET)
    assert config(api_key_env="GROQ_TEST_KEY").problems(KINDS, sellers={"groq"}) == []
    assert config().problems(KINDS) == [], "a provider without api_key_env (an emulator) stays valid"


def test_an_unset_or_empty_key_variable_is_a_problem_only_when_keys_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GROQ_TEST_KEY", raising=False)
    expected = [(("api_key_env",), "api_key_env names GROQ_TEST_KEY, which is not set in the environment")]
    assert config(api_key_env="GROQ_TEST_KEY").problems(KINDS) == expected
    monkeypatch.setenv("GROQ_TEST_KEY", "")
    assert config(api_key_env="GROQ_TEST_KEY").problems(KINDS) == expected
    assert config(api_key_env="GROQ_TEST_KEY").problems(KINDS, require_key=False) == []


def test_a_webhook_secret_is_checked_where_the_provider_sends_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", "whsec_" + "a2V5IG9mIHRoZSB3ZWJob29rcw==")
    assert config(webhook_secret_env="HOOK_SECRET").problems(KINDS) == []
    assert config(webhook_secret_env="HOOK_SECRET").webhook_key() == b"key of the webhooks"
    monkeypatch.setenv("HOOK_SECRET", "a plain secret")
    assert config(webhook_secret_env="HOOK_SECRET").webhook_key() == b"a plain secret", "OpenAI's rule: UTF-8 bytes"
    monkeypatch.setenv("HOOK_SECRET", "whsec_not base64!")
    assert config(webhook_secret_env="HOOK_SECRET").problems(KINDS) == [
        (("webhook_secret_env",), "webhook_secret_env: the whsec_ secret in HOOK_SECRET is not base64")
    ]
    monkeypatch.setenv("HOOK_SECRET", "whsec_")
    assert config(webhook_secret_env="HOOK_SECRET").problems(KINDS) == [
        (("webhook_secret_env",), "webhook_secret_env: the whsec_ secret in HOOK_SECRET holds no key")
    ]
    monkeypatch.delenv("HOOK_SECRET")
    assert config(webhook_secret_env="HOOK_SECRET").problems(KINDS) == [
        (("webhook_secret_env",), "webhook_secret_env names HOOK_SECRET, which is not set in the environment")
    ]
    assert config(webhook_secret_env="HOOK_SECRET").webhook_key() is None
    sends_none = config(kind="anthropic", webhook_secret_env="HOOK_SECRET").problems(KINDS)
    expected_text = "webhook_secret_env is set, but only kind 'openai' (its own dialect) sends batch webhooks"
    assert (("webhook_secret_env",), expected_text) in sends_none
    grouped = config(webhook_secret_env="HOOK_SECRET", options={"dialect": "groq"}).problems(KINDS)
    assert (("webhook_secret_env",), expected_text) in grouped


def test_models_must_map_to_something() -> None:
    assert config(models={}).problems(KINDS) == [(("models",), "serves no models: 'models' needs at least one entry")]
    assert config(models={"llama-3.3-70b": " "}).problems(KINDS) == [
        (("models",), "models maps 'llama-3.3-70b' to an empty provider model id")
    ]
    assert config(models=[""]).problems(KINDS) == [(("models",), "models has an empty model name")]


def test_kind_options_base_url_and_catalog_provider_are_checked() -> None:
    assert config(kind="opneai").problems(KINDS) == [
        (
            ("kind",),
            "unknown kind 'opneai' (did you mean 'openai'?); "
            "kinds: anthropic, anthropic_sync, bedrock, gemini, gemini_sync, mistral, openai, openai_sync, openrouter",
        )
    ]
    [(path, text)] = config(kind="gemini", options={"inline_max": 1}).problems(KINDS)
    assert path == ("options", "inline_max")
    assert text.startswith("unknown option 'inline_max' (did you mean 'inline_max_bytes'?); options of gemini: ")
    assert config(kind="gemini", options={"inline_max_bytes": "big"}).problems(KINDS) == [
        (("options", "inline_max_bytes"), "option 'inline_max_bytes': Input should be a valid integer, "
         "unable to parse string as an integer")
    ]  # fmt: skip
    assert config(base_url="api.groq.com/openai/v1").problems(KINDS) == [
        (("base_url",), "base_url must be an http:// or https:// URL with a host")
    ]
    assert config(catalog_provider="grok").problems(KINDS, sellers={"groq", "openai"}) == [
        (("catalog_provider",), "catalog_provider 'grok' prices nothing in the catalog (did you mean 'groq'?)")
    ]


def test_a_disabled_provider_is_not_checked() -> None:
    assert config(enabled=False, models={}, kind="nope", api_key_env="UNSET_VARIABLE_X").problems(KINDS) == []


def test_the_start_up_line_shows_the_host_only() -> None:
    line = config(
        base_url="https://user:pa55word@api.groq.com:8443/openai/v1?key=abc",
        api_key_env="GROQ_API_KEY",
        models={"llama-3.3-70b": "llama-3.3-70b-versatile", "gpt-4o-mini": "gpt-4o-mini"},
        limits={"max_batches_in_flight": 4},
        options={"dialect": "groq"},
    ).describe()
    assert line == (
        "provider groq: kind openai, dialect groq, host api.groq.com:8443, key from GROQ_API_KEY, "
        "models llama-3.3-70b=llama-3.3-70b-versatile, gpt-4o-mini, limits max_requests_per_batch=50000 "
        "max_bytes_per_batch=100000000 max_batches_in_flight=4 max_concurrency=16"
    )
    assert "pa55word" not in line and "abc" not in line and "/openai/v1" not in line


def test_the_start_up_line_says_how_a_keyless_provider_authenticates() -> None:
    bedrock = config(kind="bedrock", base_url="https://bedrock.us-east-1.amazonaws.com", api_key_env=None)
    assert ", signed with AWS credentials," in bedrock.describe()
    assert ", no key," in config(api_key_env=None).describe()


# --- real processes ---------------------------------------------------------------------------------------


def provider_file(tmp_path: Path, *tables: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text("\n".join(tables), encoding="utf-8")
    return path


GROQ = """
[providers.groq]
kind = "openai"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "GROQ_TEST_KEY"
models = { "llama-3.3-70b" = "llama-3.3-70b-versatile" }
"""

GEMINI = """
[providers.gem]
kind = "gemini"
base_url = "http://127.0.0.1:9/v1beta"
models = ["gemini-2.5-flash"]
options = { inline_max_bytes = 4096 }
"""


def origin(policy: str) -> str:
    kind = "built-in" if policy in BUILTIN_POLICIES else "plug-in"
    return kind + (", the default" if policy == "cheapest" else "")


def nobody_listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start_refused(tmp_path: Path, command: str, config_file: Path) -> str:
    """Run ``batchgw COMMAND``; assert it stopped at once with one line and no traceback; return that line."""
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", free_port())
    metrics_port = free_port()
    gateway.extra_env |= {"BATCHGW_CONFIG_FILE": str(config_file), "BATCHGW_METRICS__WORKER_PORT": str(metrics_port)}
    result = gateway.cli(command, check=False)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and "listening" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert nobody_listens(gateway.port) and nobody_listens(metrics_port)
    assert not (tmp_path / "gw.db").exists(), "stopped before touching the database"
    return result.stderr.strip()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_an_unset_key_variable_stops_the_process(tmp_path: Path, command: str) -> None:
    path = provider_file(tmp_path, GROQ, GEMINI)
    assert start_refused(tmp_path, command, path) == (
        f"config error in {path}: [providers.groq] api_key_env names GROQ_TEST_KEY, which is not set in the environment"
    )


def test_a_provider_without_models_stops_serve(tmp_path: Path) -> None:
    path = provider_file(tmp_path, GEMINI.replace('models = ["gemini-2.5-flash"]\n', ""))
    assert start_refused(tmp_path, "serve", path) == (
        f"config error in {path}: [providers.gem] serves no models: 'models' needs at least one entry"
    )


def test_a_model_mapped_to_nothing_stops_the_worker(tmp_path: Path) -> None:
    path = provider_file(tmp_path, GEMINI.replace('["gemini-2.5-flash"]', '{ "gemini-2.5-flash" = "" }'))
    assert start_refused(tmp_path, "worker", path) == (
        f"config error in {path}: [providers.gem] models maps 'gemini-2.5-flash' to an empty provider model id"
    )


def test_an_unknown_adapter_option_stops_serve(tmp_path: Path) -> None:
    path = provider_file(tmp_path, GEMINI.replace("inline_max_bytes", "inline_max_byte"))
    stderr = start_refused(tmp_path, "serve", path)
    assert stderr.startswith(
        f"config error in {path}: [providers.gem.options] unknown option 'inline_max_byte' "
        "(did you mean 'inline_max_bytes'?); options of gemini: "
    )


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_correct_configuration_logs_each_provider_and_policy(tmp_path: Path, command: str) -> None:
    path = provider_file(tmp_path, GROQ.replace("https://", "https://user:pa55word@"), GEMINI)
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", free_port())
    gateway.extra_env |= {"BATCHGW_CONFIG_FILE": str(path), "GROQ_TEST_KEY": SECRET}
    gateway.start(command)
    try:
        deadline = time.monotonic() + 30
        while not re.search(r"gateway.jobs.worker: worker \S+ started", gateway.log()) and time.monotonic() < deadline:
            assert gateway.process is not None and gateway.process.poll() is None, gateway.log()
            time.sleep(0.1)
        log = gateway.log()
    finally:
        gateway.stop()
    lines = [line.split("gateway.config: ", 1)[1] for line in log.splitlines() if "gateway.config: " in line]
    assert lines == [
        "provider groq: kind openai, host api.groq.com, key from GROQ_TEST_KEY, "
        "models llama-3.3-70b=llama-3.3-70b-versatile, limits max_requests_per_batch=50000 "
        "max_bytes_per_batch=209715200 max_batches_in_flight=100 max_concurrency=16",
        "provider gem: kind gemini, inline_max_bytes 4096, host 127.0.0.1:9, no key, models gemini-2.5-flash, limits "
        "max_requests_per_batch=50000 max_bytes_per_batch=209715200 max_batches_in_flight=100 max_concurrency=16",
        *(f"routing policy {name}: {origin(name)}" for name in default_registry().names()),
    ]
    assert "routing policy cheapest: built-in, the default" in lines
    assert SECRET not in log and "pa55word" not in log


def test_a_batch_minimum_above_the_maximum_is_refused() -> None:
    with pytest.raises(ValueError, match=r"min_requests_per_batch \(200\) is above max_requests_per_batch \(100\)"):
        config(limits={"min_requests_per_batch": 200, "max_requests_per_batch": 100})


def test_an_openrouter_provider_takes_openrouters_caps_unless_it_sets_fewer() -> None:
    openrouter = {"kind": "openrouter", "base_url": "https://openrouter.ai/api/v1"}
    limits = config(**openrouter).limits
    assert (limits.max_requests_per_batch, limits.max_bytes_per_batch) == (5_000, 200_000_000)
    assert config(**openrouter, limits={"max_requests_per_batch": 1_000}).limits.max_requests_per_batch == 1_000
    assert config(**openrouter, limits={"max_requests_per_batch": 1_000}).limits.max_bytes_per_batch == 200_000_000
    assert config().limits.max_requests_per_batch == 50_000  # other kinds keep the general default
    too_many = config(**openrouter, limits={"max_requests_per_batch": 6_000})
    assert too_many.problems(KINDS) == [
        (
            ("limits", "max_requests_per_batch"),
            "max_requests_per_batch 6000 is more than one openrouter batch takes (5000)",
        )
    ]


@pytest.mark.parametrize(
    ("dialect", "caps"), [("groq", (50_000, 100_000_000)), ("together", (50_000, 100_000_000)), ("azure", None)]
)
def test_a_dialect_takes_its_providers_caps(dialect: str, caps: tuple[int, int] | None) -> None:
    provider = config(options={"dialect": dialect})
    limits = (provider.limits.max_requests_per_batch, provider.limits.max_bytes_per_batch)
    assert limits == (caps or (50_000, 200 * 1024**2))  # azure keeps the general defaults
    too_big = config(options={"dialect": dialect}, limits={"max_bytes_per_batch": 150_000_000})
    expected = [
        (
            ("limits", "max_bytes_per_batch"),
            f"max_bytes_per_batch 150000000 is more than one openai ({dialect}) batch takes (100000000)",
        )
    ]
    assert too_big.problems(KINDS) == (expected if caps else [])  # fmt: skip
