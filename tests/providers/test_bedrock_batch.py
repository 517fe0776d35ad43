"""BedrockBatchAdapter against the Bedrock emulator on loopback, with records in a real S3-wire server."""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.providers.base import (
    ProviderAuthFailed,
    ProviderBatchState,
    ProviderRejected,
    ProviderUnavailable,
    UnsupportedEndpoint,
)
from gateway.providers.bedrock_batch import BedrockBatchAdapter
from gateway.providers.config import ProviderConfig, ProviderLimits
from gateway.simulator import ProviderSpec, SimulatorCluster, embedding_vector
from tests.conftest import S3_TEST_CREDENTIALS, S3Server, free_port
from tests.providers.support import FAST_RETRY, calls, questions, read_lines, wait_terminal, write_shard

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-v4:0"
EMBEDDINGS = "/v1/embeddings"
ACCESS_KEY = S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"]
API_KEY = "bedrock-api-key-5c1e9a"
ROLE = "arn:aws:iam::123456789012:role/BatchInference"
MINIMUM = 5


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture(scope="module")
def cluster(aws_env: None, s3_server: S3Server) -> Iterator[SimulatorCluster]:
    """Signed calls must carry the S3 test key id; bearer calls the API key (the emulator takes either)."""
    spec = ProviderSpec(
        name="bedrock", kind="bedrock", models=[CLAUDE, TITAN, COHERE], api_key=ACCESS_KEY, processing_delay_s=0.2,
        s3_endpoint_url=s3_server.endpoint_url, min_records=MINIMUM,
    )  # fmt: skip
    with SimulatorCluster([spec], control_port=None) as running:
        yield running


def adapter_of(
    cluster: SimulatorCluster, http: httpx.AsyncClient, s3: S3Server, bucket: str, **options: Any
) -> BedrockBatchAdapter:
    limits = ProviderLimits(min_requests_per_batch=options.pop("min_requests", MINIMUM))
    url = cluster.base_url("bedrock")
    config = ProviderConfig(name="bedrock", kind="bedrock", base_url=url, models=[CLAUDE, TITAN, COHERE], limits=limits)
    settings = {
        "role_arn": ROLE, "s3_uri": f"s3://{bucket}/jobs", "s3_endpoint_url": s3.endpoint_url, "s3_allow_http": True,
        "region": "us-east-1",
    } | options  # fmt: skip
    api_key = settings.pop("api_key", None)
    return BedrockBatchAdapter(config=config, http=http, api_key=api_key, retry=FAST_RETRY, **settings)


@pytest.fixture
def adapter(
    cluster: SimulatorCluster, http: httpx.AsyncClient, s3_server: S3Server, bucket: str
) -> BedrockBatchAdapter:
    return adapter_of(cluster, http, s3_server, bucket)


