"""Provider faults switched through the emulator's control API while the gateway runs a batch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster, hash_fraction
from tests.conftest import GatewayProcess, loopback, simulated_provider_env
from tests.engine import (
    assert_all_succeeded,
    assert_submitted_once,
    assert_succeeded,
    batch_creates,
    cancel,
    cancel_calls,
    chat_requests,
    collect,
    control,
    emulator_log,
    emulator_stats,
    query,
    reset,
    set_faults,
    start_gateway,
    submit,
    wait_for,
)

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

PROVIDERS: dict[str, dict[str, Any]] = {
    "main": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini"}},
    "split": {"emulator": "fast", "models": {"split5": "gpt-4o-mini"}, "limits": {"max_requests_per_batch": 5}},
    "slowp": {"emulator": "slow", "models": {"slow": "gpt-4o-mini"}},
}
SERVER_ERROR_BODY = {
    "error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
}


@pytest.fixture(scope="module")
def provider_env(simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return simulated_provider_env(simulator, tmp_path_factory.mktemp("providers"), PROVIDERS)


@pytest.fixture(scope="module")
def gateway(gateway_factory: Any, provider_env: dict[str, str]) -> GatewayProcess:
    return gateway_factory(provider_env).start()


@pytest.fixture(autouse=True)
def fresh_emulators(simulator: SimulatorCluster) -> Iterator[None]:
    reset(simulator, *simulator.names())
    yield
    reset(simulator, *simulator.names())


def assert_still_waiting(
    client: openai.OpenAI, batch_id: str, seconds: float, until: Callable[[], bool] | None = None
) -> None:
    """For ``seconds`` the batch stays in progress with nothing finished; with ``until``, it stays so until
    ``until()`` holds, which must happen within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        assert batch.status in ("validating", "in_progress"), batch
        assert batch.request_counts is None or batch.request_counts.completed == 0
        if until is not None and until():
            return
        time.sleep(0.2)
    assert until is None, f"the batch waited {seconds:.0f}s, but not for the reason expected"


def test_provider_down_then_back_the_batch_waits_and_completes(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "fast", down="refuse")
    requests = chat_requests(10)
    batch = submit(client, requests)
    assert_still_waiting(client, batch.id, 3.0)
    # The provider comes back only once the gateway has said why the batch waits: on a loaded machine a
    # gateway's first try can come more than 3 s after the create.
    assert_still_waiting(client, batch.id, 60.0, until=lambda: "main unavailable" in gateway.log())
    assert emulator_log(simulator, "fast") == []
    set_faults(simulator, "fast", down="off")
    batch = wait_for(client, batch.id)
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
    assert_submitted_once(gateway, simulator, "fast", batch.id)


def test_503_on_every_call_then_recovery(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "fast", down="503")
    requests = chat_requests(10)
    batch = submit(client, requests)
    assert_still_waiting(client, batch.id, 2.5)
    refused = emulator_log(simulator, "fast")
    assert refused and all(e["status"] == 503 for e in refused)
    set_faults(simulator, "fast", down="off")
    batch = wait_for(client, batch.id)
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
    assert_submitted_once(gateway, simulator, "fast", batch.id)


def test_random_5xx_answers_are_retried(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "fast", error_5xx_rate=0.3)
    requests = chat_requests(15, model="split5")
    batch = wait_for(client, submit(client, requests).id, timeout=90)
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
    log = emulator_log(simulator, "fast")
    assert any(e["status"] == 500 for e in log), "no 5xx was injected"
    assert len(batch_creates(log)) == 3
    assert_submitted_once(gateway, simulator, "fast", batch.id)


def test_429_retry_after_is_honoured(client: openai.OpenAI, simulator: SimulatorCluster) -> None:
    set_faults(simulator, "fast", rate_limit_next=2, retry_after_s=2)
    requests = chat_requests(10)
    batch = wait_for(client, submit(client, requests).id)
    assert_all_succeeded(collect(client, batch), requests, "gpt-4o-mini")
    log = emulator_log(simulator, "fast")
    limited = [i for i, e in enumerate(log) if e["status"] == 429]
    assert len(limited) == 2
    for index in limited:
        gap = log[index + 1]["timestamp"] - log[index]["timestamp"]
        assert gap >= 1.9, f"the call after a 429 with Retry-After: 2 came {gap:.2f}s later"
    assert len(log) <= 12, f"{len(log)} calls for one 10-line batch"


def test_failed_requests_land_in_the_error_file_with_the_provider_body(
    client: openai.OpenAI, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "fast", fail_fraction=0.3)
    requests = chat_requests(30)
    failing = {r["custom_id"] for r in requests if hash_fraction(r["custom_id"]) < 0.3}
    assert 0 < len(failing) < 30
    batch = wait_for(client, submit(client, requests).id)
    assert batch.status == "completed"
    outcome = collect(client, batch)
    assert set(outcome.errors) == failing
    for line in outcome.errors.values():
        assert line["error"] is None
        assert line["response"]["status_code"] == 500
        assert line["response"]["body"] == SERVER_ERROR_BODY
    succeeded = [r for r in requests if r["custom_id"] not in failing]
    assert set(outcome.output) == {r["custom_id"] for r in succeeded}
    input_tokens, output_tokens = assert_succeeded(outcome, succeeded, "gpt-4o-mini")
    assert batch.request_counts is not None and batch.usage is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        30,
        30 - len(failing),
        len(failing),
    )
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (input_tokens, output_tokens)


