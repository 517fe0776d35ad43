"""The Bedrock batch inference emulator over real loopback HTTP, with its input and output on a real S3-wire
server; calls are signed by botocore or carry a bearer API key, and the AWS SDK drives one job end to end."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import quote

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from gateway.simulator import ProviderSpec, SimulatorCluster, embedding_vector, model_reply, text_tokens
from gateway.simulator.config import parse_config
from tests.conftest import S3Server, loopback

NAME = "bedrock"
KEY = "AKIAEMULATORKEY00001"
REGION = "us-east-1"
ACCOUNT = "111122223333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/BedrockBatchRole"
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
CLAUDE_GEO = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
TITAN = "amazon.titan-embed-text-v2:0"
COHERE_V3 = "cohere.embed-english-v3"
COHERE_V4 = "cohere.embed-v4:0"
LLAMA = "meta.llama3-8b-instruct-v1:0"
VERSION = "bedrock-2023-05-31"
MIN_RECORDS = 3
HOUR_S = 3600
TERMINAL = {"Completed", "PartiallyCompleted", "Expired", "Failed", "Stopped"}
ORDER = ["Submitted", "Validating", "Scheduled", "InProgress", "Completed"]
ARN = re.compile(rf"arn:aws:bedrock:{REGION}:{ACCOUNT}:model-invocation-job/(?P<id>[a-z0-9]{{12}})")
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def cluster(s3_server: S3Server, aws_env: None) -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(
        name=NAME, kind="bedrock", models=[CLAUDE, CLAUDE_GEO, TITAN, COHERE_V3, COHERE_V4, LLAMA], api_key=KEY,
        processing_delay_s=0.1,
        s3_endpoint_url=s3_server.endpoint_url, min_records=MIN_RECORDS,
    )  # fmt: skip
    with SimulatorCluster([spec], control_port=None) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    cluster.reset(NAME)


@pytest.fixture
def client(cluster: SimulatorCluster) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=cluster.base_url(NAME), headers=headers, timeout=10) as http:
        yield http


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@contextmanager
def slowed(cluster: SimulatorCluster, seconds: float) -> Iterator[None]:
    """Jobs created inside take about ``seconds`` from creation to their end."""
    state = cluster.state(NAME)
    before, state.processing_delay_s = state.processing_delay_s, seconds
    try:
        yield
    finally:
        state.processing_delay_s = before


def claude(text: str, **fields: Any) -> dict[str, Any]:
    """A Bedrock InvokeModel body for Claude."""
    message = {"role": "user", "content": [{"type": "text", "text": text}]}
    return {"anthropic_version": VERSION, "max_tokens": 50, "messages": [message], **fields}


def records(count: int, prefix: str = "REC") -> list[dict[str, Any]]:
    return [{"recordId": f"{prefix}{i:08d}", "modelInput": claude(f"question number {i}")} for i in range(count)]


def put_jsonl(s3: S3Server, bucket: str, key: str, lines: list[Any]) -> None:
    body = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    s3.client().put_object(Bucket=bucket, Key=key, Body=body.encode())


def create_body(bucket: str, name: str = "job-1", model: str = CLAUDE, source: str = "in/", **extra: Any) -> Any:
    return {
        "jobName": name, "roleArn": ROLE, "modelId": model,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/{source}"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}}, **extra,
    }  # fmt: skip


def create(client: httpx.Client, bucket: str, **fields: Any) -> str:
    answer = client.post("/model-invocation-job", json=create_body(bucket, **fields))
    assert answer.status_code == 200, answer.text
    arn: str = answer.json()["jobArn"]
    return arn


def job_path(arn: str) -> str:
    return "/model-invocation-job/" + quote(arn, safe="")


def get_job(client: httpx.Client, arn: str) -> dict[str, Any]:
    answer = client.get(job_path(arn))
    assert answer.status_code == 200, answer.text
    job: dict[str, Any] = answer.json()
    return job


def wait_for(client: httpx.Client, arn: str, statuses: set[str] = TERMINAL, seen: list[str] | None = None) -> Any:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        job = get_job(client, arn)
        if seen is not None and (not seen or seen[-1] != job["status"]):
            seen.append(job["status"])
        if job["status"] in statuses:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {arn} never reached {statuses}")


def outputs(s3: S3Server, bucket: str, arn: str) -> dict[str, bytes]:
    """The output objects of a job by name (under ``out/<job id>/``)."""
    folder = f"out/{arn.rsplit('/', 1)[-1]}/"
    found = {}
    for key in s3.keys(bucket, folder):
        found[key.removeprefix(folder)] = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return found


def jsonl(data: bytes) -> list[Any]:
    return [json.loads(line) for line in data.splitlines()]


def aws_error(answer: httpx.Response, status: int, exception: str) -> str:
    """The message of an AWS-shaped error answer, after checking its shape."""
    assert answer.status_code == status, answer.text
    assert answer.headers["x-amzn-ErrorType"] == exception
    body = answer.json()
    assert set(body) == {"message"}
    message: str = body["message"]
    return message


def signed(url: str, key: str = KEY, service: str = "bedrock", region: str = REGION) -> dict[str, str]:
    """The headers botocore's SigV4 signer adds to a GET of ``url``."""
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(key, "secret-not-checked"), service, region).add_auth(request)
    return dict(request.headers)


