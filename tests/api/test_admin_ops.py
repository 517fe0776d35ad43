"""Admin actions over HTTP on a live gateway: cancel any team's batch, retry failed requests, download files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, loopback, simulated_provider_env
from tests.engine import chat_requests, reset, set_faults, submit, wait_for

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

ADMIN = {"Authorization": "Bearer test-admin-key"}
PROVIDERS: dict[str, dict[str, Any]] = {
    "fastp": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}},
    "flakyp": {"emulator": "other", "models": {"flaky-mini": "gpt-4o-mini"}},
    "slowp": {"emulator": "slow", "models": {"slow-mini": "gpt-4o-mini"}},
}


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    set_faults(simulator, "other", fail_fraction=0.5)
    set_faults(simulator, "slow", stall=True)
    env = simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)
    yield gateway_factory(env).start()
    reset(simulator, *simulator.names())


@pytest.fixture(scope="module")
def acme(gateway: GatewayProcess) -> openai.OpenAI:
    return gateway.client(gateway.create_key("acme"))


@pytest.fixture(scope="module")
def globex(gateway: GatewayProcess) -> openai.OpenAI:
    return gateway.client(gateway.create_key("globex"))


def admin(gateway: GatewayProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", ADMIN)
    return loopback.request(method, f"{gateway.base_url}/admin{path}", headers=headers, timeout=30, **kwargs)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return dict(error)


def test_admin_actions_need_the_admin_key(gateway: GatewayProcess) -> None:
    wrong = {"Authorization": "Bearer nope"}
    assert_error(admin(gateway, "POST", "/batches/batch_x/cancel", headers=wrong), 401, "invalid_api_key")
    assert_error(admin(gateway, "POST", "/batches/batch_x/retry", headers={}), 401, "missing_api_key")
    assert_error(admin(gateway, "GET", "/files/file-x/content", headers=wrong), 401, "invalid_api_key")


def test_unknown_ids_answer_404(gateway: GatewayProcess) -> None:
    assert "batch_x" in assert_error(admin(gateway, "POST", "/batches/batch_x/cancel"), 404, "not_found")["message"]
    assert_error(admin(gateway, "POST", "/batches/batch_x/retry"), 404, "not_found")
    assert "file-x" in assert_error(admin(gateway, "GET", "/files/file-x/content"), 404, "not_found")["message"]


def test_cancel_any_team_batch_then_409_once_finished(gateway: GatewayProcess, globex: openai.OpenAI) -> None:
    running = submit(globex, chat_requests(3, model="slow-mini", prefix="c"))
    wait_for(globex, running.id, lambda b: b.status == "in_progress")
    response = admin(gateway, "POST", f"/batches/{running.id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelling" and response.json()["id"] == running.id
    again = admin(gateway, "POST", f"/batches/{running.id}/cancel")
    assert again.status_code == 200 and again.json()["status"] in ("cancelling", "cancelled")
    assert wait_for(globex, running.id).status == "cancelled"

    done = wait_for(globex, submit(globex, chat_requests(2, prefix="d")).id)
    assert done.status == "completed"
    error = assert_error(admin(gateway, "POST", f"/batches/{done.id}/cancel"), 409, "batch_not_cancellable")
    assert "completed" in error["message"]


def test_retry_makes_a_new_batch_of_the_failed_lines_only(gateway: GatewayProcess, acme: openai.OpenAI) -> None:
    requests = chat_requests(12, model="flaky-mini", prefix="f")
    original = wait_for(acme, submit(acme, requests).id)
    assert original.request_counts is not None
    failed = original.request_counts.failed
    assert original.status == "completed" and 0 < failed < 12
    error_ids = {
        json.loads(line)["custom_id"] for line in acme.files.content(str(original.error_file_id)).text.splitlines()
    }

    response = admin(gateway, "POST", f"/batches/{original.id}/retry")
    assert response.status_code == 201, response.text
    retry = response.json()
    assert retry["id"] != original.id and retry["retry_of"] == original.id
    assert retry["metadata"]["retry_of"] == original.id and retry["status"] == "validating"
    assert (retry["endpoint"], retry["completion_window"]) == (original.endpoint, original.completion_window)
    # The new batch belongs to the same team: its key sees it, and its input is the original lines verbatim.
    seen = wait_for(acme, retry["id"])
    assert seen.request_counts is not None and seen.request_counts.total == failed
    new_input = acme.files.content(retry["input_file_id"]).text.splitlines()
    by_id = {r["custom_id"]: r for r in requests}
    assert [json.loads(line) for line in new_input] == [by_id[c] for c in sorted(error_ids)]


def test_retry_refuses_a_running_batch_and_one_without_failures(gateway: GatewayProcess, acme: openai.OpenAI) -> None:
    running = submit(acme, chat_requests(2, model="slow-mini", prefix="r"))
    error = assert_error(admin(gateway, "POST", f"/batches/{running.id}/retry"), 409, "batch_not_finished")
    assert "once it has finished" in error["message"]
    acme.batches.cancel(running.id)
    clean = wait_for(acme, submit(acme, chat_requests(3, prefix="ok")).id)
    assert clean.status == "completed" and clean.error_file_id is None
    error = assert_error(admin(gateway, "POST", f"/batches/{clean.id}/retry"), 409, "nothing_to_retry")
    assert "no failed requests" in error["message"]


def test_download_any_team_file_streams_the_same_bytes(
    gateway: GatewayProcess, acme: openai.OpenAI, globex: openai.OpenAI
) -> None:
    done = wait_for(globex, submit(globex, chat_requests(5, prefix="dl")).id)
    assert done.output_file_id
    response = admin(gateway, "GET", f"/files/{done.output_file_id}/content")
    assert response.status_code == 200
    assert response.content == globex.files.content(done.output_file_id).content
    assert response.headers["content-disposition"] == f'attachment; filename="{done.id}_output.jsonl"'
    assert len(response.content.splitlines()) == 5
    # The other team's key still cannot read it: only the admin API crosses teams.
    with pytest.raises(openai.NotFoundError):
        acme.files.content(done.output_file_id)


def test_the_cli_cancels_and_retries_on_the_database(gateway: GatewayProcess, acme: openai.OpenAI) -> None:
    running = submit(acme, chat_requests(2, model="slow-mini", prefix="cli"))
    refused = gateway.cli("batches", "retry", running.id, check=False)
    assert refused.returncode == 1 and "once it has finished" in refused.stderr, refused
    cancelled = gateway.cli("batches", "cancel", running.id)
    assert cancelled.stdout.split() == [running.id, "cancelling"], cancelled
    assert wait_for(acme, running.id).status == "cancelled"
    unknown = gateway.cli("batches", "cancel", "batch_x", check=False)
    assert unknown.returncode == 1 and "No such batch: 'batch_x'" in unknown.stderr, unknown

    flaky = wait_for(acme, submit(acme, chat_requests(12, model="flaky-mini", prefix="clif")).id)
    assert flaky.request_counts is not None and flaky.request_counts.failed > 0
    retried = gateway.cli("batches", "retry", flaky.id)
    new_id, status = retried.stdout.split()[:2]
    assert status == "validating" and retried.stdout.strip().endswith(f"(retry of {flaky.id})"), retried
    assert wait_for(acme, new_id).request_counts.total == flaky.request_counts.failed  # type: ignore[union-attr]
