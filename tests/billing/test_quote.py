"""Estimates before spending: ``batchgw estimate FILE`` (on the local configuration or a running gateway),
``POST /admin/estimate`` and ``POST /v1/estimates`` price a file on every offer at its synchronous and its own
rate, show which one the policy picks, the token range and its basis, turnaround and fan-out time, and the
advisor's recommendation for the deadline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.billing.estimate import cost_usd, estimate_file
from gateway.catalog.loader import load_catalog
from tests.conftest import GatewayProcess, loopback

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

PROVIDERS = """
[providers.groq]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = { "llama-3.3-70b" = "llama-3.3-70b-versatile" }

[providers.together]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = { "llama-3.3-70b" = "meta-llama/Llama-3.3-70B-Instruct-Turbo" }
"""


def shipped_rates(provider: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(sync, batch) USD per MTok of the shipped catalog's llama-3.3-70b offer of ``provider``."""
    [entry] = [o for o in load_catalog().data.models["llama-3.3-70b"].offers if o.provider == provider]
    batch = (entry.batch_input_per_mtok, entry.batch_output_per_mtok)
    sync = (entry.input_per_mtok, entry.output_per_mtok)
    return sync, batch if batch[0] is not None else sync  # type: ignore[return-value]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("estimate")
    (folder / "providers.toml").write_text(PROVIDERS, encoding="utf-8")
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "llama-3.3-70b",
                "messages": [{"role": "user", "content": "label " * i}],
                "max_tokens": 20,
            },
        }
        for i in range(200)
    ]
    (folder / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return folder


def expected(folder: Path, provider: str) -> tuple[float, float]:
    [entry] = estimate_file(folder / "in.jsonl", "/v1/chat/completions").values()
    sync, batch = shipped_rates(provider)
    return cost_usd(entry.input_tokens, entry.output_tokens, sync), cost_usd(
        entry.input_tokens, entry.output_tokens, batch
    )


def test_the_command_prints_every_offer_and_the_policy_choice(workspace: Path) -> None:
    env = {"BATCHGW_CONFIG_FILE": str(workspace / "providers.toml"), "BATCHGW_DATA_DIR": str(workspace / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "estimate", str(workspace / "in.jsonl")],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[2].strip(): line for line in result.stdout.splitlines() if line.count("│") > 8}
    groq_sync, groq_batch = expected(workspace, "groq")
    _, together_batch = expected(workspace, "together")
    assert groq_batch < together_batch, "the shipped catalog should make Groq's batch rate the cheaper"
    assert f"{groq_sync:.4f}" in rows["groq"] and f"{groq_batch:.4f}" in rows["groq"] and "chosen" in rows["groq"]
    assert f"{groq_sync - groq_batch:.4f}" in rows["groq"]
    assert f"{together_batch:.4f}" in rows["together"] and "#2" in rows["together"]
    assert f"Estimated total on the policy's choices: ${groq_batch:.4f}" in result.stdout


def test_the_command_explains_an_unknown_model(workspace: Path) -> None:
    env = {"BATCHGW_CONFIG_FILE": str(workspace / "providers.toml"), "BATCHGW_DATA_DIR": str(workspace / "data")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "estimate", str(workspace / "in.jsonl"), "--model", "llama-3.3-7b"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "cannot route: unknown model 'llama-3.3-7b'; did you mean 'llama-3.3-70b'" in result.stdout
    assert "Traceback" not in result.stderr
    # Nothing could be priced: no empty table and no total of $0 before the reason.
    assert "estimated cost by provider" not in result.stdout and "Estimated total" not in result.stdout


def test_the_admin_endpoint_gives_the_same_figures(workspace: Path, gateway_factory: Any) -> None:
    gateway: GatewayProcess = gateway_factory({"BATCHGW_CONFIG_FILE": str(workspace / "providers.toml")}).start()
    client = gateway.client(gateway.create_key("acme"))
    upload = client.files.create(file=("in.jsonl", (workspace / "in.jsonl").read_bytes()), purpose="batch")
    headers = {"Authorization": "Bearer test-admin-key"}
    response = loopback.post(f"{gateway.base_url}/admin/estimate", json={"file_id": upload.id}, headers=headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    rows = {row["provider"]: row for row in answer["data"]}
    groq_sync, groq_batch = expected(workspace, "groq")
    assert rows["groq"]["rank"] == 1 and rows["together"]["rank"] == 2
    assert rows["groq"]["cost_usd"] == pytest.approx(groq_batch) and rows["groq"]["sync_cost_usd"] == pytest.approx(
        groq_sync
    )
    assert answer["chosen_cost_usd"] == pytest.approx(groq_batch, abs=1e-6)

    bad = loopback.post(
        f"{gateway.base_url}/admin/estimate", json={"file_id": upload.id, "policy": "nope"}, headers=headers
    )
    assert bad.status_code == 400 and "unknown policy 'nope'" in bad.json()["error"]["message"].lower()
    missing = loopback.post(f"{gateway.base_url}/admin/estimate", json={"file_id": "file-none"}, headers=headers)
    assert missing.status_code == 404


def test_the_estimate_shows_ranges_turnaround_fan_out_and_advice(workspace: Path, gateway_factory: Any) -> None:
    gateway: GatewayProcess = gateway_factory({"BATCHGW_CONFIG_FILE": str(workspace / "providers.toml")}).start()
    client = gateway.client(gateway.create_key("acme"))
    upload = client.files.create(file=("in.jsonl", (workspace / "in.jsonl").read_bytes()), purpose="batch")
    headers = {"Authorization": "Bearer test-admin-key"}

    def estimate(**body: str) -> dict[str, Any]:
        response = loopback.post(
            f"{gateway.base_url}/admin/estimate", json={"file_id": upload.id, **body}, headers=headers, timeout=60
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    answer = estimate()
    groq = next(row for row in answer["data"] if row["provider"] == "groq")
    assert groq["basis"] == "no history: built-in default (256 output tokens)"
    assert groq["output_tokens"] == 200 * 20  # max_tokens 20 caps the default
    assert groq["turnaround_p90_s"] == 24 * 3600 and "documented 24h window" in groq["turnaround_basis"]
    # 200 requests and no rate limit configured: an assumed 60 a minute.
    assert groq["fanout_s"] == pytest.approx(200.0) and "assumed 60 requests/min" in groq["fanout_basis"]
    [advice] = answer["advice"]
    # The batch saves far less than the $0.50 minimum: a small job, fanned out in minutes.
    assert advice["recommendation"] == "fan-out" and advice["small_job"] and advice["meets_deadline"]
    assert advice["reason"].startswith("batching saves only $")

    [urgent] = estimate(deadline="1h")["advice"]
    assert urgent["deadline_s"] == 3600 and urgent["recommendation"] == "fan-out"
    assert "fan-out on" in urgent["reason"] and "misses the 60m deadline" in urgent["reason"]

    for body, param in (({"deadline": "soon"}, "deadline"), ({"endpoint": "/v1/other"}, "endpoint")):
        bad = loopback.post(
            f"{gateway.base_url}/admin/estimate", json={"file_id": upload.id, **body}, headers=headers, timeout=30
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    unknown_team = loopback.post(
        f"{gateway.base_url}/admin/estimate", json={"file_id": upload.id, "team": "nobody"}, headers=headers
    )
    assert unknown_team.status_code == 404 and unknown_team.json()["error"]["param"] == "team"


def test_clients_estimate_their_own_files_from_their_team_history(workspace: Path, gateway_factory: Any) -> None:
    gateway: GatewayProcess = gateway_factory({"BATCHGW_CONFIG_FILE": str(workspace / "providers.toml")}).start()
    key, other_key = gateway.create_key("acme"), gateway.create_key("globex")
    upload = gateway.client(key).files.create(file=("in.jsonl", (workspace / "in.jsonl").read_bytes()), purpose="batch")
    url = f"{gateway.base_url}/v1/estimates"

    def post(body: Any, token: str | None = key) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return loopback.post(url, content=json.dumps(body), headers=headers, timeout=60)

    answer = post({"file_id": upload.id, "deadline": "2h"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "estimate" and answer.json()["advice"][0]["deadline_s"] == 7200
    admin_view = loopback.post(
        f"{gateway.base_url}/admin/estimate",
        json={"file_id": upload.id, "deadline": "2h"},
        headers={"Authorization": "Bearer test-admin-key"},
    ).json()
    assert answer.json()["data"] == admin_view["data"]
    assert post({"file_id": upload.id}, token=other_key).status_code == 404  # another team's file is not found
    assert post({"file_id": upload.id}, token=None).status_code == 401
    for body, param in (({"file_id": upload.id, "team": "acme"}, "team"), ({"model": "x"}, "file_id")):
        bad = post(body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    assert post("not an object").json()["error"]["code"] == "invalid_json"


def test_the_command_estimates_against_a_running_gateway(workspace: Path, gateway_factory: Any) -> None:
    gateway: GatewayProcess = gateway_factory({"BATCHGW_CONFIG_FILE": str(workspace / "providers.toml")}).start()
    key = gateway.create_key("acme")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}
    command = [sys.executable, "-m", "gateway.cli", "estimate", str(workspace / "in.jsonl"), "--deadline", "1h"]
    result = subprocess.run(
        [*command, "--base-url", f"{gateway.base_url}/v1", "--api-key", key],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    _, groq_batch = expected(workspace, "groq")
    assert f"Estimated total on the policy's choices: ${groq_batch:.4f}" in result.stdout
    assert "estimate basis, llama-3.3-70b: no history: built-in default (256 output tokens)" in result.stdout
    assert "advice for llama-3.3-70b: FAN-OUT" in result.stdout and "misses the 60m deadline" in result.stdout
    files = gateway.client(key).files.list()
    assert files.data == []  # the upload the estimate needed is gone again
    refused = subprocess.run(
        [*command, "--base-url", f"{gateway.base_url}/v1", "--api-key", "bgw-wrong"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "error:" in refused.stderr