# --- lifecycle and output ----------------------------------------------------------------------------------


def test_a_claude_job_runs_submitted_to_completed_with_output_joined_by_record_id(
    cluster: SimulatorCluster, client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    first: list[dict[str, Any]] = [
        {"recordId": "REC00000001", "modelInput": claude("first question")},
        {"modelInput": claude("no record id here")},
        {"recordId": "REC00000003", "modelInput": claude("third", system="Be brief.")},
    ]
    invalid = {"anthropic_version": VERSION, "messages": [{"role": "user", "content": "no max_tokens"}]}
    second: list[dict[str, Any]] = [
        {"recordId": "REC00000004", "modelInput": claude("fourth")},
        {"recordId": "BAD", "modelInput": invalid},
    ]
    put_jsonl(s3_server, bucket, "in/first.jsonl", first)
    put_jsonl(s3_server, bucket, "in/second.jsonl", second)
    s3_server.client().put_object(Bucket=bucket, Key="in/notes.txt", Body=b"not an input file")
    seen: list[str] = []
    with slowed(cluster, 1.5):
        arn = create(client, bucket, model=CLAUDE_GEO)
        job = wait_for(client, arn, seen=seen)
    assert seen[0] == "Submitted" and "InProgress" in seen and seen[-1] == "Completed"
    assert [ORDER.index(status) for status in seen] == sorted(ORDER.index(status) for status in seen)
    match = ARN.fullmatch(job["jobArn"])
    assert match is not None and job["jobArn"] == arn
    counts = [job[f"{kind}RecordCount"] for kind in ("total", "processed", "success", "error")]
    assert counts == [5, 5, 4, 1] and "message" not in job and "clientRequestToken" not in job
    assert all(ISO.fullmatch(job[k]) for k in ("submitTime", "lastModifiedTime", "endTime", "jobExpirationTime"))
    submitted = datetime.fromisoformat(job["submitTime"])
    assert (datetime.fromisoformat(job["jobExpirationTime"]) - submitted).total_seconds() == 24 * HOUR_S
    assert job["timeoutDurationInHours"] == 24 and job["modelInvocationType"] == "InvokeModel"
    assert job["inputDataConfig"]["s3InputDataConfig"] == {"s3Uri": f"s3://{bucket}/in/", "s3InputFormat": "JSONL"}
    assert (job["modelId"], job["roleArn"], job["jobName"]) == (CLAUDE_GEO, ROLE, "job-1")

    written = outputs(s3_server, bucket, arn)
    assert set(written) == {"first.jsonl.out", "second.jsonl.out", "manifest.json.out"}
    lines = {line["recordId"]: line for name in ("first", "second") for line in jsonl(written[f"{name}.jsonl.out"])}
    inputs = {line.get("recordId"): line["modelInput"] for line in first + second}
    [generated] = set(lines) - set(inputs)
    assert re.fullmatch(r"[A-Z0-9]{11}", generated) and lines[generated]["modelInput"] == inputs[None]
    assert all(lines[record_id]["modelInput"] == body for record_id, body in inputs.items() if record_id)
    assert lines["BAD"]["error"]["errorCode"] == 400 and "max_tokens" in lines["BAD"]["error"]["errorMessage"]
    assert "modelOutput" not in lines["BAD"]
    answer = lines["REC00000003"]["modelOutput"]
    reply = model_reply(["Be brief.", "third"], "third", 50)
    assert answer["id"].startswith("msg_bdrk_") and (answer["type"], answer["role"]) == ("message", "assistant")
    assert answer["model"] == "claude-haiku-4-5-20251001"
    assert answer["content"] == [{"type": "text", "text": "Echo: third"}]
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("end_turn", None)
    assert (answer["usage"]["input_tokens"], answer["usage"]["output_tokens"]) == (
        reply.prompt_tokens,
        reply.completion_tokens,
    )
    successes = [line["modelOutput"]["usage"] for line in lines.values() if "modelOutput" in line]
    assert json.loads(written["manifest.json.out"]) == {
        "totalRecordCount": 5, "processedRecordCount": 5, "successRecordCount": 4, "errorRecordCount": 1,
        "inputTokenCount": sum(u["input_tokens"] for u in successes),
        "outputTokenCount": sum(u["output_tokens"] for u in successes),
    }  # fmt: skip


def test_a_titan_embeddings_job_answers_deterministic_vectors(
    client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    bodies: dict[str, dict[str, Any]] = {
        "SMALL": {"inputText": "hello world", "dimensions": 256},
        "DEFAULT": {"inputText": "default dimensions"},
        "RAW": {"inputText": "raw values", "normalize": False, "embeddingTypes": ["float", "binary"]},
        "WRONG": {"inputText": "x", "dimensions": 300},
    }
    put_jsonl(s3_server, bucket, "in/embed.jsonl", [{"recordId": k, "modelInput": v} for k, v in bodies.items()])
    arn = create(client, bucket, model=TITAN, source="in/embed.jsonl", timeoutDurationInHours=72)
    job = wait_for(client, arn)
    assert job["status"] == "Completed" and (job["successRecordCount"], job["errorRecordCount"]) == (3, 1)
    expiry = datetime.fromisoformat(job["jobExpirationTime"]) - datetime.fromisoformat(job["submitTime"])
    assert expiry.total_seconds() == 72 * HOUR_S
    written = outputs(s3_server, bucket, arn)
    lines = {line["recordId"]: line for line in jsonl(written["embed.jsonl.out"])}
    small, default, raw = (lines[k]["modelOutput"] for k in ("SMALL", "DEFAULT", "RAW"))
    assert len(small["embedding"]) == 256 and len(default["embedding"]) == 1024
    assert math.isclose(math.sqrt(sum(v * v for v in small["embedding"])), 1.0, abs_tol=1e-4)
    assert small["embeddingsByType"] == {"float": small["embedding"]}
    assert raw["embedding"] == embedding_vector("raw values", 1024)
    assert raw["embeddingsByType"]["binary"] == [1 if v > 0 else 0 for v in raw["embedding"]]
    assert small["inputTextTokenCount"] == text_tokens("hello world")
    assert lines["WRONG"]["error"]["errorCode"] == 400 and "dimensions" in lines["WRONG"]["error"]["errorMessage"]
    manifest = json.loads(written["manifest.json.out"])
    tokens = sum(text_tokens(str(bodies[k]["inputText"])) for k in ("SMALL", "DEFAULT", "RAW"))
    assert (manifest["inputTokenCount"], manifest["outputTokenCount"]) == (tokens, 0)


def test_a_cohere_embed_job_answers_vectors_without_token_counts_and_counts_them_in_the_manifest(
    client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    v4: dict[str, dict[str, Any]] = {
        "FLOATS": {"texts": ["alpha", "beta gamma"], "input_type": "search_document"},
        "BYTYPE": {"texts": ["delta"], "input_type": "search_query", "embedding_types": ["float", "int8"],
                   "output_dimension": 256},
        "NOTYPE": {"texts": ["epsilon"]},
        "SIZE": {"texts": ["zeta"], "input_type": "clustering", "output_dimension": 300},
    }  # fmt: skip
    put_jsonl(s3_server, bucket, "in/cohere4.jsonl", [{"recordId": k, "modelInput": v} for k, v in v4.items()])
    job = wait_for(client, create(client, bucket, model=COHERE_V4, source="in/cohere4.jsonl"))
    assert job["status"] == "Completed" and (job["successRecordCount"], job["errorRecordCount"]) == (2, 2)
    written = outputs(s3_server, bucket, job["jobArn"])
    lines = {line["recordId"]: line for line in jsonl(written["cohere4.jsonl.out"])}
    floats, by_type = lines["FLOATS"]["modelOutput"], lines["BYTYPE"]["modelOutput"]
    assert floats["response_type"] == "embeddings_floats" and floats["texts"] == ["alpha", "beta gamma"]
    assert floats["embeddings"] == [embedding_vector("alpha", 1536), embedding_vector("beta gamma", 1536)]
    assert by_type["response_type"] == "embeddings_by_type" and set(by_type["embeddings"]) == {"float", "int8"}
    assert by_type["embeddings"]["float"] == [embedding_vector("delta", 256)]
    assert all(-128 <= v <= 127 for v in by_type["embeddings"]["int8"][0])
    assert not any("token" in name.lower() for output in (floats, by_type) for name in output)
    assert "input_type" in lines["NOTYPE"]["error"]["errorMessage"]
    assert "output_dimension" in lines["SIZE"]["error"]["errorMessage"]
    manifest = json.loads(written["manifest.json.out"])
    tokens = sum(text_tokens(text) for text in ("alpha", "beta gamma", "delta"))
    assert (manifest["inputTokenCount"], manifest["outputTokenCount"]) == (tokens, 0)

    v3 = [
        {"recordId": "V3", "modelInput": {"texts": ["eta"], "input_type": "classification"}},
        {"recordId": "V4FIELD", "modelInput": {"texts": ["eta"], "input_type": "clustering", "output_dimension": 256}},
        {"recordId": "MANY", "modelInput": {"texts": ["t"] * 97, "input_type": "clustering"}},
        {"recordId": "LONG", "modelInput": {"texts": ["ok", "x" * 2049], "input_type": "clustering"}},
    ]  # fmt: skip
    put_jsonl(s3_server, bucket, "in/cohere3.jsonl", v3)
    job = wait_for(client, create(client, bucket, name="job-3", model=COHERE_V3, source="in/cohere3.jsonl"))
    lines = {line["recordId"]: line for line in jsonl(outputs(s3_server, bucket, job["jobArn"])["cohere3.jsonl.out"])}
    assert lines["V3"]["modelOutput"]["embeddings"] == [embedding_vector("eta", 1024)]
    assert "extraneous key [output_dimension]" in lines["V4FIELD"]["error"]["errorMessage"]
    assert "maximum item count: 96" in lines["MANY"]["error"]["errorMessage"]
    assert "maxLength: 2048" in lines["LONG"]["error"]["errorMessage"]


def test_a_model_family_without_an_emulated_body_gets_per_record_400s(
    client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    lines = [{"recordId": f"L{i}", "modelInput": {"prompt": "hi"}} for i in range(3)]
    put_jsonl(s3_server, bucket, "in/llama.jsonl", lines)
    job = wait_for(client, create(client, bucket, model=LLAMA))
    assert job["status"] == "Completed" and job["errorRecordCount"] == 3
    written = jsonl(outputs(s3_server, bucket, job["jobArn"])["llama.jsonl.out"])
    assert {line["error"]["errorCode"] for line in written} == {400}


def test_injected_failures_are_500_record_errors_and_the_malformed_fault_cuts_the_first_line(
    cluster: SimulatorCluster, client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    cluster.set_faults(NAME, fail_fraction=1.0, malformed_output_line=True, shuffle_output=False)
    put_jsonl(s3_server, bucket, "in/batch.jsonl", records(3))
    job = wait_for(client, create(client, bucket))
    assert job["status"] == "Completed" and (job["successRecordCount"], job["errorRecordCount"]) == (0, 3)
    written = outputs(s3_server, bucket, job["jobArn"])
    first, *rest = written["batch.jsonl.out"].splitlines()
    with pytest.raises(json.JSONDecodeError):
        json.loads(first)
    assert [json.loads(line)["error"]["errorCode"] for line in rest] == [500, 500]
    manifest = json.loads(written["manifest.json.out"])
    assert (manifest["errorRecordCount"], manifest["inputTokenCount"]) == (3, 0)


# --- create, idempotency and validation --------------------------------------------------------------------


def test_a_repeated_client_request_token_returns_the_same_arn_and_creates_one_job(
    cluster: SimulatorCluster, client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    put_jsonl(s3_server, bucket, "in/batch.jsonl", records(3))
    first = create(client, bucket, clientRequestToken="retry-token-1")
    again = create(client, bucket, clientRequestToken="retry-token-1")
    assert again == first and cluster.state(NAME).stats.batches_created == 1
    summaries = client.get("/model-invocation-jobs").json()["invocationJobSummaries"]
    assert [s["jobArn"] for s in summaries] == [first] and summaries[0]["clientRequestToken"] == "retry-token-1"


def test_create_refusals_name_the_offending_field(client: httpx.Client, s3_server: S3Server, bucket: str) -> None:
    def refused(body: Any) -> str:
        return aws_error(client.post("/model-invocation-job", json=body), 400, "ValidationException")

    assert "'colour'" in refused({**create_body(bucket), "colour": "blue"})
    nested = create_body(bucket)
    nested["inputDataConfig"]["s3InputDataConfig"]["region"] = "eu-west-1"
    assert "inputDataConfig.s3InputDataConfig.region" in refused(nested)
    assert "at 'jobName'" in refused(create_body(bucket, name="bad name!"))
    assert "at 'roleArn'" in refused({k: v for k, v in create_body(bucket).items() if k != "roleArn"})
    assert "at 'roleArn'" in refused(create_body(bucket) | {"roleArn": "arn:aws:iam::12:role/x"})
    assert "at 'clientRequestToken'" in refused(create_body(bucket, clientRequestToken="not_valid!"))
    for hours in (12, 169):
        assert "at 'timeoutDurationInHours'" in refused(create_body(bucket, timeoutDurationInHours=hours))
    csv = create_body(bucket)
    csv["inputDataConfig"]["s3InputDataConfig"]["s3InputFormat"] = "CSV"
    assert "s3InputFormat" in refused(csv)
    assert "outputDataConfig.s3OutputDataConfig.s3Uri" in refused(
        create_body(bucket) | {"outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "https://not-s3"}}}
    )
    assert "Converse" in refused(create_body(bucket, modelInvocationType="Converse"))
    assert "model identifier" in refused(create_body(bucket, model="anthropic.claude-unknown-v1:0"))
    put_jsonl(s3_server, bucket, "in/batch.jsonl", records(3))
    model_arn = f"arn:aws:bedrock:{REGION}::foundation-model/{CLAUDE}"
    assert ARN.fullmatch(create(client, bucket, name="by-arn", model=model_arn))
    taken = client.post("/model-invocation-job", json=create_body(bucket, name="by-arn"))
    assert "by-arn" in aws_error(taken, 400, "ConflictException")


def test_too_few_or_too_many_records_fail_validation_with_the_quota_in_the_message(
    cluster: SimulatorCluster, client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    put_jsonl(s3_server, bucket, "few/batch.jsonl", records(2))
    job = wait_for(client, create(client, bucket, source="few/"))
    assert job["status"] == "Failed" and "endTime" in job and "totalRecordCount" not in job
    assert job["message"] == "The number of records (2) is below the minimum (3) for a batch inference job."
    assert outputs(s3_server, bucket, job["jobArn"]) == {}
    put_jsonl(s3_server, bucket, "many/batch.jsonl", records(4))
    state = cluster.state(NAME)
    before, state.max_lines = state.max_lines, 3
    try:
        job = wait_for(client, create(client, bucket, name="too-many", source="many/"))
    finally:
        state.max_lines = before
    assert job["message"] == "The number of records (4) exceeds the maximum (3) for a batch inference job."


def test_a_bad_line_or_a_missing_input_fails_the_job_naming_where(
    client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    good = records(3)
    put_jsonl(s3_server, bucket, "json/batch.jsonl", [good[0], "{not json", *good[1:]])
    job = wait_for(client, create(client, bucket, name="not-json", source="json/"))
    assert job["status"] == "Failed"
    assert job["message"] == f"Line 2 of s3://{bucket}/json/batch.jsonl is not valid JSON."
    put_jsonl(s3_server, bucket, "shape/batch.jsonl", [*good, {"recordId": "X", "modelInput": "text"}])
    job = wait_for(client, create(client, bucket, name="no-object", source="shape/"))
    assert job["message"] == f"Line 4 of s3://{bucket}/shape/batch.jsonl has no object 'modelInput'."
    job = wait_for(client, create(client, bucket, name="missing", source="nowhere/gone.jsonl"))
    assert job["status"] == "Failed" and f"s3://{bucket}/nowhere/gone.jsonl" in job["message"]
    unwritable = create_body(bucket, name="no-output", source="json/")
    unwritable["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"] = "s3://no-such-bucket-here/out/"
    arn = client.post("/model-invocation-job", json=unwritable).json()["jobArn"]
    job = wait_for(client, arn)
    assert job["status"] == "Failed" and "s3://no-such-bucket-here/out/" in job["message"]


# --- get, list, stop, expiry -------------------------------------------------------------------------------


def test_get_by_url_encoded_arn_and_by_bare_id(client: httpx.Client, s3_server: S3Server, bucket: str) -> None:
    put_jsonl(s3_server, bucket, "in/batch.jsonl", records(3))
    arn = create(client, bucket)
    by_arn = client.get(job_path(arn))
    assert b"%2F" in by_arn.request.url.raw_path and by_arn.json()["jobArn"] == arn
    job_id = arn.rsplit("/", 1)[-1]
    assert client.get(f"/model-invocation-job/{job_id}").json()["jobArn"] == arn
    aws_error(client.get("/model-invocation-job/abcdefabcdef"), 404, "ResourceNotFoundException")
    elsewhere = arn.replace(ACCOUNT, "999999999999")
    aws_error(client.get(job_path(elsewhere)), 404, "ResourceNotFoundException")
    assert "jobIdentifier" in aws_error(client.get("/model-invocation-job/nope"), 400, "ValidationException")


def test_list_filters_sorts_and_pages(client: httpx.Client, s3_server: S3Server, bucket: str) -> None:
    put_jsonl(s3_server, bucket, "ok/batch.jsonl", records(3))
    put_jsonl(s3_server, bucket, "few/batch.jsonl", records(1))
    arns = [create(client, bucket, name=n, source=s) for n, s in (("alpha-one", "ok/"), ("alpha-two", "ok/"))]
    arns.append(create(client, bucket, name="beta-one", source="few/"))
    for arn in arns:
        wait_for(client, arn)

    def names(**query: Any) -> list[str]:
        answer = client.get("/model-invocation-jobs", params=query)
        assert answer.status_code == 200, answer.text
        return [summary["jobName"] for summary in answer.json()["invocationJobSummaries"]]

    assert names() == ["beta-one", "alpha-two", "alpha-one"]
    assert names(sortOrder="Ascending") == ["alpha-one", "alpha-two", "beta-one"]
    assert names(nameContains="alpha") == ["alpha-two", "alpha-one"]
    assert names(statusEquals="Failed") == ["beta-one"] and names(statusEquals="Completed", nameContains="one") == [
        "alpha-one"
    ]
    assert names(submitTimeAfter="2999-01-01T00:00:00Z") == []
    paged, token = [], None
    while True:
        page = client.get("/model-invocation-jobs", params={"maxResults": 1, **({"nextToken": token} if token else {})})
        paged += [summary["jobName"] for summary in page.json()["invocationJobSummaries"]]
        token = page.json().get("nextToken")
        if token is None:
            break
    assert paged == ["beta-one", "alpha-two", "alpha-one"]
    for bad in ({"maxResults": 0}, {"maxResults": 1001}, {"statusEquals": "Done"}, {"nextToken": "garbage!"}):
        aws_error(client.get("/model-invocation-jobs", params=bad), 400, "ValidationException")


def test_stop_goes_stopping_then_stopped_and_keeps_the_records_processed_before(
    cluster: SimulatorCluster, client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    put_jsonl(s3_server, bucket, "in/batch.jsonl", records(3))
    with slowed(cluster, 1.5):  # stopped while it waits to validate: nothing ran
        early = create(client, bucket, name="early")
        assert client.post(f"{job_path(early)}/stop").json() == {}
        assert get_job(client, early)["status"] == "Stopping"
        stopped = wait_for(client, early)
    assert stopped["status"] == "Stopped" and stopped["processedRecordCount"] == 0 and "endTime" in stopped
    assert outputs(s3_server, bucket, early) == {}

    put_jsonl(s3_server, bucket, "many/batch.jsonl", records(20))
    with slowed(cluster, 2.0):
        arn = create(client, bucket, name="midway", source="many/")
        deadline = time.monotonic() + 10
        while get_job(client, arn).get("processedRecordCount", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.set_faults(NAME, stall=True)  # hold the job between two records
        assert client.post(f"{job_path(arn)}/stop").json() == {}
        seen: list[str] = []
        job = wait_for(client, arn, seen=seen)
    assert seen[0] in ("Stopping", "Stopped") and job["status"] == "Stopped"
    processed = job["processedRecordCount"]
    assert 2 <= processed < 20 and job["totalRecordCount"] == 20
    written = outputs(s3_server, bucket, arn)
    assert len(jsonl(written["batch.jsonl.out"])) == processed
    assert json.loads(written["manifest.json.out"])["processedRecordCount"] == processed
    message = aws_error(client.post(f"{job_path(arn)}/stop"), 400, "ValidationException")
    assert "Stopped" in message


def test_expiry_is_expired_before_any_record_ran_and_partially_completed_after(
    cluster: SimulatorCluster, client: httpx.Client, s3_server: S3Server, bucket: str
) -> None:
    put_jsonl(s3_server, bucket, "in/batch.jsonl", records(6))
    cluster.set_faults(NAME, stall=True)
    waiting = create(client, bucket, name="waiting")
    assert wait_for(client, waiting, {"Scheduled"})["totalRecordCount"] == 6
    cluster.state(NAME).clock.advance(25 * HOUR_S)  # past the default 24-hour timeout
    expired = wait_for(client, waiting)
    assert expired["status"] == "Expired" and expired["processedRecordCount"] == 0
    assert outputs(s3_server, bucket, waiting) == {}

    cluster.set_faults(NAME, stall=False, expire=True, expire_after_fraction=0.5)
    partial = wait_for(client, create(client, bucket, name="partial"))
    assert partial["status"] == "PartiallyCompleted" and partial["processedRecordCount"] == 3
    written = outputs(s3_server, bucket, partial["jobArn"])
    assert len(jsonl(written["batch.jsonl.out"])) == 3
    manifest = json.loads(written["manifest.json.out"])
    assert (manifest["totalRecordCount"], manifest["processedRecordCount"]) == (6, 3)


# --- auth and call faults ----------------------------------------------------------------------------------


def test_auth_accepts_a_bearer_key_or_a_sigv4_header_with_the_right_key_and_scope(cluster: SimulatorCluster) -> None:
    url = f"{cluster.base_url(NAME)}/model-invocation-jobs"
    assert loopback.get(url, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert loopback.get(url, headers=signed(url)).status_code == 200
    wrong_key = loopback.get(url, headers=signed(url, key="AKIAANOTHERKEY000001"))
    assert aws_error(wrong_key, 403, "UnrecognizedClientException") == (
        "The security token included in the request is invalid."
    )
    wrong_service = loopback.get(url, headers=signed(url, service="s3"))
    assert "'bedrock'" in aws_error(wrong_service, 403, "InvalidSignatureException")
    aws_error(loopback.get(url, headers=signed(url, region="eu-west-1")), 403, "InvalidSignatureException")
    stale = signed(url) | {"X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 3600))}
    aws_error(loopback.get(url, headers=stale), 403, "InvalidSignatureException")
    aws_error(loopback.get(url, headers={"Authorization": "Bearer wrong"}), 403, "UnrecognizedClientException")
    aws_error(loopback.get(url), 403, "MissingAuthenticationTokenException")


def test_call_faults_render_a_message_body_and_the_error_type_header(
    cluster: SimulatorCluster, client: httpx.Client
) -> None:
    cluster.set_faults(NAME, rate_limit_next=1)
    throttled = client.get("/model-invocation-jobs")
    aws_error(throttled, 429, "ThrottlingException")
    assert throttled.headers["retry-after"] == "1"
    assert client.get("/model-invocation-jobs").status_code == 200
    cluster.set_faults(NAME, error_5xx_rate=1.0)
    aws_error(client.get("/model-invocation-jobs"), 500, "InternalServerException")
    cluster.set_faults(NAME, error_5xx_rate=0.0)
    aws_error(client.get("/no-such-operation"), 404, "UnknownOperationException")


def test_the_aws_sdk_drives_a_job_end_to_end(cluster: SimulatorCluster, s3_server: S3Server, bucket: str) -> None:
    put_jsonl(s3_server, bucket, "in/batch.jsonl", records(3))
    bedrock = boto3.client(
        "bedrock", endpoint_url=cluster.base_url(NAME), region_name=REGION, aws_access_key_id=KEY,
        aws_secret_access_key="not-checked",
    )  # fmt: skip
    body = create_body(bucket, name="sdk-job")
    arn = bedrock.create_model_invocation_job(**body)["jobArn"]
    deadline = time.monotonic() + 15
    job = bedrock.get_model_invocation_job(jobIdentifier=arn)
    while job["status"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.05)
        job = bedrock.get_model_invocation_job(jobIdentifier=arn)
    assert job["status"] == "Completed" and isinstance(job["submitTime"], datetime)
    assert job["clientRequestToken"]  # the SDK fills the idempotency token
    listed = bedrock.list_model_invocation_jobs(nameContains="sdk", sortOrder="Ascending")
    assert [summary["jobArn"] for summary in listed["invocationJobSummaries"]] == [arn]
    with pytest.raises(ClientError) as refused:
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert refused.value.response["Error"]["Code"] == "ValidationException"


def test_bedrock_settings_need_kind_bedrock() -> None:
    settings: list[tuple[str, Any]] = [
        ("min_records", 5),
        ("s3_endpoint_url", "http://127.0.0.1:9"),
        ("region", "eu-west-1"),
    ]
    for field, value in settings:
        with pytest.raises(ValueError, match=field):
            ProviderSpec(name="x", kind="openai", **{field: value})
    spec = ProviderSpec(name="x", kind="bedrock", region="eu-west-1", min_records=5)
    assert (spec.region, spec.min_records, spec.s3_endpoint_url) == ("eu-west-1", 5, None)
    with pytest.raises(ValueError, match="region"):
        parse_config('[[provider]]\nname = "b"\nkind = "bedrock"\nregion = "Mars"\n')
