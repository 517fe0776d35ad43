"""The Batches API through the official SDK: create, retrieve, list, cancel, and input validation.

Two gateways are used. The default one runs its worker, so input files are validated in the
background as in production. The "held" one runs no worker: its batches stay where the API left
them, the validation stage is run on demand (in this process, on the gateway's database), and a
``batchgw worker`` process is started only to finish cancellations. That is how a batch can be
seen sitting in ``validating`` or ``in_progress``, waiting for the execution engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import httpx
import openai
import pytest
from openai.types import Batch, FileObject
from sqlalchemy import update
from sqlmodel import col

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.leases import Lease
from gateway.db.models import Batch as BatchRow
from gateway.pipeline import validate
from gateway.settings import LimitSettings, Settings
from tests.api.batch_helpers import (
    CHAT,
    MODEL,
    ONE_MIB,
    assert_error,
    create,
    good_file,
    jsonl,
    request,
    upload,
    validated,
    wait_for,
)
from tests.conftest import GatewayProcess, free_port

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases


def run_validation_stage(gateway: GatewayProcess, batch_id: str) -> None:
    """Run the validation stage on one batch as a worker would, with the gateway's settings."""

    async def main() -> None:
        with mock.patch.dict(os.environ, gateway.env(), clear=True):
            settings = Settings()
        context = GatewayContext.create(settings)
        try:
            # Claim this batch as a worker would (a new fencing token), then run its validation stage.
            async with context.sessions() as session:
                await session.exec(
                    update(BatchRow)
                    .where(col(BatchRow.id) == batch_id)
                    .values(lease_owner="test-validation", lease_token=col(BatchRow.lease_token) + 1)
                )
                await session.commit()
                batch = await repo.get_batch(session, None, batch_id)
            assert batch is not None
            await validate.run(context, batch, Lease("test-validation", batch.lease_token, 30))
        finally:
            await context.close()

    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, main()).result()


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess, team_key: str) -> Iterator[httpx.Client]:
    """Raw HTTP with the team's key, for requests the SDK cannot make."""
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {team_key}"}) as raw:
        yield raw


@pytest.fixture(scope="module")
def input_file(client: openai.OpenAI) -> FileObject:
    """A valid three-request input file of the default team."""
    return upload(client, good_file())


@pytest.fixture(scope="module")
def held(gateway_factory: object) -> GatewayProcess:
    """A gateway without a worker, whose longest accepted input line is 4 MiB."""
    env = {"BATCHGW_WORKER__ENABLED_IN_SERVE": "false", "BATCHGW_LIMITS__MAX_LINE_BYTES": str(4 * ONE_MIB)}
    return gateway_factory(env).start()  # type: ignore[operator, no-any-return]


@pytest.fixture(scope="module")
def held_client(held: GatewayProcess) -> openai.OpenAI:
    return held.client(held.create_key("acme"))


# --- create and retrieve ---------------------------------------------------------------------


def test_create_answers_a_validating_batch_that_retrieve_repeats(client: openai.OpenAI, input_file: FileObject) -> None:
    batch = create(client, input_file.id, metadata={"project": "tests", "run": "1"})
    assert batch.id.startswith("batch_")
    assert batch.object == "batch"
    assert batch.status == "validating"
    assert batch.endpoint == CHAT
    assert batch.input_file_id == input_file.id
    assert batch.completion_window == "24h"
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.metadata == {"project": "tests", "run": "1"}
    assert batch.errors is None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (0, 0, 0)
    assert batch.in_progress_at is None and batch.failed_at is None and batch.cancelling_at is None
    assert batch.output_file_id is None and batch.error_file_id is None
    retrieved = client.batches.retrieve(batch.id)
    assert (retrieved.id, retrieved.created_at, retrieved.metadata) == (batch.id, batch.created_at, batch.metadata)


