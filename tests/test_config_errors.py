"""The pieces of a configuration error line: table names, where a value was set, variables that are not settings."""

from __future__ import annotations

import pytest

from gateway.config_errors import ConfigError, ConfigProblem, ConfigSources, did_you_mean, locate, table_label
from gateway.settings import Settings


def test_table_labels_quote_what_toml_would_quote() -> None:
    assert table_label(("providers", "groq-eu", "limits")) == "[providers.groq-eu.limits]"
    assert table_label(("catalog", "overrides", "groq/llama")) == '[catalog.overrides."groq/llama"]'


def test_one_line_names_each_origin_once_in_order() -> None:
    error = ConfigError(
        [
            ConfigProblem("gw.toml", ("limits",), "unknown key 'a'"),
            ConfigProblem("gw.toml", (), "unknown top-level key 'b'"),
            ConfigProblem("environment variable BATCHGW_X", (), "not a setting\nat all"),
        ]
    )
    assert str(error) == (
        "config error in gw.toml: [limits] unknown key 'a'; unknown top-level key 'b'; "
        "in environment variable BATCHGW_X: not a setting at all"
    )


def test_suggestions_take_close_spellings_and_name_parts() -> None:
    assert did_you_mean("model", ["models", "kind"]) == " (did you mean 'models'?)"
    assert did_you_mean("port", ["worker_port"]) == " (did you mean 'worker_port'?)"
    assert did_you_mean("zz", ["models"]) == ""


def test_locations_split_into_table_key_and_rest() -> None:
    assert locate(Settings, ("providers", "groq", "limits", "x"))[:3] == (("providers", "groq", "limits"), "x", ())
    assert locate(Settings, ("providers", "groq"))[:3] == (("providers",), "groq", ())
    assert locate(Settings, ("billing", "default_thresholds", 1))[:3] == (("billing",), "default_thresholds", (1,))
    assert locate(Settings, ("prot",))[:3] == ((), "prot", ())


def test_a_value_is_attributed_to_the_variable_before_the_file() -> None:
    sources = ConfigSources(
        file="gw.toml",
        data={"providers": {"groq": {"kind": "openai"}}},
        env={"BATCHGW_PROVIDERS__GROQ__KIND": "openai", "BATCHGW_PROVIDERS__NEW__KIND": "openai"},
    )
    assert sources.origin(("providers", "groq", "kind")) == "environment variable BATCHGW_PROVIDERS__GROQ__KIND"
    assert sources.origin(("providers", "groq", "models")) == "gw.toml", "unset: the table that lacks it"
    assert sources.origin(("providers", "new", "base_url")) == "environment variable BATCHGW_PROVIDERS__NEW__KIND"


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        ("BATCHGW_API_SERVICE_HOST", "10.0.0.1", False),
        ("BATCHGW_API_SERVICE_PORT_HTTP", "8080", False),
        ("BATCHGW_API_PORT", "tcp://10.0.0.1:8080", False),
        ("BATCHGW_API_PORT_8080_TCP_PROTO", "tcp", False),
        ("BATCHGW_API_PORT", "8080", True),
        ("BATCHGW_API_SERVICE_PORT", "http", True),
        ("BATCHGW_LOGLEVEL", "DEBUG", True),
        ("BATCHGW_CONFIG_FILE", "gw.toml", False),
        ("BATCHGW_TEST_DATABASE_URL", "postgresql://x", False),
    ],
)
def test_only_variables_nobody_reads_are_refused(name: str, value: str, refused: bool) -> None:
    assert bool(ConfigSources(env={name: value}).unknown_variables(Settings)) is refused