def test_shuffled_provider_output_is_joined_on_custom_id(client: openai.OpenAI, simulator: SimulatorCluster) -> None:
    set_faults(simulator, "fast", shuffle_output=True)
    requests = chat_requests(40)
    batch = wait_for(client, submit(client, requests).id)
    outcome = collect(client, batch)
    assert list(outcome.output) != [r["custom_id"] for r in requests], "the provider output was not shuffled"
    assert_all_succeeded(outcome, requests, "gpt-4o-mini")


def test_provider_expiry_keeps_finished_lines_and_requeues_the_rest(
    client: openai.OpenAI, simulator: SimulatorCluster
) -> None:
    # Every provider batch expires half-way: 20 -> 10 done, the other 10 requeued -> 5 done, the last
    # 5 requeued -> 3 done; after the third try (routing.max_request_attempts) 2 end in error: the provider's
    # batch expired, not the client's window.
    set_faults(simulator, "fast", expire=True, expire_after_fraction=0.5)
    requests = chat_requests(20)
    batch = wait_for(client, submit(client, requests).id)
    assert batch.status == "completed"
    outcome = collect(client, batch)
    finished = requests[:18]
    assert set(outcome.output) == {r["custom_id"] for r in finished}
    input_tokens, output_tokens = assert_succeeded(outcome, finished, "gpt-4o-mini")
    assert set(outcome.errors) == {r["custom_id"] for r in requests[18:]}
    assert {line["error"]["code"] for line in outcome.errors.values()} == {"provider_batch_expired"}
    assert all("The provider expired the batch" in line["error"]["message"] for line in outcome.errors.values())
    assert batch.request_counts is not None and batch.usage is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (18, 2)
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (input_tokens, output_tokens)
    assert len(batch_creates(emulator_log(simulator, "fast"))) == 3


def test_gateway_completion_window_passing_expires_the_batch(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    requests = chat_requests(30, model="slow")
    batch = submit(client, requests)
    wait_for(client, batch.id, lambda b: b.request_counts.completed > 0)  # type: ignore[union-attr]
    # The deadline moves to now while the provider batches run (the next test uses a short window instead).
    query(gateway, "UPDATE batches SET expires_at = :now WHERE id = :b", now=int(time.time()), b=batch.id)
    batch = wait_for(client, batch.id)
    assert batch.status == "expired" and batch.expired_at is not None
    outcome = collect(client, batch)
    assert set(outcome.output) | set(outcome.errors) == {r["custom_id"] for r in requests}
    assert outcome.output and outcome.errors
    assert_succeeded(outcome, [r for r in requests if r["custom_id"] in outcome.output], "gpt-4o-mini")
    assert cancel_calls(emulator_log(simulator, "slow")), "the provider batch was not stopped"
    codes = {line["error"]["code"] for line in outcome.errors.values()}
    assert codes == {"batch_expired"}, codes


def test_short_completion_window_setting_expires_a_stalled_batch(
    gateway_factory: Any, provider_env: dict[str, str], simulator: SimulatorCluster
) -> None:
    short = gateway_factory({**provider_env, "BATCHGW_LIMITS__MIN_COMPLETION_WINDOW_S": "1"}).start()
    try:
        client = short.client(short.create_key("acme"))
        set_faults(simulator, "fast", stall=True)
        content = "".join(json.dumps(r) + "\n" for r in chat_requests(5)).encode()
        file = client.files.create(file=("input.jsonl", content), purpose="batch")
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="3s",  # type: ignore[arg-type]
        )
        assert batch.expires_at == batch.created_at + 3
        batch = wait_for(client, batch.id, timeout=30)
        assert batch.status == "expired"
        outcome = collect(client, batch)
        assert len(outcome.errors) == 5 and not outcome.output
        assert {line["error"]["code"] for line in outcome.errors.values()} == {"batch_expired"}
    finally:
        short.stop()


def test_malformed_output_line_becomes_an_error_line(
    client: openai.OpenAI, gateway: GatewayProcess, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "fast", malformed_output_line=True)
    requests = chat_requests(10)
    batch = wait_for(client, submit(client, requests).id)
    assert batch.status == "completed"
    outcome = collect(client, batch)
    assert set(outcome.output) | set(outcome.errors) == {r["custom_id"] for r in requests}
    assert len(outcome.errors) == 1
    [line] = outcome.errors.values()
    assert line["response"] is None and line["error"]["code"] == "result_missing"
    assert_succeeded(outcome, [r for r in requests if r["custom_id"] in outcome.output], "gpt-4o-mini")
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (9, 1)
    assert gateway.process is not None and gateway.process.poll() is None
    assert "Traceback" not in gateway.log()