def test_metadata_copied_from_a_routed_batch_can_be_sent_again(client: openai.OpenAI, input_file: FileObject) -> None:
    # A routed batch's metadata holds the client's pairs and the gateway's own (gateway_...), more than 16 in all.
    theirs = {f"key{i}": f"value {i}" for i in range(16)}
    copied = {**theirs, "gateway_policy": "cheapest", "gateway_cost_usd": "0.5", "gateway_waiting": "no"}
    batch = create(client, input_file.id, metadata=copied)
    assert batch.metadata == theirs
    shown = client.batches.retrieve(batch.id).metadata or {}
    assert {key: value for key, value in shown.items() if not key.startswith("gateway_")} == theirs
    assert shown.get("gateway_cost_usd") != "0.5"  # the copied value is not taken for the gateway's own
    with pytest.raises(openai.BadRequestError):
        create(client, input_file.id, metadata={**theirs, "one more": "x"})


def test_embeddings_endpoint_is_accepted(client: openai.OpenAI) -> None:
    line = {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "emb", "input": "hi"}}
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(line)).id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert batch.endpoint == "/v1/embeddings"
    done = validated(client, batch.id)
    assert done.in_progress_at is not None
    assert done.request_counts.total == 1


def test_good_batch_passes_validation_with_its_counts_and_model(client: openai.OpenAI, input_file: FileObject) -> None:
    batch = validated(client, create(client, input_file.id).id)
    assert batch.in_progress_at is not None
    assert batch.in_progress_at >= batch.created_at
    assert batch.request_counts.total == 3
    assert batch.model == MODEL
    # Validation found nothing; routing may already have failed the batch (no provider serves the model here).
    assert all(e.code == "model_not_found" for e in (batch.errors.data if batch.errors else []))


def test_batch_of_several_models_has_no_single_model(client: openai.OpenAI) -> None:
    content = jsonl(request("a", "gpt-4o-mini"), request("b", "gpt-4o"), request("c", "gpt-4o-mini"))
    batch = validated(client, create(client, upload(client, content).id).id)
    assert batch.in_progress_at is not None
    assert batch.request_counts.total == 3
    assert batch.model is None


def test_batch_waits_in_progress_for_the_execution_engine(held: GatewayProcess, held_client: openai.OpenAI) -> None:
    content = (
        good_file(4) + b'{"custom_id": "last", "method": "POST", "url": "/v1/chat/completions", '
        b'"body": {"model": "gpt-4o-mini"}}'
    )
    batch = create(held_client, upload(held_client, content).id)
    time.sleep(0.3)
    assert held_client.batches.retrieve(batch.id).status == "validating"
    run_validation_stage(held, batch.id)
    waiting = held_client.batches.retrieve(batch.id)
    assert waiting.status == "in_progress"
    assert waiting.in_progress_at is not None
    assert waiting.request_counts.total == 5
    assert (waiting.request_counts.completed, waiting.request_counts.failed) == (0, 0)
    assert waiting.model == MODEL
    assert waiting.errors is None
    assert waiting.failed_at is None and waiting.finalizing_at is None


# --- input validation: every bad line is named ------------------------------------------------------


