"""Chart values: bad ones rejected at install, secrets kept in Secrets, and the configuration the
chart renders read back by the gateway's own settings."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.providers.registry import ADAPTER_KINDS
from gateway.settings import Settings
from tests.conftest import free_port, loopback
from tests.helm.conftest import CHART, FULLNAME, helm, render, values_file

PG = {"database": {"url": "postgresql://gw:pw@db:5432/gw"}, "persistence": {"accessModes": ["ReadWriteMany"]}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api": {"replicas": "three"}}, "/api/replicas': got string, want integer"),
        ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
        ({"worker": {"replicas": 2, "autoscale": True}}, "additional properties 'autoscale' not allowed"),
        ({"api": {"replicas": 3}}, "/database/url': minLength"),
        ({"worker": {"replicas": 2}}, "/database/url': minLength"),
        ({"worker": {"autoscaling": {"enabled": True}}}, "/database/url': minLength"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"database": {"url": "mysql://gw@db/gw"}}, "/database/url"),
        (
            {"providers": {"openai": {"kind": "openai", "base_url": "https://x", "api_key": "sk-1"}}},
            "/providers/openai",
        ),
        ({"providers": {"openai": {"kind": "opneai", "base_url": "https://x"}}}, "/providers/openai/kind"),
        ({"config": {"database_url": "postgresql://gw@db/gw"}}, "/config"),
        ({"ingress": {"enabled": True, "hosts": [{"host": "a.example.com", "paths": []}]}}, "minItems"),
        ({"storage": {"url": "https://bucket.s3.amazonaws.com"}}, "/storage/url"),
        ({"storage": {"url": "s3://Bad_Bucket/p"}}, "/storage/url"),
        ({"storage": {"bucket": "blobs"}}, "additional properties 'bucket' not allowed"),
        ({"storage": {"url": "s3://blobs/p", "accessKey": "AKIA..."}}, "additional properties 'accessKey' not allowed"),
        ({"storage": {"existingSecret": "s3-keys"}}, "/storage/url': minLength"),
        ({"storage": {"url": "s3://blobs/p", "endpointUrl": "http://minio:9000"}}, "/storage/allowHttp"),
        ({"storage": {"url": "s3://blobs/p", "endpointUrl": "minio:9000"}}, "/storage/endpointUrl"),
        ({"storage": {"scratchSizeLimit": "lots"}}, "/storage/scratchSizeLimit"),
        ({"storage": {"forcePathStyle": "yes"}}, "/storage/forcePathStyle"),
        ({"config": {"storage": {"url": "s3://blobs/p"}}}, "/config"),
    ],
)
def test_schema_rejects_bad_values(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as raised:
        chart.validate_schema(values)
    assert message in str(raised.value)
    with pytest.raises(helm.HelmValuesError):
        render(chart, values)  # an install validates the same way


def test_the_schema_takes_every_provider_kind_the_gateway_has(chart: Any) -> None:
    for kind in ADAPTER_KINDS:
        chart.validate_schema({"providers": {"p": {"kind": kind, "base_url": "https://x"}}})
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    kinds = schema["properties"]["providers"]["additionalProperties"]["properties"]["kind"]["enum"]
    assert sorted(kinds) == sorted(ADAPTER_KINDS)


def test_schema_accepts_scenarios(chart: Any) -> None:
    chart.validate_schema(None)
    chart.validate_schema(values_file("production-values.yaml"))
    chart.validate_schema(values_file("postgres-inline-values.yaml"))
    chart.validate_schema({**PG, "api": {"replicas": 5}})
    chart.validate_schema(values_file("object-storage-values.yaml"))
    chart.validate_schema({"storage": {"url": "s3://blobs", "endpointUrl": "http://minio:9000", "allowHttp": True}})


def test_object_storage_replaces_the_shared_volume(chart: Any) -> None:
    """With PostgreSQL and object storage, no ReadWriteMany volume (and no volume at all) is required."""
    database = {"database": {"url": "postgresql://gw:pw@db:5432/gw"}}
    for persistence in ({"accessModes": ["ReadWriteOnce"]}, {"enabled": False}):
        rendered = render(chart, {**database, "persistence": persistence, "storage": {"url": "s3://blobs/gw"}})
        assert not rendered.kinds("PersistentVolumeClaim")
    with pytest.raises(helm.HelmRenderError, match=r"set storage\.url"):
        render(chart, database)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"database": {"url": "postgresql://gw@db/gw"}}, "persistence.accessModes must include ReadWriteMany"),
        ({**PG, "persistence": {"enabled": False}}, "persistence.enabled=true"),
        (
            {**PG, "worker": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
            "minReplicas must not exceed",
        ),
    ],
)
def test_templates_refuse_what_the_schema_cannot_express(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, values)


def test_secret_values_appear_only_in_secrets(chart: Any) -> None:
    values = values_file("postgres-inline-values.yaml")
    secrets = [values["database"]["url"], values["adminKey"]["value"], *values["providerKeys"]["values"].values()]
    rendered = render(chart, values)
    for obj in rendered.objects:
        text = str(obj)
        if obj["kind"] == "Secret":
            continue
        for secret in secrets:
            assert secret not in text, f"a secret value is in {obj['kind']}/{obj['metadata']['name']}"
            assert base64.b64encode(secret.encode()).decode() not in text
    stored = {
        key: base64.b64decode(value).decode()
        for secret in rendered.kinds("Secret")
        for key, value in secret["data"].items()
    }
    assert stored["database-url"] == values["database"]["url"] and stored["admin-key"] == values["adminKey"]["value"]
    assert stored["OPENAI_API_KEY"] == values["providerKeys"]["values"]["OPENAI_API_KEY"]
    hook_secret = rendered.get("Secret", f"{FULLNAME}-migrate")
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10", "created before the Job"
    api = rendered.get("Deployment", f"{FULLNAME}-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["envFrom"] == [{"secretRef": {"name": f"{FULLNAME}-provider-keys"}}]


def test_admin_key_is_generated_when_none_is_given(chart: Any) -> None:
    first = render(chart).get("Secret", FULLNAME)["data"]["admin-key"]
    assert len(base64.b64decode(first)) == 40
    assert render(chart).get("Secret", FULLNAME)["data"]["admin-key"] != first, "random per fresh install"


def rendered_config(chart: Any, values: dict[str, Any] | None) -> dict[str, str]:
    data: dict[str, str] = render(chart, values).get("ConfigMap", f"{FULLNAME}-config")["data"]
    return data


def load_settings(monkeypatch: pytest.MonkeyPatch, path: Path) -> Settings:
    for name in [n for n in os.environ if n.startswith("BATCHGW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BATCHGW_CONFIG_FILE", str(path))
    return Settings()


def test_rendered_configuration_is_read_by_the_gateway(
    chart: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = values_file("production-values.yaml")
    path = tmp_path / "gateway.toml"
    path.write_text(rendered_config(chart, values)["gateway.toml"])
    settings = load_settings(monkeypatch, path)
    assert set(settings.providers) == {"openai", "anthropic", "deepseek"}
    openai = settings.providers["openai"]
    assert openai.api_key_env == "OPENAI_API_KEY" and openai.models == {
        "gpt-4o-mini": "gpt-4o-mini",
        "gpt-4o": "gpt-4o",
    }
    assert openai.limits.max_bytes_per_batch == 209715200 and openai.limits.max_enqueued_tokens_per_model == 2000000
    assert settings.providers["deepseek"].models == {"deepseek-chat": "deepseek-chat"}
    assert settings.providers["deepseek"].limits.tokens_per_minute == 1000000
    # Whole numbers stay integers in TOML: an adapter option is sent to the provider as given.
    assert settings.providers["anthropic"].options == {"default_max_tokens": 4096}
    assert isinstance(settings.providers["anthropic"].options["default_max_tokens"], int)
    assert settings.limits.max_upload_bytes == 1073741824 and settings.worker.provider_poll_max_s == 60.0
    assert settings.catalog.overrides == {"openai/gpt-4o-mini": {"batch_input_per_mtok": 0.075}}
    assert settings.catalog.file is None


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        (
            values_file("object-storage-values.yaml")["storage"],
            {
                "url": "s3://batch-gateway-blobs/prod",
                "endpoint_url": "https://minio.storage.svc.cluster.local:9000",
                "region": "us-east-1",
                "force_path_style": True,
                "allow_http": False,
            },
        ),
        (
            {"url": "s3://blobs", "endpointUrl": "http://minio:9000", "allowHttp": True, "forcePathStyle": False},
            {
                "url": "s3://blobs",
                "endpoint_url": "http://minio:9000",
                "region": None,
                "force_path_style": False,
                "allow_http": True,
            },
        ),
        (
            {"url": ""},
            {"url": None, "endpoint_url": None, "region": None, "force_path_style": True, "allow_http": False},
        ),
    ],
)
def test_rendered_storage_settings_are_read_by_the_gateway(
    chart: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage: dict[str, Any], expected: dict[str, Any]
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(rendered_config(chart, {"storage": storage})["gateway.toml"])
    settings = load_settings(monkeypatch, path).storage
    assert {name: getattr(settings, name) for name in expected} == expected


def test_catalog_file_and_awkward_keys_survive_rendering(
    chart: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = '[models."gpt-4o-mini"]\nfamily = "openai"\n'
    values = {
        "catalog": {"models": catalog},
        "providers": {
            "local-vllm": {"kind": "openai_sync", "base_url": "http://vllm:8000/v1", "models": {'odd "name" \\ é': "m"}}
        },
    }
    data = rendered_config(chart, values)
    assert data["models.toml"] == catalog
    path = tmp_path / "gateway.toml"
    path.write_text(data["gateway.toml"])
    assert tomllib.loads(data["gateway.toml"])["catalog"]["file"] == "/etc/batch-gateway/models.toml"
    settings = load_settings(monkeypatch, path)
    assert settings.catalog.file == Path("/etc/batch-gateway/models.toml")
    assert settings.providers["local-vllm"].models == {'odd "name" \\ é': "m"}


def probe_script(chart: Any, probe: str) -> str:
    rendered = render(chart, values_file("production-values.yaml"))
    worker = rendered.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]["spec"]["containers"][0]
    command: list[str] = worker[probe]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    return command[2]


def run_probe(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}
    return subprocess.run(
        [sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_worker_readiness_probe_asks_the_database(chart: Any, tmp_path: Path) -> None:
    script = probe_script(chart, "readinessProbe")
    assert run_probe(script, {"BATCHGW_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}"}).returncode == 0
    unreachable = run_probe(script, {"BATCHGW_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert unreachable.returncode != 0


def test_worker_liveness_probe_reaches_the_workers_metrics_server(chart: Any, tmp_path: Path) -> None:
    """The chart's worker environment makes ``batchgw worker`` serve the port and path the probe asks."""
    rendered = render(chart, values_file("production-values.yaml"))
    worker = rendered.get("Deployment", f"{FULLNAME}-worker")["spec"]["template"]["spec"]["containers"][0]
    probe = worker["livenessProbe"]["httpGet"]
    (port,) = [p for p in worker["ports"] if p["name"] == probe["port"]]
    chart_env = {e["name"]: e["value"] for e in worker["env"] if "value" in e}
    assert chart_env["BATCHGW_METRICS__WORKER_PORT"] == str(port["containerPort"])
    assert chart_env["BATCHGW_HOST"] == "0.0.0.0"
    local_port = free_port()  # the same variables, on a port free on this machine and on loopback
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")},
        "BATCHGW_METRICS__WORKER_PORT": str(local_port),
        "BATCHGW_HOST": "127.0.0.1",
        "BATCHGW_DATA_DIR": str(tmp_path),
        "BATCHGW_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "the worker exited"
            try:
                response = loopback.get(f"http://127.0.0.1:{local_port}{probe['path']}", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the worker's metrics server never answered"
                time.sleep(0.2)
        assert response.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_every_value_is_typed_and_described(chart: Any) -> None:
    """Each key of values.yaml has a schema entry with a description (and no entry lacks one)."""
    schema = chart.schema
    assert schema is not None and schema["additionalProperties"] is False

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            target: dict[str, Any] = schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return target
        return node

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        properties = resolve(node).get("properties", {})
        for key, value in values.items():
            assert key in properties, f"{path}{key} is not in values.schema.json"
            entry = resolve(properties[key])
            assert entry.get("description"), f"{path}{key} has no description"
            if isinstance(value, dict) and "properties" in entry:
                walk(value, entry, f"{path}{key}.")

    walk(chart.values, schema, "")
