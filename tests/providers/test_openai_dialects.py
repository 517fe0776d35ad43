"""OpenAIBatchAdapter's dialects (Azure, Groq, Together) against the OpenAI emulator switched into each one."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.providers.base import ProviderAuthFailed, ProviderBatchState, UnsupportedEndpoint
from gateway.providers.config import ProviderConfig
from gateway.providers.openai_batch import OpenAIBatchAdapter
from gateway.providers.openai_wire import DIALECTS
from gateway.providers.registry import ADAPTER_KINDS, adapter_options
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.providers.support import CHAT, FAST_RETRY, calls, questions, read_lines, wait_terminal, write_shard

KEY = "sk-dialect-secret-5c1e0b7a"
MODEL = "gpt-4o-mini"
DEPLOYMENT = "batch-gpt4o-mini-eu"
EMBEDDINGS = "/v1/embeddings"
HOUR = 3600.0
LONG_ID = "customer-7f3a/ticket-2026-11-30/" + "x" * 60
TERMINAL_SPELLING = {"azure": "Completed", "groq": "completed", "together": "COMPLETED"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="azure", dialect="azure", models=[DEPLOYMENT], api_key=KEY, processing_delay_s=0.2),
        ProviderSpec(name="groq", dialect="groq", models=[MODEL], api_key=KEY, processing_delay_s=0.2),
        ProviderSpec(name="together", dialect="together", models=[MODEL], api_key=KEY, processing_delay_s=0.2),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


def adapter_for(
    cluster: SimulatorCluster, http: httpx.AsyncClient, dialect: str, *, api_key: str = KEY, emulator: str = ""
) -> OpenAIBatchAdapter:
    name = emulator or dialect
    config = ProviderConfig(name=name, kind="openai", base_url=cluster.base_url(name), models=[MODEL], timeout_s=5)
    return OpenAIBatchAdapter(config=config, http=http, api_key=api_key, retry=FAST_RETRY, dialect=dialect)  # type: ignore[arg-type]


def model_of(dialect: str) -> str:
    return DEPLOYMENT if dialect == "azure" else MODEL


@pytest.mark.parametrize("dialect", ["azure", "groq", "together"])
async def test_round_trip_in_each_dialect(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, dialect: str
) -> None:
    adapter = adapter_for(cluster, http, dialect)
    lines = questions(12, model_of(dialect))
    lines[5]["custom_id"] = LONG_ID  # Together takes 64 characters at most: sent mapped, joined back
    shard = write_shard(tmp_path, lines, model_of(dialect))
    submitted = await adapter.submit(shard)
    [uploaded] = cluster.state(dialect).files.files.values()
    assert uploaded.purpose == ("batch-api" if dialect == "together" else "batch")
    assert uploaded.filename == f"batchgw-{shard.submit_token}.jsonl"
    job = cluster.state(dialect).jobs[submitted.provider_batch_id]
    tagged = {"batchgw_submit_token": shard.submit_token, "batchgw_shard_id": shard.shard_id}
    assert job.metadata == (None if dialect == "together" else tagged)
    [create] = await calls(cluster, dialect, "POST", "/batches")
    assert create.detail is not None and create.detail["metadata"] == (None if dialect == "together" else tagged)

    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.COMPLETED and final.raw_status == TERMINAL_SPELLING[dialect]
    # Together's job has a 0-100 progress, not request counts: read as a share of the requests.
    assert (final.total, final.completed) == ((0, 0) if dialect == "together" else (12, 12))
    assert final.progress == (1.0 if dialect == "together" else None)
    dest = tmp_path / "out.jsonl"
    reported = await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    lines = read_lines(dest)
    # Groq's and Together's batch objects report no usage; Azure's, like OpenAI's, the batch's billed tokens.
    if dialect == "azure":
        assert reported is not None
        assert reported.input == sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in lines) > 0
        assert reported.output == sum(line["response"]["body"]["usage"]["completion_tokens"] for line in lines) > 0
    else:
        assert reported is None
    expected = [f"req-{i:03d}" if i != 5 else LONG_ID for i in range(12)]
    assert sorted(line["custom_id"] for line in lines) == sorted(expected)
    uploaded_ids = [json.loads(raw)["custom_id"] for raw in Path(uploaded.path).read_bytes().splitlines()]
    assert (LONG_ID in uploaded_ids) is (dialect != "together")  # the others take it as it is
    assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in lines)
    assert {line["response"]["body"]["model"] for line in lines} == {model_of(dialect)}


async def test_azure_key_goes_in_api_key_and_never_into_errors(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    shard = write_shard(tmp_path, questions(2, DEPLOYMENT), DEPLOYMENT)
    as_bearer = adapter_for(cluster, http, "openai", emulator="azure")
    with pytest.raises(ProviderAuthFailed) as refused:
        await as_bearer.submit(shard)
    wrong = adapter_for(cluster, http, "azure", api_key="sk-wrong-" + KEY[::-1])
    with pytest.raises(ProviderAuthFailed) as wrong_key:
        await wrong.submit(shard)
    for exc in (refused.value, wrong_key.value):
        assert KEY not in str(exc) and KEY[::-1] not in str(exc)
    assert (await adapter_for(cluster, http, "azure").health()).healthy


@pytest.mark.parametrize(
    ("left_s", "window"),
    [(24 * HOUR, "24h"), (10.0, "24h"), (30 * HOUR, "24h"), (72 * HOUR - 60, "72h"), (70 * HOUR, "48h"),
     (167.5 * HOUR, "7d"), (30 * 24 * HOUR, "7d")],
)  # fmt: skip
async def test_groq_is_asked_for_the_longest_window_that_fits_the_clients(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, left_s: float, window: str
) -> None:
    shard = dataclasses.replace(write_shard(tmp_path, questions(1, MODEL), MODEL), window_s=left_s)
    submitted = await adapter_for(cluster, http, "groq").submit(shard)
    assert cluster.state("groq").jobs[submitted.provider_batch_id].extra["completion_window"] == window


async def test_openai_is_always_asked_for_24h(cluster: SimulatorCluster) -> None:
    assert {DIALECTS["openai"].completion_window(s) for s in (60.0, 24 * HOUR, 7 * 24 * HOUR)} == {"24h"}
    assert DIALECTS["together"].completion_window(72 * HOUR) == "24h"


async def test_together_submit_is_found_again_by_its_upload(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    first = write_shard(tmp_path, questions(2, MODEL), MODEL)
    second = write_shard(tmp_path, questions(3, MODEL), MODEL)
    adapter = adapter_for(cluster, http, "together")
    submitted = [await adapter.submit(first), await adapter.submit(second)]
    restarted = adapter_for(cluster, http, "together")  # a new process knows only the tokens
    found = [await restarted.find_submitted(first.submit_token), await restarted.find_submitted(second.submit_token)]
    assert found == submitted
    assert await restarted.find_submitted("tok-never-used") is None

    # Uploaded, then the process died before the create: the file is there, no batch is.
    orphan_upload = dataclasses.replace(write_shard(tmp_path, questions(1, MODEL), MODEL), may_create=lambda: False)
    with pytest.raises(Exception, match="withdrawn"):
        await adapter.submit(orphan_upload)
    assert await restarted.find_submitted(orphan_upload.submit_token) is None


@pytest.mark.parametrize("dialect", ["groq", "together"])
async def test_chat_only_dialects_refuse_embeddings_without_a_call(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path, dialect: str
) -> None:
    adapter = adapter_for(cluster, http, dialect)
    assert adapter.serves(CHAT) and not adapter.serves(EMBEDDINGS)
    lines = [{"custom_id": "e", "method": "POST", "url": EMBEDDINGS, "body": {"model": MODEL, "input": "hi"}}]
    with pytest.raises(UnsupportedEndpoint, match="serve /v1/chat/completions only"):
        await adapter.submit(write_shard(tmp_path, lines, MODEL, endpoint=EMBEDDINGS))
    assert await calls(cluster, dialect, "POST", "/files") == []
    assert adapter_for(cluster, http, "azure").serves(EMBEDDINGS)


def test_an_unknown_dialect_is_a_configuration_problem(http: httpx.AsyncClient) -> None:
    kinds = {kind: adapter_options(adapter) for kind, adapter in ADAPTER_KINDS.items()}
    config = ProviderConfig(
        name="p", kind="openai", base_url="http://127.0.0.1:1/v1", models=[MODEL], options={"dialect": "azur"}
    )
    [(where, text)] = config.problems(kinds, require_key=False)
    assert where == ("options", "dialect") and "'openai', 'azure', 'groq' or 'together'" in text
    with pytest.raises(ValueError, match="unknown dialect 'azur'"):
        OpenAIBatchAdapter(config=config, http=http, dialect="azur")  # type: ignore[arg-type]