BAD_INPUTS: dict[str, tuple[bytes, str, int | None, str | None]] = {
    "broken json": (jsonl(request("a"), request("b"), b'{"custom_id": "c", "method": '), "invalid_json_line", 3, None),
    "duplicate custom_id": (
        jsonl(request("a"), request("b"), request("c"), request("b")),
        "duplicate_custom_id",
        4,
        "custom_id",
    ),
    "wrong url": (jsonl(request("a"), request("b", url="/v1/completions")), "url_mismatch", 2, "url"),
    "missing body": (jsonl(request("a"), {"custom_id": "b", "method": "POST", "url": CHAT}), "missing_body", 2, "body"),
    "missing model": (
        jsonl({"custom_id": "a", "method": "POST", "url": CHAT, "body": {"messages": []}}, request("b")),
        "missing_model",
        1,
        "body.model",
    ),
    "wrong method": (jsonl(request("a"), {**request("b"), "method": "GET"}), "invalid_method", 2, "method"),
    "missing custom_id": (
        jsonl(request("a"), {k: v for k, v in request("b").items() if k != "custom_id"}),
        "invalid_custom_id",
        2,
        "custom_id",
    ),
    "not an object": (jsonl(request("a"), b'["custom_id", "b"]'), "invalid_json_line", 2, None),
    "non-utf-8 bytes": (
        jsonl(request("a"), json.dumps(request("b", content="caf\u00e9")).encode().replace(b"caf\\u00e9", b"caf\xe9")),
        "invalid_utf8",
        2,
        None,
    ),
    "blank line": (jsonl(request("a"), b"", request("b")), "empty_line", 2, None),
    "whitespace line": (jsonl(request("a"), request("b"), b"  \t "), "empty_line", 3, None),
    "empty file": (b"", "empty_file", None, None),
    "byte order mark": (b"\xef\xbb\xbf" + jsonl(request("a"), request("b")), "invalid_json_line", 1, None),
}


@pytest.fixture(scope="module")
def failed_batches(client: openai.OpenAI) -> dict[str, Batch]:
    """One batch per bad input, all created first and then awaited together."""
    created = {name: create(client, upload(client, content).id).id for name, (content, *_) in BAD_INPUTS.items()}
    return {name: validated(client, batch_id) for name, batch_id in created.items()}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_the_batch_naming_the_line(failed_batches: dict[str, Batch], case: str) -> None:
    _, code, line, param = BAD_INPUTS[case]
    batch = failed_batches[case]
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.in_progress_at is None
    assert batch.errors is not None and batch.errors.object == "list"
    assert [(e.code, e.line, e.param) for e in batch.errors.data] == [(code, line, param)]
    if line is not None:
        assert f"Line {line}" in (batch.errors.data[0].message or "")


def test_a_byte_order_mark_is_named_as_such(failed_batches: dict[str, Batch]) -> None:
    errors = failed_batches["byte order mark"].errors
    assert errors is not None and "byte order mark (BOM)" in (errors.data[0].message or "")


def test_every_bad_line_of_a_file_is_listed_in_order(client: openai.OpenAI) -> None:
    content = jsonl(request("a"), b"{nope", request("a"), request("c", url="/v1/embeddings"), request("d"), b"")
    batch = validated(client, create(client, upload(client, content).id).id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("url_mismatch", 4),
        ("empty_line", 6),
    ]


def test_two_megabyte_line_fails_naming_it_under_the_default_limit(client: openai.OpenAI) -> None:
    limit = LimitSettings().max_line_bytes
    assert limit < 2 * ONE_MIB
    content = jsonl(request("small"), request("huge", content="z" * (2 * ONE_MIB)), request("after"), b"{broken")
    batch = validated(client, create(client, upload(client, content).id).id)
    assert batch.status == "failed"
    assert batch.errors is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("line_too_long", 2), ("invalid_json_line", 4)]
    assert "Line 2" in (batch.errors.data[0].message or "")
    assert str(limit) in (batch.errors.data[0].message or "")


def test_two_megabyte_line_passes_when_the_limit_is_raised(held: GatewayProcess, held_client: openai.OpenAI) -> None:
    content = jsonl(request("small"), request("huge", content="z" * (2 * ONE_MIB)), request("after"))
    batch = create(held_client, upload(held_client, content).id)
    run_validation_stage(held, batch.id)
    passed = held_client.batches.retrieve(batch.id)
    assert passed.status == "in_progress"
    assert passed.request_counts.total == 3


# --- list ---------------------------------------------------------------------------------------