def test_answers_billed_but_unreadable_are_in_the_ledger_and_paid_twice_when_run_again(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path: Path
) -> None:
    # Every result file's first line is cut in half, retried batches' included: one request is answered, billed
    # and unreadable three times (its first run, then two more tries), the third time ending as an error.
    priced = start_gateway(gateway_factory, simulator, tmp_path, cheap="fast", pricey="steady")
    for emulator in ("fast", "steady"):
        set_faults(simulator, emulator, malformed_output_line=True)
    client = priced.client(priced.create_key("acme"))
    batch = wait_for(client, submit(client, chat_requests(10)).id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (9, 1)

    sent = {row[0] for row in query(priced, "SELECT provider_batch_id FROM shards WHERE batch_id = :b", b=batch.id)}
    billed = [
        billed_batch
        for emulator in ("fast", "steady")
        for billed_batch in control(simulator, "GET", f"/providers/{emulator}/invoice")["batches"]
        if billed_batch["id"] in sent
    ]
    assert len(billed) == 3 and sum(b["requests_billed"] for b in billed) == 12
    ledger = query(
        priced,
        "SELECT kind, input_tokens, output_tokens, cost_usd, shard_id FROM ledger WHERE batch_id = :b ORDER BY id",
        b=batch.id,
    )
    assert sum(row[1] for row in ledger) == sum(b["input_tokens"] for b in billed)
    assert sum(row[2] for row in ledger) == sum(b["output_tokens"] for b in billed)
    unread = [row for row in ledger if row[0].startswith("unread")]
    assert sorted(row[0] for row in unread) == ["unread", "unread_rerun", "unread_rerun"], ledger
    # Priced at the rates of the shard whose provider batch billed them.
    for kind, input_tokens, output_tokens, cost, shard_id in unread:
        [(rate_in, rate_out)] = query(
            priced, "SELECT input_per_mtok, output_per_mtok FROM shards WHERE id = :s", s=shard_id
        )
        assert input_tokens > 0 and output_tokens > 0 and rate_in > 0
        assert cost == pytest.approx((input_tokens * rate_in + output_tokens * rate_out) / 1e6), kind
    [(cost, paid_twice)] = query(priced, "SELECT cost_usd, abandoned_cost_usd FROM batches WHERE id = :b", b=batch.id)
    assert cost == pytest.approx(sum(row[3] for row in ledger))
    assert paid_twice == pytest.approx(sum(row[3] for row in unread if row[0] == "unread_rerun")) and paid_twice > 0
    metrics = loopback.get(f"{priced.base_url}/metrics", timeout=30).text
    unread_spend = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("batchgw_spend_usd_total{") and 'reason="unread"' in line
    )
    assert unread_spend == pytest.approx(sum(row[3] for row in unread))
    assert "could not read" in priced.log()


def test_stalled_provider_keeps_the_batch_in_progress_until_cancelled(
    client: openai.OpenAI, simulator: SimulatorCluster
) -> None:
    set_faults(simulator, "fast", stall=True)
    requests = chat_requests(8)
    batch = submit(client, requests)
    deadline = time.monotonic() + 10
    while emulator_stats(simulator, "fast")["batches"].get("in_progress") != 1:
        assert time.monotonic() < deadline, emulator_stats(simulator, "fast")
        time.sleep(0.1)
    assert_still_waiting(client, batch.id, 2.5)
    assert cancel(client, batch.id).status in ("cancelling", "cancelled")
    batch = wait_for(client, batch.id)
    assert batch.status == "cancelled"
    outcome = collect(client, batch)
    assert not outcome.output and set(outcome.errors) == {r["custom_id"] for r in requests}
    assert all(line["error"]["code"] == "batch_cancelled" for line in outcome.errors.values())
    log = emulator_log(simulator, "fast")
    assert cancel_calls(log) == {e["detail"]["batch_id"] for e in batch_creates(log)}


def test_provider_losing_the_batch_runs_its_requests_again(client: openai.OpenAI, simulator: SimulatorCluster) -> None:
    set_faults(simulator, "fast", stall=True)
    requests = chat_requests(6)
    batch = submit(client, requests)
    deadline = time.monotonic() + 10
    while emulator_stats(simulator, "fast")["batches"].get("in_progress") != 1:
        assert time.monotonic() < deadline, emulator_stats(simulator, "fast")
        time.sleep(0.1)
    reset(simulator, "fast")  # the provider forgets the batch (every status read answers 404) and stalls no more
    batch = wait_for(client, batch.id, timeout=30)
    outcome = collect(client, batch)
    assert batch.status == "completed"
    assert set(outcome.output) == {r["custom_id"] for r in requests} and not outcome.errors
    log = emulator_log(simulator, "fast")
    assert any(e["status"] == 404 for e in log), "the lost batch was never asked for"
    assert len(batch_creates(log)) == 1, "the requests were not submitted again exactly once"