async def test_round_trip_through_s3_joins_records_on_their_ids(
    adapter: BedrockBatchAdapter, cluster: SimulatorCluster, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    cluster.set_faults("bedrock", fail_fraction=0.2, shuffle_output=True)
    lines = questions(30, CLAUDE, max_completion_tokens=40)
    lines[3]["body"]["logprobs"] = True  # Claude cannot honour it: never sent, a 400 line instead
    lines[5]["custom_id"] = "a custom id Bedrock would never take as a recordId / ünïcode"
    shard = write_shard(tmp_path, lines, CLAUDE)
    submitted = await adapter.submit(shard)

    token = shard.submit_token
    stored = s3_server.keys(bucket, f"jobs/{token}/")
    assert list(stored) == [f"jobs/{token}/batchgw-{token}.jsonl"]
    records = s3_server.client().get_object(Bucket=bucket, Key=f"jobs/{token}/batchgw-{token}.jsonl")["Body"].read()
    first = json.loads(records.splitlines()[0])
    assert first["recordId"] == "R0000000001" and first["modelInput"]["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in first["modelInput"] and len(records.splitlines()) == 29
    assert submitted.provider_file_id == f"{token}/batchgw-{token}.jsonl"  # below s3_uri

    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.COMPLETED and final.raw_status == "Completed"
    reads = await calls(cluster, "bedrock", "GET", "/model-invocation-job/")
    job_id = submitted.provider_batch_id.rsplit("/", 1)[-1]
    assert reads and {entry.path for entry in reads} == {f"/model-invocation-job/{job_id}"}  # the id, not the ARN
    assert final.total == 29 and final.completed + final.failed == 29 and final.failed > 0
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    by_id = {line["custom_id"]: line for line in read_lines(dest)}
    assert sorted(by_id) == sorted(line["custom_id"] for line in lines)
    refused = by_id["req-003"]["response"]
    assert refused["status_code"] == 400 and "cannot be sent to a Bedrock model" in refused["body"]["error"]["message"]
    statuses = [line["response"]["status_code"] for line in by_id.values()]
    assert statuses.count(200) == final.completed and statuses.count(500) == final.failed
    answered = next(line["response"]["body"] for line in by_id.values() if line["response"]["status_code"] == 200)
    assert answered["object"] == "chat.completion" and answered["usage"]["completion_tokens"] <= 40


async def test_titan_embeddings_round_trip_in_float_and_base64(adapter: BedrockBatchAdapter, tmp_path: Path) -> None:
    lines = [
        {"custom_id": f"e{i}", "body": {"model": TITAN, "input": f"text {i}", "dimensions": 256}} for i in range(6)
    ]
    lines[0]["body"]["encoding_format"] = "base64"
    lines[1]["body"]["input"] = ["two", "texts"]  # Titan embeds one text per request
    shard = write_shard(tmp_path, lines, TITAN, endpoint=EMBEDDINGS)
    submitted = await adapter.submit(shard)
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.COMPLETED and final.completed == 5
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    by_id = {line["custom_id"]: line["response"] for line in read_lines(dest)}
    assert by_id["e1"]["status_code"] == 400 and "one text per request" in by_id["e1"]["body"]["error"]["message"]
    assert isinstance(by_id["e0"]["body"]["data"][0]["embedding"], str)
    vector = by_id["e2"]["body"]["data"][0]["embedding"]
    assert len(vector) == 256 and by_id["e2"]["body"]["usage"]["prompt_tokens"] > 0


def cohere_lines(count: int) -> list[dict[str, Any]]:
    """Embeddings requests of texts of different sizes (one of two texts, one in base64, one of 512 dimensions);
    accented, so the gateway's own estimate (UTF-8 bytes / 4) differs from the emulator's count."""
    lines = [{"custom_id": f"c{i}", "body": {"model": COHERE, "input": f"tèxt {i} " + "é" * (i * 7 % 90)}}
             for i in range(count)]  # fmt: skip
    lines[1]["body"]["input"] = ["first of two", "second of two, longer"]
    lines[2]["body"]["encoding_format"] = "base64"
    lines[3]["body"] |= {"dimensions": 512, "input_type": "search_query"}
    lines[4]["body"]["input_type"] = "image"  # not a text input type: a 400 line, never sent
    return lines


def manifest_key(s3: S3Server, bucket: str, shard: Any) -> str:
    (key,) = [k for k in s3.keys(bucket, f"jobs/{shard.submit_token}/out/") if k.endswith("manifest.json.out")]
    return key


def manifest_of(s3: S3Server, bucket: str, shard: Any) -> dict[str, Any]:
    body = s3.client().get_object(Bucket=bucket, Key=manifest_key(s3, bucket, shard))["Body"].read()
    manifest: dict[str, Any] = json.loads(body)
    return manifest


async def finished_cohere_job(
    adapter: BedrockBatchAdapter, tmp_path: Path, count: int
) -> tuple[list[dict[str, Any]], Any, Any]:
    """``count`` Cohere requests but the refused one, run to completion: (lines, shard, submitted)."""
    lines = [line for line in cohere_lines(count) if line["custom_id"] != "c4"]
    shard = write_shard(tmp_path, lines, COHERE, endpoint=EMBEDDINGS)
    submitted = await adapter.submit(shard)
    assert (await wait_terminal(adapter, submitted.provider_batch_id)).completed == len(lines)
    return lines, shard, submitted


async def test_cohere_answers_share_the_manifests_token_count_by_the_size_of_their_texts(
    adapter: BedrockBatchAdapter, cluster: SimulatorCluster, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    cluster.set_faults("bedrock", fail_fraction=0.25, shuffle_output=True)
    lines = cohere_lines(40)
    shard = write_shard(tmp_path, lines, COHERE, endpoint=EMBEDDINGS)
    submitted = await adapter.submit(shard)
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.COMPLETED and final.failed > 0 and final.completed + final.failed == 39
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    by_id = {line["custom_id"]: line["response"] for line in read_lines(dest)}
    assert sorted(by_id) == sorted(line["custom_id"] for line in lines)
    assert by_id["c4"]["status_code"] == 400 and "input_type" in by_id["c4"]["body"]["error"]["message"]
    answered = {cid: r["body"] for cid, r in by_id.items() if r["status_code"] == 200}
    assert len(answered) == final.completed

    manifest = manifest_of(s3_server, bucket, shard)
    tokens = {cid: body["usage"]["prompt_tokens"] for cid, body in answered.items()}
    assert sum(tokens.values()) == manifest["inputTokenCount"] > 0  # the ledger bills what Bedrock counted
    texts = {line["custom_id"]: line["body"]["input"] for line in lines}
    size = {cid: sum(len(t.encode()) for t in ([texts[cid]] if isinstance(texts[cid], str) else texts[cid]))
            for cid in answered}  # fmt: skip
    for cid, used in tokens.items():  # each answer's share of the count, to the token
        assert abs(used - manifest["inputTokenCount"] * size[cid] / sum(size.values())) < 1
        assert answered[cid]["usage"]["total_tokens"] == used

    for cid, body in answered.items():
        expected = [embedding_vector(t, 512 if cid == "c3" else 1536) for t in
                    ([texts[cid]] if isinstance(texts[cid], str) else texts[cid])]  # fmt: skip
        vectors = [item["embedding"] for item in body["data"]]
        if cid == "c2":
            vectors = [list(struct.unpack(f"<{len(expected[0])}f", base64.b64decode(vectors[0])))]
            assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(vectors[0], expected[0], strict=True))
        else:
            assert vectors == expected


def rewrite_output(s3: S3Server, bucket: str, shard: Any, change: Any) -> None:
    """Apply ``change`` to the records of a finished job's ``.jsonl.out`` in S3 (as a provider could answer)."""
    (key,) = [k for k in s3.keys(bucket, f"jobs/{shard.submit_token}/out/") if k.endswith(".jsonl.out")]
    records = [json.loads(line) for line in s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    body = "".join(json.dumps(record) + "\n" for record in change(records))
    s3.client().put_object(Bucket=bucket, Key=key, Body=body.encode())


@pytest.mark.parametrize("with_input", [False, True], ids=["input-gone", "input-kept"])
async def test_a_counted_answer_keeps_its_count_the_rest_share_what_is_left_and_a_short_answer_is_skipped(
    adapter: BedrockBatchAdapter,
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    with_input: bool,
) -> None:
    lines, shard, submitted = await finished_cohere_job(adapter, tmp_path, 10)

    def change(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for record in records:
            if record["recordId"] == "R0000000001":  # c0 comes with Cohere's own count
                record["modelOutput"]["meta"] = {"billed_units": {"input_tokens": 11}}
            if record["recordId"] == "R0000000002":  # c1 sent two texts and gets one vector back
                record["modelOutput"]["embeddings"] = record["modelOutput"]["embeddings"][:1]
        return records

    rewrite_output(s3_server, bucket, shard, change)
    dest = tmp_path / "out.jsonl"
    source = shard.input_path if with_input else None  # without it, the records' echoed texts weigh
    with caplog.at_level(logging.WARNING, logger="gateway.providers.bedrock_batch"):
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=source)
    by_line = {int(line["id"].rsplit("R", 1)[-1]): line for line in read_lines(dest)}  # the record's line number
    tokens = {f"R{n:010d}": line["response"]["body"]["usage"]["prompt_tokens"] for n, line in by_line.items()}
    assert "R0000000002" not in tokens and "1 vectors for 2 texts" in caplog.text  # skipped, so it runs again
    assert tokens.pop("R0000000001") == 11
    manifest = manifest_of(s3_server, bucket, shard)
    assert sum(tokens.values()) == manifest["inputTokenCount"] - 11
    size = {f"R{n + 1:010d}": len(line["body"]["input"].encode()) for n, line in enumerate(lines) if n != 1}
    for rid, used in tokens.items():  # shared by the texts each record echoes, as the shard input is gone
        assert abs(used - (manifest["inputTokenCount"] - 11) * size[rid] / sum(size[r] for r in tokens)) < 1


@pytest.mark.parametrize("counted", [0, 3])  # 5 answers need 5 tokens at least
async def test_a_manifest_that_counts_too_few_tokens_is_not_billed_as_nothing(
    adapter: BedrockBatchAdapter,
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    counted: int,
) -> None:
    _, shard, submitted = await finished_cohere_job(adapter, tmp_path, 6)
    manifest = manifest_of(s3_server, bucket, shard) | {"inputTokenCount": counted}
    key = manifest_key(s3_server, bucket, shard)
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=json.dumps(manifest).encode())
    dest = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="gateway.providers.bedrock_batch"):
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    assert all(line["response"]["body"]["usage"]["prompt_tokens"] > 0 for line in read_lines(dest))
    assert "too few input tokens in its manifest; 5 answers are priced at the estimate" in caplog.text


async def test_cohere_answers_are_priced_at_the_estimate_when_the_manifest_is_gone(
    adapter: BedrockBatchAdapter, s3_server: S3Server, bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines, shard, submitted = await finished_cohere_job(adapter, tmp_path, 8)
    s3_server.client().delete_object(Bucket=bucket, Key=manifest_key(s3_server, bucket, shard))
    dest = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="gateway.providers.bedrock_batch"):
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    texts = {line["custom_id"]: line["body"]["input"] for line in lines}
    for line in read_lines(dest):
        text = texts[line["custom_id"]]
        size = sum(len(t.encode()) for t in ([text] if isinstance(text, str) else text))
        assert line["response"]["body"]["usage"]["prompt_tokens"] == -(-size // 4)  # bytes / 4, rounded up
    assert "no token counts in its manifest; 7 answers are priced at the estimate" in caplog.text


async def test_a_repeated_submit_of_the_same_shard_creates_one_job_and_is_found_by_its_token(
    adapter: BedrockBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    shard = write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE)
    first = await adapter.submit(shard)
    again = await adapter.submit(shard)
    assert again.provider_batch_id == first.provider_batch_id
    assert len(cluster.state("bedrock").jobs) == 1
    creates = await calls(cluster, "bedrock", "POST", "/model-invocation-job")
    assert len(creates) == 2  # the second create was answered with the first job
    found = await adapter.find_submitted(shard.submit_token)
    assert found is not None and found.provider_batch_id == first.provider_batch_id
    assert await adapter.find_submitted("tok-never-submitted") is None


async def test_calls_are_signed_with_sigv4_for_bedrock_in_the_providers_region(
    adapter: BedrockBatchAdapter, cluster: SimulatorCluster, http: httpx.AsyncClient, s3_server: S3Server, bucket: str
) -> None:
    assert (await adapter.health()).healthy
    elsewhere = adapter_of(cluster, http, s3_server, bucket, region="eu-west-1")  # the emulator runs in us-east-1
    report = await elsewhere.health()
    assert not report.healthy and "authentication failed (HTTP 403)" in report.detail
    assert "AWS_ACCESS_KEY_ID" in report.detail and S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in report.detail


async def test_a_bedrock_api_key_goes_as_a_bearer_token_instead_of_a_signature(
    cluster: SimulatorCluster,
    http: httpx.AsyncClient,
    s3_server: S3Server,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDNOTKNOWNHERE")  # a signature would now be refused
    assert not (await adapter_of(cluster, http, s3_server, bucket).health()).healthy
    assert (await adapter_of(cluster, http, s3_server, bucket, api_key=ACCESS_KEY).health()).healthy


async def test_refused_credentials_fail_with_a_hint_and_no_secret(
    cluster: SimulatorCluster, http: httpx.AsyncClient, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    wrong = adapter_of(cluster, http, s3_server, bucket, api_key=API_KEY)
    with pytest.raises(ProviderAuthFailed) as refused:
        await wrong.submit(write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE))
    assert API_KEY not in str(refused.value) and "provider bedrock" in str(refused.value)
    assert not (await wrong.health()).healthy


async def test_work_below_the_record_minimum_is_refused_before_anything_is_created(
    cluster: SimulatorCluster, http: httpx.AsyncClient, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    adapter = adapter_of(cluster, http, s3_server, bucket, min_requests=10)
    with pytest.raises(ProviderRejected, match="fewer than the 10 a Bedrock job needs"):
        await adapter.submit(write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE))
    assert not cluster.state("bedrock").jobs


async def test_a_job_bedrock_refuses_in_validation_fails_with_bedrocks_message(
    cluster: SimulatorCluster, http: httpx.AsyncClient, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    lenient = adapter_of(cluster, http, s3_server, bucket, min_requests=2)  # below the account's real minimum
    submitted = await lenient.submit(write_shard(tmp_path, questions(2, CLAUDE), CLAUDE))
    final = await wait_terminal(lenient, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.FAILED and final.error is not None and "minimum" in final.error


async def test_a_stopped_job_keeps_the_records_it_finished(
    adapter: BedrockBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    cluster.set_faults("bedrock", stall=True)
    shard = write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE)
    submitted = await adapter.submit(shard)
    await adapter.cancel(submitted.provider_batch_id)
    cluster.set_faults("bedrock", stall=False)
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    assert final.state is ProviderBatchState.CANCELLED and final.raw_status == "Stopped"
    await adapter.cancel(submitted.provider_batch_id)  # stopping an ended job is not an error
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    assert len(read_lines(dest)) == final.completed + final.failed


async def test_a_record_nested_too_deeply_is_skipped_and_the_rest_are_read(
    adapter: BedrockBatchAdapter, cluster: SimulatorCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.set_faults("bedrock", nested_output_line=True)
    shard = write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE)
    submitted = await adapter.submit(shard)
    final = await wait_terminal(adapter, submitted.provider_batch_id)
    dest = tmp_path / "out.jsonl"
    with caplog.at_level(logging.WARNING, logger="gateway.providers.bedrock_batch"):
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    assert final.total == MINIMUM and len(read_lines(dest)) == MINIMUM - 1
    assert [r.getMessage() for r in caplog.records if "nested too deeply to read" in r.getMessage()]


async def test_an_unreachable_bucket_is_a_transient_failure_and_creates_nothing(
    cluster: SimulatorCluster, http: httpx.AsyncClient, bucket: str, tmp_path: Path
) -> None:
    closed = S3Server(endpoint_url=f"http://127.0.0.1:{free_port()}", process=None)  # type: ignore[arg-type]
    adapter = adapter_of(cluster, http, closed, bucket)
    with pytest.raises(ProviderUnavailable, match="writing the records to S3 failed"):
        await adapter.submit(write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE))
    assert not cluster.state("bedrock").jobs


async def test_a_429_flood_is_waited_out(
    adapter: BedrockBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    cluster.set_faults("bedrock", rate_limit_next=2, retry_after_s=0)
    submitted = await adapter.submit(write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE))
    assert (await wait_terminal(adapter, submitted.provider_batch_id)).state is ProviderBatchState.COMPLETED


async def test_a_shard_of_the_other_endpoint_is_refused(adapter: BedrockBatchAdapter, tmp_path: Path) -> None:
    assert adapter.serves("/v1/chat/completions") and adapter.serves(EMBEDDINGS)
    assert not adapter.serves("/v1/responses")
    shard = write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE, endpoint=EMBEDDINGS)
    with pytest.raises(UnsupportedEndpoint):
        await adapter.submit(shard)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"role_arn": "BatchInference"}, "role_arn must be an IAM role ARN"),
        ({"s3_uri": "my-bucket"}, "s3_uri must name the bucket"),
    ],
)
def test_missing_or_malformed_settings_stop_the_start(
    cluster: SimulatorCluster, http: httpx.AsyncClient, s3_server: S3Server, options: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        adapter_of(cluster, http, s3_server, "bucket", **options)


def test_a_model_of_an_unsupported_family_stops_the_start(http: httpx.AsyncClient) -> None:
    config = ProviderConfig(
        name="bedrock", kind="bedrock", base_url="https://bedrock.eu-west-1.amazonaws.com", models=["meta.llama3-8b"]
    )
    with pytest.raises(ValueError, match=r"meta\.llama3-8b.*not supported here; supported: anthropic"):
        BedrockBatchAdapter(config=config, http=http, role_arn=ROLE, s3_uri="s3://b/p")
    titan = config.model_copy(update={"models": {"t": TITAN}})
    adapter = BedrockBatchAdapter(config=titan, http=http, role_arn=ROLE, s3_uri="s3://b/p")
    assert adapter.region == "eu-west-1" and adapter.min_requests() == 100


async def test_a_shard_whose_every_line_is_refused_sends_nothing_and_answers_400_lines(
    adapter: BedrockBatchAdapter, cluster: SimulatorCluster, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    lines = [{"custom_id": f"e{i}", "body": {"model": TITAN, "input": ["a", "b"]}} for i in range(3)]
    shard = write_shard(tmp_path, lines, TITAN, endpoint=EMBEDDINGS)
    submitted = await adapter.submit(shard)
    assert (await adapter.poll(submitted.provider_batch_id)).state is ProviderBatchState.COMPLETED
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    answers = [line["response"] for line in read_lines(dest)]
    assert len(answers) == 3 and all("one text per request" in a["body"]["error"]["message"] for a in answers)
    assert not cluster.state("bedrock").jobs and not s3_server.keys(bucket, f"jobs/{shard.submit_token}/")


async def test_an_output_folder_emptied_under_a_finished_job_is_a_transient_failure_not_an_empty_result(
    adapter: BedrockBatchAdapter, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    shard = write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE)
    submitted = await adapter.submit(shard)
    assert (await wait_terminal(adapter, submitted.provider_batch_id)).completed == MINIMUM
    client = s3_server.client()
    for key in s3_server.keys(bucket, f"jobs/{shard.submit_token}/out/"):
        client.delete_object(Bucket=bucket, Key=key)
    dest = tmp_path / "out.jsonl"
    with pytest.raises(ProviderUnavailable, match=f"reports {MINIMUM} processed records, but .* holds none"):
        await adapter.fetch_results(submitted.provider_batch_id, dest, input_path=shard.input_path)
    assert dest.read_bytes() == b""


async def test_without_the_shard_input_records_are_still_read_for_billing(
    adapter: BedrockBatchAdapter, tmp_path: Path
) -> None:
    shard = write_shard(tmp_path, questions(MINIMUM, CLAUDE), CLAUDE)
    submitted = await adapter.submit(shard)
    await wait_terminal(adapter, submitted.provider_batch_id)
    dest = tmp_path / "out.jsonl"
    await adapter.fetch_results(submitted.provider_batch_id, dest)
    lines = read_lines(dest)
    assert sorted(line["custom_id"] for line in lines) == [f"R{n:010d}" for n in range(1, MINIMUM + 1)]
    assert all(line["response"]["body"]["usage"]["completion_tokens"] > 0 for line in lines)
