"""Reading the settings: a named file must exist, unknown keys and stray BATCHGW_ variables stop the start.

The in-process tests call :meth:`Settings.load` on real files and a real environment; the
subprocess tests run ``python -m gateway.cli serve`` / ``worker`` and check that each mistake stops
the start with one line on stderr, exit code 2, no traceback, and nothing listening or migrated.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.config_errors import ConfigError
from gateway.context import check_configuration
from gateway.settings import Settings
from tests.conftest import GatewayProcess, free_port

CONFIG = Path(__file__).resolve().parents[1] / "gateway" / "config"

PROVIDER = """
[providers.groq]
kind = "openai"
base_url = "https://api.groq.com/openai/v1"
models = { "llama-3.3-70b" = "llama-3.3-70b-versatile" }
"""


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The test process's environment without any BATCHGW_ variable of the caller."""
    for name in [n for n in os.environ if n.upper().startswith("BATCHGW_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def load(env: pytest.MonkeyPatch, tmp_path: Path, text: str | None, **variables: str) -> Settings:
    if text is not None:
        path = tmp_path / "gateway.toml"
        path.write_text(text, encoding="utf-8")
        env.setenv("BATCHGW_CONFIG_FILE", str(path))
    for name, value in variables.items():
        env.setenv(name, value)
    return Settings.load()


def refused(env: pytest.MonkeyPatch, tmp_path: Path, text: str | None, **variables: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(env, tmp_path, text, **variables)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- in process -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prot = 8080\n", "unknown top-level key 'prot' (did you mean 'port'?)"),
        ("[limits]\nmax_upload = 1\n", "[limits] unknown key 'max_upload' (did you mean 'max_upload_bytes'?)"),
        ("[worker]\nlease = 3\n", "[worker] unknown key 'lease' (did you mean 'lease_s'?)"),
        ("[routing]\npolicy = 'cheapest'\n", "[routing] unknown key 'policy' (did you mean 'default_policy'?)"),
        ("[billing]\nwebhook = 'http://x'\n", "[billing] unknown key 'webhook' (did you mean 'webhook_url'?)"),
        ("[catalog]\npath = 'x.toml'\n", "[catalog] unknown key 'path'"),
        ("[storage]\nendpoint = 'http://s3'\n", "[storage] unknown key 'endpoint' (did you mean 'endpoint_url'?)"),
        ("[metrics]\nport = 9100\n", "[metrics] unknown key 'port' (did you mean 'worker_port'?)"),
        (PROVIDER.replace("models =", "model ="), "[providers.groq] unknown key 'model' (did you mean 'models'?)"),
        (
            PROVIDER + "[providers.groq.limits]\nmax_concurency = 4\n",
            "[providers.groq.limits] unknown key 'max_concurency' (did you mean 'max_concurrency'?)",
        ),
    ],
)
def test_an_unknown_key_in_any_table_names_the_file_the_table_and_the_key(
    env: pytest.MonkeyPatch, tmp_path: Path, text: str, expected: str
) -> None:
    message = refused(env, tmp_path, text)
    assert message == f"config error in {tmp_path / 'gateway.toml'}: {expected}"


def test_every_mistake_of_a_file_is_listed_on_the_one_line(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = "[limits]\nmax_upload = 1\nmax_line_bytes = 'big'\n" + PROVIDER.replace("kind =", "knd =")
    message = refused(env, tmp_path, text)
    assert "[limits] unknown key 'max_upload'" in message
    assert "[limits] key 'max_line_bytes': Input should be a valid integer" in message
    assert "[providers.groq] unknown key 'knd' (did you mean 'kind'?)" in message
    assert "[providers.groq] missing key 'kind'" in message
    assert message.count("config error in") == 1


@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_webhook_url_means_no_webhook(env: pytest.MonkeyPatch, tmp_path: Path, blank: str) -> None:
    assert load(env, tmp_path, f"[billing]\nwebhook_url = '{blank}'\n").billing.webhook_url is None
    assert load(env, tmp_path, None, BATCHGW_BILLING__WEBHOOK_URL=blank).billing.webhook_url is None
    configured = load(env, tmp_path, None, BATCHGW_BILLING__WEBHOOK_URL="http://127.0.0.1:9/hook").billing.webhook_url
    assert configured is not None and configured.get_secret_value() == "http://127.0.0.1:9/hook"


def test_a_bad_value_is_never_echoed(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = refused(env, tmp_path, "port = 'sk-secret-value'\n")
    assert "top-level key 'port'" in message and "sk-secret-value" not in message


def test_a_named_file_that_does_not_exist_is_refused(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("BATCHGW_CONFIG_FILE", "missing.toml")
    with pytest.raises(ConfigError, match=r"^config error in missing.toml: the file does not exist"):
        Settings.load()
    with pytest.raises(ConfigError, match="does not exist"):
        Settings()  # constructing the settings directly refuses it too


def test_a_file_that_is_not_toml_gives_the_line(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    message = refused(env, tmp_path, "[limits]\nmax_upload_bytes = \n")
    assert message.startswith(f"config error in {tmp_path / 'gateway.toml'}: not valid TOML:")
    assert "line 2" in message


def test_unknown_keys_below_a_section_in_the_environment_name_the_variable(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = refused(env, tmp_path, PROVIDER, BATCHGW_PROVIDERS__GROQ__MODEL="x", BATCHGW_WORKER__LEASE="3")
    assert (
        "in environment variable BATCHGW_PROVIDERS__GROQ__MODEL: [providers.groq] unknown key 'model' "
        "(did you mean 'models'?)" in message
    )
    assert "in environment variable BATCHGW_WORKER__LEASE: [worker] unknown key 'lease'" in message


def test_a_variable_that_names_no_setting_is_refused_with_the_likely_one(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = refused(env, tmp_path, None, BATCHGW_ADMINKEY="k", BATCHGW_LIMITS_MAX_UPLOAD_BYTES="1")
    assert message == (
        "config error in environment variable BATCHGW_ADMINKEY: not a setting (did you mean 'BATCHGW_ADMIN_KEY'?); "
        "in environment variable BATCHGW_LIMITS_MAX_UPLOAD_BYTES: not a setting "
        "(did you mean 'BATCHGW_LIMITS__MAX_UPLOAD_BYTES'?)"
    )


def test_variables_read_elsewhere_are_not_settings_mistakes(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load(
        env,
        tmp_path,
        PROVIDER.replace("models =", 'api_key_env = "BATCHGW_GROQ_KEY"\nmodels ='),
        BATCHGW_GROQ_KEY="gsk-1",  # named by api_key_env
        BATCHGW_API_KEY="bgw-1",  # the client commands
        BATCHGW_BASE_URL="http://127.0.0.1:8080/v1",
        BATCHGW_DASHBOARD_GATEWAY_URL="http://127.0.0.1:8080",
        BATCHGW_TEST_ANYTHING="1",  # reserved for the test suite
        # Kubernetes service links of a Service called batchgw-api:
        BATCHGW_API_SERVICE_HOST="10.0.0.7",
        BATCHGW_API_SERVICE_PORT="8080",
        BATCHGW_API_PORT="tcp://10.0.0.7:8080",
        BATCHGW_API_PORT_8080_TCP_ADDR="10.0.0.7",
    )
    assert settings.providers["groq"].api_key_env == "BATCHGW_GROQ_KEY"


def test_a_service_link_shape_with_a_setting_like_value_is_still_a_mistake(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = refused(env, tmp_path, None, BATCHGW_METRICS_WORKER_PORT="9100")
    assert "BATCHGW_METRICS_WORKER_PORT: not a setting (did you mean 'BATCHGW_METRICS__WORKER_PORT'?)" in message


@pytest.mark.parametrize("name", ["simulated.toml", "gateway.example.toml"])
async def test_the_shipped_configurations_pass_every_check(env: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    env.setenv("BATCHGW_CONFIG_FILE", str(CONFIG / name))
    for variable in ("OPENAI_API_KEY", "GROQ_API_KEY"):
        env.setenv(variable, "test-key")
    settings = Settings.load()
    assert settings.providers
    await check_configuration(settings)


async def test_the_example_configuration_needs_its_keys(env: pytest.MonkeyPatch) -> None:
    env.setenv("BATCHGW_CONFIG_FILE", str(CONFIG / "gateway.example.toml"))
    env.setenv("OPENAI_API_KEY", "test-key")
    env.delenv("GROQ_API_KEY", raising=False)
    settings = Settings.load()
    with pytest.raises(ConfigError) as caught:
        await check_configuration(settings)
    assert str(caught.value) == (
        f"config error in {CONFIG / 'gateway.example.toml'}: [providers.groq] api_key_env names GROQ_API_KEY, "
        "which is not set in the environment"
    )
    await check_configuration(settings, require_keys=False)


async def test_start_checks_cover_the_default_policy_and_catalog_overrides(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = (
        '[routing]\ndefault_policy = "cheapst"\n'
        '[catalog.overrides."groq/llama-3.3-70b-versatile"]\nbatch_inptu_per_mtok = 0.1\n' + PROVIDER
    )
    settings = load(env, tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        await check_configuration(settings)
    message = str(caught.value)
    assert "[routing] default_policy: unknown policy 'cheapst'" in message and "did you mean 'cheapest'" in message
    assert (
        "[catalog.overrides] override for 'groq/llama-3.3-70b-versatile' has an unknown field "
        "'batch_inptu_per_mtok' (did you mean 'batch_input_per_mtok'?)" in message
    )


# --- real processes ---------------------------------------------------------------------------------------


def nobody_listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start_refused(tmp_path: Path, command: str, env: dict[str, str]) -> str:
    """Run ``batchgw COMMAND``; assert it stopped at once, as a configuration mistake should; return stderr."""
    gateway = GatewayProcess(tmp_path, f"sqlite:///{tmp_path / 'gw.db'}", free_port(), extra_env=env)
    metrics_port = free_port()
    gateway.extra_env["BATCHGW_METRICS__WORKER_PORT"] = str(metrics_port)
    result = gateway.cli(command, check=False)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr and "listening" not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert nobody_listens(gateway.port) and nobody_listens(metrics_port)
    assert not (tmp_path / "gw.db").exists(), "stopped before touching the database"
    return result.stderr.strip()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_missing_config_file_stops_the_process(tmp_path: Path, command: str) -> None:
    stderr = start_refused(tmp_path, command, {"BATCHGW_CONFIG_FILE": "missing.toml"})
    assert stderr == "config error in missing.toml: the file does not exist (BATCHGW_CONFIG_FILE names it)"


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_misspelt_provider_key_stops_the_process(tmp_path: Path, command: str) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(PROVIDER.replace("models =", "model ="), encoding="utf-8")
    stderr = start_refused(tmp_path, command, {"BATCHGW_CONFIG_FILE": str(path)})
    assert stderr == f"config error in {path}: [providers.groq] unknown key 'model' (did you mean 'models'?)"


def test_a_variable_that_names_no_setting_stops_serve(tmp_path: Path) -> None:
    stderr = start_refused(tmp_path, "serve", {"BATCHGW_WORKER_LEASE_S": "5"})
    assert stderr == (
        "config error in environment variable BATCHGW_WORKER_LEASE_S: not a setting "
        "(did you mean 'BATCHGW_WORKER__LEASE_S'?)"
    )


def test_the_dashboard_reads_the_config_as_strictly_when_it_needs_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("prot = 8080\n", encoding="utf-8")
    stderr = start_refused(tmp_path, "dashboard", {"BATCHGW_CONFIG_FILE": str(path)})
    assert stderr == f"config error in {path}: unknown top-level key 'prot' (did you mean 'port'?)"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"BATCHGW_WORKER__LEASE_S": "0"}, "[worker] key 'lease_s': Input should be greater than or equal to 1"),
        ({"BATCHGW_LIMITS__MAX_UPLOAD_BYTES": "-5"}, "key 'max_upload_bytes': Input should be greater than or equal"),
        ({"BATCHGW_LIMITS__MAX_FILE_LINES": "-3"}, "key 'max_file_lines': Input should be greater than or equal to 1"),
        ({"BATCHGW_LOG_LEVEL": "LOUD"}, "Input should be 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'"),
    ],
)
def test_a_value_the_gateway_cannot_run_with_stops_it_in_one_line(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    # A lease of 0 would have every claimed step lost at once, over and over; a negative limit refuses every upload.
    stderr = start_refused(tmp_path, "serve", env)
    assert stderr.startswith("config error in environment variable ") and expected in stderr, stderr


def test_the_log_level_is_read_in_any_case() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"  # type: ignore[arg-type]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_a_database_server_that_does_not_answer_stops_the_process_in_one_line(tmp_path: Path, command: str) -> None:
    url = f"postgresql://gateway:s3cret-pw@127.0.0.1:{free_port()}/batches"  # nothing listens there
    stderr = start_refused(tmp_path, command, {"BATCHGW_DATABASE_URL": url})
    assert stderr.startswith("error: cannot reach the database at postgresql+psycopg://gateway:***@127.0.0.1:")
    assert "Connection refused" in stderr and "s3cret-pw" not in stderr