def test_list_pages_newest_first(client: openai.OpenAI, input_file: FileObject) -> None:
    ids = [create(client, input_file.id, metadata={"page": str(i)}).id for i in range(5)]
    newest = ids[::-1]

    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest[:2]
    assert page.has_more is True
    assert (page.first_id, page.last_id) == (newest[0], newest[1])
    page = client.batches.list(limit=2, after=page.last_id)
    assert [b.id for b in page.data] == newest[2:4]
    assert page.has_more is True
    page = client.batches.list(limit=1, after=page.last_id)
    assert [b.id for b in page.data] == newest[4:]
    assert [b.id for b in client.batches.list(limit=2, after=newest[2]).data] == newest[3:5]

    everything = client.batches.list(limit=100)
    assert everything.has_more is False
    assert [b.id for b in everything.data][:5] == newest
    walked = [b.id for b in client.batches.list(limit=2)]
    assert walked == [b.id for b in everything.data]


def test_list_default_page_is_twenty(client: openai.OpenAI, input_file: FileObject) -> None:
    while len(client.batches.list(limit=100).data) <= 21:
        create(client, input_file.id)
    page = client.batches.list()
    assert len(page.data) == 20
    assert page.has_more is True


@pytest.mark.parametrize(
    ("query", "status"),
    [({"limit": "0"}, 400), ({"limit": "101"}, 400), ({"limit": "x"}, 400), ({"after": "batch_nope"}, 404)],
)
def test_bad_list_query_is_rejected(http: httpx.Client, query: dict[str, str], status: int) -> None:
    assert_error(http.get("/v1/batches", params=query), status, param=next(iter(query)))


# --- cancel and files in use ---------------------------------------------------------------------


def test_input_file_of_a_running_batch_cannot_be_deleted(held: GatewayProcess, held_client: openai.OpenAI) -> None:
    file_id = upload(held_client, good_file()).id
    batch = create(held_client, file_id)
    with pytest.raises(openai.ConflictError) as caught:
        held_client.files.delete(file_id)
    assert_error(caught.value.response, 409, code="file_in_use")
    run_validation_stage(held, batch.id)
    assert held_client.batches.retrieve(batch.id).status == "in_progress"
    with pytest.raises(openai.ConflictError):
        held_client.files.delete(file_id)
    assert held_client.files.retrieve(file_id).id == file_id


def test_cancel_ends_cancelled_from_validating_and_from_in_progress(
    held: GatewayProcess, held_client: openai.OpenAI
) -> None:
    file_id = upload(held_client, good_file()).id
    validating = create(held_client, file_id)
    in_progress = create(held_client, file_id)
    run_validation_stage(held, in_progress.id)
    assert held_client.batches.retrieve(in_progress.id).status == "in_progress"

    for batch in (validating, in_progress):
        cancelling = held_client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling"
        assert cancelling.cancelling_at is not None
        assert held_client.batches.cancel(batch.id).status == "cancelling"
    with pytest.raises(openai.ConflictError):
        held_client.files.delete(file_id)

    worker = GatewayProcess(
        data_dir=held.data_dir, database_url=held.database_url, port=free_port(), extra_env=held.extra_env
    ).start("worker")
    try:
        for batch in (validating, in_progress):
            cancelled = wait_for(held_client, batch.id, {"cancelled", "failed", "completed"})
            assert cancelled.status == "cancelled", worker.log()
            assert cancelled.cancelled_at is not None
            assert cancelled.cancelling_at is not None
            assert cancelled.cancelled_at >= cancelled.cancelling_at
    finally:
        worker.stop()
    assert held_client.batches.cancel(validating.id).status == "cancelled"
    assert held_client.files.delete(file_id).deleted is True


def test_failed_batch_cannot_be_cancelled_and_frees_its_file(client: openai.OpenAI) -> None:
    file_id = upload(client, b"{broken\n").id
    batch = validated(client, create(client, file_id).id)
    assert batch.status == "failed"
    with pytest.raises(openai.ConflictError) as caught:
        client.batches.cancel(batch.id)
    assert_error(caught.value.response, 409, code="batch_not_cancellable")
    assert client.batches.retrieve(batch.id).status == "failed"
    assert client.files.delete(file_id).deleted is True
