"""``batchgw submit``, ``ls``, ``status``, ``cancel`` and ``download``, run as real commands against a live gateway
on the emulators."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, free_port, simulated_provider_env
from tests.engine import chat_requests, expected_body, reset, set_faults, wait_for

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

PROVIDERS: dict[str, dict[str, Any]] = {
    "main": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}},
    "slowp": {"emulator": "slow", "models": {"slow-model": "gpt-4o-mini"}},
}


@pytest.fixture(scope="module")
def gateway(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    env = simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)
    return gateway_factory(env).start()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def fresh_emulators(simulator: SimulatorCluster) -> Iterator[None]:
    reset(simulator, *simulator.names())
    yield
    reset(simulator, *simulator.names())


def cli_env(gateway: GatewayProcess, key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}
    env.update({"BATCHGW_BASE_URL": f"{gateway.base_url}/v1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    if key:
        env["BATCHGW_API_KEY"] = key
    return env


def batchgw(gateway: GatewayProcess, key: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one ``batchgw`` command to its end, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=cli_env(gateway, key),
        capture_output=True,
        text=True,
        timeout=180,
    )


def write_requests(path: Path, requests: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    return path


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def batch_id_in(output: str) -> str:
    return next(word for word in output.split() if word.startswith("batch_"))


def test_submit_wait_rewrites_the_model_and_writes_results_in_input_order(
    gateway: GatewayProcess, team_key: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    requests = chat_requests(40, model="not-a-model")[::-1]  # descending ids: order must come from the file
    source = write_requests(tmp_path / "in.jsonl", requests)
    out = tmp_path / "results.jsonl"
    run = batchgw(
        gateway, team_key, "submit", str(source), "--model", "gpt-4o-mini",
        "--policy", "cheapest", "--max-cost", "5.50", "--wait", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "completed: 40 done, 0 failed of 40" in run.stdout and "wrote 40 result lines" in run.stdout
    # Not a terminal: plain progress lines, no bar drawn with control characters.
    assert "completed: 40/40 requests done, providers main, cost $" in run.stdout
    assert "\x1b" not in run.stdout and "━" not in run.stdout
    lines = read_lines(out)
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in requests]
    for request, line in zip(requests, lines, strict=True):
        sent = {**request, "body": {**request["body"], "model": "gpt-4o-mini"}}
        body = line["response"]["body"]
        assert body == expected_body(sent, "gpt-4o-mini", body["created"])
    batch = client.batches.retrieve(batch_id_in(run.stdout))
    assert batch.metadata is not None
    assert (batch.metadata["policy"], batch.metadata["max_cost_usd"]) == ("cheapest", "5.50")


def test_failed_requests_are_merged_with_the_rest(
    gateway: GatewayProcess, team_key: str, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    set_faults(simulator, "fast", fail_fraction=0.3)  # the same custom_ids fail on every attempt
    requests = chat_requests(30, prefix="mix")
    out = tmp_path / "results.jsonl"
    run = batchgw(gateway, team_key, "submit", str(write_requests(tmp_path / "in.jsonl", requests)), "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = read_lines(out)
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in requests]
    failed = [line for line in lines if line["error"] is not None or line["response"]["status_code"] != 200]
    assert 0 < len(failed) < len(lines)
    assert f"{len(lines) - len(failed)} done, {len(failed)} failed of 30" in run.stdout


def test_ls_and_status_show_batches_in_tables(
    gateway: GatewayProcess, team_key: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    source = write_requests(tmp_path / "in.jsonl", chat_requests(3, prefix="tbl"))
    created = batchgw(gateway, team_key, "submit", str(source), "--policy", "cheapest")
    assert created.returncode == 0, created.stderr
    batch_id = batch_id_in(created.stdout)
    assert f"batchgw status {batch_id} --wait" in created.stdout
    wait_for(client, batch_id)
    listing = batchgw(gateway, team_key, "ls")
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if batch_id in line)
    assert "completed" in row and "3/3" in row
    shown = batchgw(gateway, team_key, "status", batch_id)
    assert shown.returncode == 0, shown.stderr
    assert "3 done, 0 failed of 3" in shown.stdout and "completed" in shown.stdout
    assert "policy" in shown.stdout and "cheapest" in shown.stdout


def test_ctrl_c_while_waiting_leaves_the_batch_running(
    gateway: GatewayProcess, team_key: str, client: openai.OpenAI, tmp_path: Path
) -> None:
    requests = chat_requests(10, model="slow-model", prefix="slow")
    source = write_requests(tmp_path / "in.jsonl", requests)
    out = tmp_path / "results.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "submit", str(source), "--wait", "--out", str(out)],
        env=cli_env(gateway, team_key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    seen = ""
    while "waiting for" not in seen:
        line = process.stdout.readline()
        assert line, f"submit ended early: {seen}{process.communicate()}"
        seen += line
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    batch_id = batch_id_in(seen)
    assert process.returncode == 130, stdout + stderr
    assert f"batch {batch_id} is still running" in stdout
    assert f"resume with: batchgw status {batch_id} --wait --out {out}" in stdout
    assert "Traceback" not in stderr and not out.exists()
    assert client.batches.retrieve(batch_id).status not in {"cancelling", "cancelled"}

    resumed = batchgw(gateway, team_key, "status", batch_id, "--wait", "--out", str(out))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert client.batches.retrieve(batch_id).status == "completed"
    assert [line["custom_id"] for line in read_lines(out)] == [r["custom_id"] for r in requests]


def test_wait_without_out_says_where_the_results_are_and_download_writes_them(
    gateway: GatewayProcess, team_key: str, tmp_path: Path
) -> None:
    requests = chat_requests(6, prefix="dl")[::-1]
    run = batchgw(gateway, team_key, "submit", str(write_requests(tmp_path / "in.jsonl", requests)), "--wait")
    assert run.returncode == 0, run.stdout + run.stderr
    batch_id = batch_id_in(run.stdout)
    assert "results are on the gateway (output file file-" in run.stdout
    assert f"write them with: batchgw download {batch_id} --out FILE" in run.stdout

    out = tmp_path / "results.jsonl"
    fetched = batchgw(gateway, team_key, "download", batch_id, "--out", str(out))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert f"wrote 6 result lines of batch {batch_id} (completed) to {out}" in " ".join(fetched.stdout.split())
    assert [line["custom_id"] for line in read_lines(out)] == [r["custom_id"] for r in requests]


def test_cancel_stops_a_running_batch_and_its_finished_requests_can_be_downloaded(
    gateway: GatewayProcess, team_key: str, client: openai.OpenAI, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    set_faults(simulator, "slow", stall=True)  # running until cancelled, however slow this machine is
    requests = chat_requests(10, model="slow-model", prefix="stop")
    created = batchgw(gateway, team_key, "submit", str(write_requests(tmp_path / "in.jsonl", requests)))
    batch_id = batch_id_in(created.stdout)
    out = tmp_path / "results.jsonl"
    early = batchgw(gateway, team_key, "download", batch_id, "--out", str(out))
    assert early.returncode == 1 and "its results are not complete yet" in " ".join(early.stderr.split())
    assert not out.exists()

    cancelled = batchgw(gateway, team_key, "cancel", batch_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert f"batch {batch_id} cancel" in cancelled.stdout and "finished requests keep their results" in cancelled.stdout
    assert wait_for(client, batch_id, timeout=60).status == "cancelled"
    fetched = batchgw(gateway, team_key, "download", batch_id, "--out", str(out))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    lines = read_lines(out)
    assert [line["custom_id"] for line in lines] == [r["custom_id"] for r in requests]
    assert {line["error"]["code"] for line in lines if line["error"]} <= {"batch_cancelled"}


def test_a_base_url_without_v1_gets_a_hint(gateway: GatewayProcess, team_key: str) -> None:
    env = {**cli_env(gateway, team_key), "BATCHGW_BASE_URL": gateway.base_url}
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    message = " ".join(run.stderr.split())
    assert "answered 404" in message and f"try --base-url {gateway.base_url}/v1" in message


def test_an_invalid_line_fails_the_batch_with_its_line_number(
    gateway: GatewayProcess, team_key: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(chat_requests(1)[0]) + "\n{not json\n")
    run = batchgw(gateway, team_key, "submit", str(source), "--model", "gpt-4o-mini", "--wait")
    assert run.returncode == 1
    assert "failed" in run.stdout and "Line 2 is not valid JSON" in run.stdout
    assert "line 2: Line 2" not in run.stdout  # the message names its line: it is not prefixed again
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("args", "key", "code", "message"),
    [
        (["submit", "missing.jsonl"], "KEY", 2, "input file not found: missing.jsonl"),
        (["ls"], None, 2, "no API key"),
        (["ls"], "bgw-wrong", 1, "refused the API key (401)"),
        (["status", "batch_doesnotexist"], "KEY", 1, "answered 404"),
        (["submit", "IN", "--max-cost", "lots"], "KEY", 2, "--max-cost must be an amount in USD"),
        (["submit", "IN", "--max-cost", "-1"], "KEY", 2, "--max-cost must be a positive amount"),
        (["submit", "IN", "--policy", "no-such-policy"], "KEY", 1, "answered 400"),
        (["submit", "IN", "--endpoint", "/v1/completions"], "KEY", 2, "--endpoint must be one of"),
    ],
)
def test_clear_errors_without_tracebacks(
    gateway: GatewayProcess, team_key: str, tmp_path: Path, args: list[str], key: str | None, code: int, message: str
) -> None:
    source = write_requests(tmp_path / "in.jsonl", chat_requests(2))
    args = [str(source) if arg == "IN" else arg for arg in args]
    run = batchgw(gateway, team_key if key == "KEY" else key, *args)
    assert run.returncode == code, run.stdout + run.stderr
    assert message in " ".join(run.stderr.split()), run.stderr
    assert "Traceback" not in run.stderr


def test_an_out_path_that_cannot_be_written_is_refused_before_anything_is_sent(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    key = gateway.create_key("out-checked")  # a team of its own: its files are this test's only
    source = write_requests(tmp_path / "in.jsonl", chat_requests(2))
    run = batchgw(gateway, key, "submit", str(source), "--out", str(tmp_path / "missing" / "out.jsonl"))
    assert run.returncode == 2 and "does not exist" in " ".join(run.stderr.split()), run.stderr
    client = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key)
    assert not list(client.files.list()), "the file was uploaded (and the batch would have run) anyway"


def test_unreachable_gateway(gateway: GatewayProcess, team_key: str) -> None:
    env = {**cli_env(gateway, team_key), "BATCHGW_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    run = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "ls"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert "cannot reach the gateway at http://127.0.0.1:" in run.stderr and "Traceback" not in run.stderr
