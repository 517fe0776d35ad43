"""Uploads checked while they arrive, through the official SDK against real gateway processes: a clean file keeps
what the check found, and its batch is validated without reading the file again; a batch the check does not apply
to, and a file with a problem, are checked in full and fail with their line numbers."""

from __future__ import annotations

import json
import time

import openai
import pytest

from gateway.pipeline.input_lines import UPLOAD_CHECK_VERSION
from gateway.pipeline.intake.upload_check import CHECK_FROM_BYTES
from gateway.settings import LimitSettings
from tests.api.batch_helpers import CHAT, MODEL, create, good_file, jsonl, request, upload, validated
from tests.conftest import GatewayProcess, cpu_pool_processes
from tests.engine import query

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

NO_CHECK = {"BATCHGW_LIMITS__UPLOAD_CHECK_PROCESSES": "0"}
LINES = 8_000
"""Requests in a file large enough to be checked while it uploads (over CHECK_FROM_BYTES)."""


def line_check(gateway: GatewayProcess, file_id: str) -> dict | None:
    [(stored,)] = query(gateway, "SELECT line_check FROM files WHERE id = :f", f=file_id)
    return json.loads(stored) if isinstance(stored, str) else stored


def remove_content(gateway: GatewayProcess, file_id: str) -> None:
    (gateway.data_dir / "blobs" / "files" / file_id).unlink()


def test_a_clean_upload_keeps_what_its_check_found(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    content = good_file(LINES) + jsonl(request("other", model="gpt-4o"))
    assert len(content) > CHECK_FROM_BYTES
    uploaded = upload(client, content)
    limits = LimitSettings()
    assert line_check(gateway, uploaded.id) == {
        "version": UPLOAD_CHECK_VERSION,
        "url": CHAT,
        "lines": LINES + 1,
        "size": len(content),
        "models": {MODEL: LINES, "gpt-4o": 1},
        "limits": [limits.max_line_bytes, limits.max_file_lines],
    }


def test_an_api_process_starts_its_check_process_with_it_and_the_first_upload_uses_it(
    gateway_factory: object,
) -> None:
    api: GatewayProcess = gateway_factory().start("serve", "--no-worker")  # type: ignore[operator]
    assert api.process is not None
    deadline = time.monotonic() + 10
    while not (started := {process.pid for process in cpu_pool_processes(api.process.pid)}):
        assert time.monotonic() < deadline, "no check process started with the API"
        time.sleep(0.05)
    assert len(started) == 1  # the API's one check process (no worker runs in it)
    client = api.client(api.create_key("acme"))
    uploaded = upload(client, good_file(LINES))
    assert line_check(api, uploaded.id) is not None
    assert {process.pid for process in cpu_pool_processes(api.process.pid)} == started


def test_a_batch_of_a_checked_file_is_validated_without_reading_it(
    gateway: GatewayProcess, client: openai.OpenAI, gateway_factory: object
) -> None:
    uploaded = upload(client, good_file(LINES))
    assert line_check(gateway, uploaded.id) is not None
    remove_content(gateway, uploaded.id)  # validation can only pass by adopting the check
    batch = validated(client, create(client, uploaded.id).id)
    assert batch.in_progress_at is not None, batch
    assert batch.request_counts is not None and batch.request_counts.total == LINES

    unchecked: GatewayProcess = gateway_factory(NO_CHECK).start()  # type: ignore[operator]
    other = unchecked.client(unchecked.create_key("acme"))
    uploaded = upload(other, good_file(LINES))
    assert line_check(unchecked, uploaded.id) is None
    remove_content(unchecked, uploaded.id)
    batch = validated(other, create(other, uploaded.id).id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == ["input_file_missing"]


def test_a_batch_for_another_endpoint_reads_the_file_and_names_every_line(
    gateway: GatewayProcess, client: openai.OpenAI
) -> None:
    uploaded = upload(client, good_file(LINES))
    assert line_check(gateway, uploaded.id) is not None, "checked for the chat endpoint"
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    batch = validated(client, batch.id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data[:3]] == [
        ("url_mismatch", 1),
        ("url_mismatch", 2),
        ("url_mismatch", 3),
    ]


@pytest.mark.parametrize(
    ("bad", "code"),
    [(b"{not json", "invalid_json_line"), (json.dumps(request("req-0")).encode(), "duplicate_custom_id")],
    ids=["not-json", "duplicate"],
)
def test_a_file_with_a_problem_keeps_no_check_and_its_batch_names_the_line(
    gateway: GatewayProcess, client: openai.OpenAI, bad: bytes, code: str
) -> None:
    content = good_file(LINES) + bad + b"\n" + jsonl(request("last"))
    uploaded = upload(client, content)
    assert uploaded.bytes == len(content), "the upload itself is accepted: validation happens per batch"
    assert line_check(gateway, uploaded.id) is None
    batch = validated(client, create(client, uploaded.id).id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [(code, LINES + 1)]


def test_an_upload_of_many_pieces_is_checked_whole_without_being_held(
    gateway: GatewayProcess, client: openai.OpenAI
) -> None:
    content = good_file(60_000)  # about 9 MB, many of the check's reads
    started = time.monotonic()
    uploaded = upload(client, content)
    elapsed = time.monotonic() - started
    found = line_check(gateway, uploaded.id)
    assert found is not None and found["lines"] == 60_000 and found["size"] == len(content)
    assert elapsed < 10, f"the upload took {elapsed:.1f} s"


def test_a_small_upload_is_checked_with_its_batch(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    content = good_file(30)
    assert len(content) < CHECK_FROM_BYTES
    uploaded = upload(client, content)
    assert line_check(gateway, uploaded.id) is None
    batch = validated(client, create(client, uploaded.id).id)
    assert batch.in_progress_at is not None and batch.request_counts is not None
    assert batch.request_counts.total == 30
