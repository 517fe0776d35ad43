"""A provider that refuses the gateway's key (401): its circuit opens at once with the reason, an alert is
raised, and the work goes to a healthy provider; with nowhere else to go it waits and says why. Nothing the
client or the operator sees holds the key."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import ENGINE_ENV, GatewayProcess, loopback
from tests.engine import chat_requests, collect, submit, wait_for
from tests.test_client_cli import batchgw

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

RIGHT_KEY = "sk-sim-Right8Hs3Jd6Q7vLm2Xc9Tb4Nw"
WRONG_KEY = "sk-sim-Wrong5gYk1Pq7Mv3Bt9Cx2Lf4"
KEY_ENV = "BATCHGW_TEST_LOCKED_KEY"
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="locked", models=[MODEL], api_key=RIGHT_KEY),
        ProviderSpec(name="open", models=[MODEL]),
    ]
    with SimulatorCluster(specs, control_port=0) as running:
        yield running


def gateway_with(
    factory: Any, cluster: SimulatorCluster, folder: Path, providers: dict[str, dict[str, str]]
) -> GatewayProcess:
    lines = []
    for name, spec in providers.items():
        lines += [
            f"[providers.{name}]",
            f'kind = "{spec["kind"]}"',
            f"base_url = {json.dumps(cluster.base_url(spec['emulator']))}",
            *([f'api_key_env = "{KEY_ENV}"'] if spec.get("keyed") else []),
            f'models = {{ "{MODEL}" = "{MODEL}" }}',
            "",
        ]
    (folder / "providers.toml").write_text("\n".join(lines), encoding="utf-8")
    env = {"BATCHGW_CONFIG_FILE": str(folder / "providers.toml"), KEY_ENV: WRONG_KEY, **ENGINE_ENV}
    return factory(env).start()  # type: ignore[no-any-return]


def admin(gateway: GatewayProcess, path: str) -> Any:
    response = loopback.get(f"{gateway.base_url}/admin{path}", headers={"Authorization": "Bearer test-admin-key"})
    assert response.status_code == 200, response.text
    return response.json()


def assert_no_key(text: str) -> None:
    assert WRONG_KEY not in text and WRONG_KEY[-8:] not in text and WRONG_KEY[7:15] not in text, text


@pytest.mark.parametrize("kind", ["openai", "openai_sync"])
def test_a_refused_key_opens_the_circuit_alerts_and_moves_the_work(
    kind: str, gateway_factory: Any, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = gateway_with(
        gateway_factory,
        cluster,
        tmp_path,
        {"locked": {"kind": kind, "emulator": "locked", "keyed": "yes"}, "spare": {"kind": kind, "emulator": "open"}},
    )
    client = gateway.client(gateway.create_key("acme"))
    # The catalog prices neither: both cost 0, so the policy keeps the configured order (locked first).
    requests = chat_requests(6)
    batch = wait_for(client, submit(client, requests).id, timeout=60)
    outcome = collect(client, batch)
    assert batch.status == "completed" and len(outcome.output) == 6 and not outcome.errors
    assert {line["provider"] for line in outcome.output.values()} == {"spare"}

    providers = {p["name"]: p for p in admin(gateway, "/providers")["data"]}
    health = providers["locked"]["health"]
    assert health["circuit"] == "open"
    assert "authentication failed" in health["last_error"]
    alerts = [a for a in admin(gateway, "/alerts")["data"] if a["kind"] == "provider_auth_failed"]
    assert len(alerts) == 1 and "locked" in alerts[0]["message"]
    metrics = loopback.get(f"{gateway.base_url}/metrics").text
    assert 'batchgw_alerts_fired_total{kind="provider_auth_failed"} 1.0' in metrics
    for text in (json.dumps(providers), json.dumps(alerts), batch.model_dump_json(), gateway.log()):
        assert_no_key(text)


def test_with_only_the_refusing_provider_the_batch_waits_and_says_why(
    gateway_factory: Any, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    gateway = gateway_with(
        gateway_factory, cluster, tmp_path, {"locked": {"kind": "openai", "emulator": "locked", "keyed": "yes"}}
    )
    key = gateway.create_key("acme")
    client = gateway.client(key)
    batch = submit(client, chat_requests(3))
    deadline = time.monotonic() + 30
    while "refused" not in (client.batches.retrieve(batch.id).metadata or {}).get("gateway_waiting", ""):
        assert time.monotonic() < deadline, json.dumps(admin(gateway, f"/batches/{batch.id}")["shards"])
        time.sleep(0.2)
    waiting = client.batches.retrieve(batch.id)
    assert waiting.status == "in_progress"
    assert "authentication failed" in (waiting.metadata or {})["gateway_waiting"]
    assert (waiting.metadata or {})["gateway_providers"] == "locked"  # named from routing on, before any answer
    assert_no_key(waiting.model_dump_json())
    jobs = admin(gateway, "/batches")["data"]
    assert jobs[0]["waiting"]["code"] == "auth_failed"
    shown = batchgw(gateway, key, "status", batch.id)
    assert shown.returncode == 0, shown.stderr
    assert "waiting" in shown.stdout and "refused the gateway's key" in " ".join(shown.stdout.split())
