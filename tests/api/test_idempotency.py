"""``Idempotency-Key`` on POST /v1/files and POST /v1/batches.

A retry with the same key and body answers the original object and creates nothing; the same key
with another body answers 409; keys belong to a team and to one kind of create.
"""

from __future__ import annotations

import io
import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types import Batch, FileObject

from tests.api.batch_helpers import assert_error
from tests.conftest import GatewayProcess

CHAT = "/v1/chat/completions"


def new_key() -> str:
    return f"idem-{uuid.uuid4()}"


def input_jsonl(tag: str, count: int = 2) -> bytes:
    lines = [
        {"custom_id": f"{tag}-{i}", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini", "messages": []}}
        for i in range(count)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(client: openai.OpenAI, content: bytes, key: str | None = None, **kwargs: object) -> FileObject:
    headers = {"Idempotency-Key": key} if key else {}
    return client.files.create(
        file=("input.jsonl", io.BytesIO(content)),
        purpose="batch",
        extra_headers=headers,
        **kwargs,  # type: ignore[arg-type]
    )


def create(client: openai.OpenAI, file_id: str, key: str | None = None, **kwargs: object) -> Batch:
    headers = {"Idempotency-Key": key} if key else {}
    return client.batches.create(
        input_file_id=file_id,
        endpoint=CHAT,
        completion_window="24h",
        extra_headers=headers,
        **kwargs,  # type: ignore[arg-type]
    )


def batches_reading(client: openai.OpenAI, file_id: str) -> list[str]:
    """Ids of the team's batches whose input is ``file_id``."""
    return [b.id for b in client.batches.list(limit=100) if b.input_file_id == file_id]


@pytest.fixture(scope="module")
def other_client(gateway: GatewayProcess) -> openai.OpenAI:
    """The SDK as team ``globex``."""
    return gateway.client(gateway.create_key("globex"))


@pytest.fixture()
def input_file(client: openai.OpenAI) -> FileObject:
    """A fresh input file (without an Idempotency-Key)."""
    return upload(client, input_jsonl(uuid.uuid4().hex[:8]))


# --- batches -----------------------------------------------------------------------------------------


def test_batch_retried_with_the_same_key_is_the_same_batch(client: openai.OpenAI, input_file: FileObject) -> None:
    key = new_key()
    first = create(client, input_file.id, key, metadata={"try": "same"})
    retries = [create(client, input_file.id, key, metadata={"try": "same"}) for _ in range(3)]
    assert {b.id for b in retries} == {first.id}
    assert all(b.created_at == first.created_at for b in retries)
    assert batches_reading(client, input_file.id) == [first.id]


def test_batch_key_reused_with_another_body_is_409(client: openai.OpenAI, input_file: FileObject) -> None:
    key = new_key()
    original = create(client, input_file.id, key, metadata={"v": "1"})
    for changed in ({"metadata": {"v": "2"}}, {}, {"extra_body": {"completion_window": "48h"}}):
        with pytest.raises(openai.ConflictError) as caught:
            create(client, input_file.id, key, **changed)
        assert_error(caught.value.response, 409, code="idempotency_key_reused")
    other_file = upload(client, input_jsonl("other"))
    with pytest.raises(openai.ConflictError):
        create(client, other_file.id, key, metadata={"v": "1"})
    assert batches_reading(client, input_file.id) == [original.id]
    assert batches_reading(client, other_file.id) == []
    assert create(client, input_file.id, key, metadata={"v": "1"}).id == original.id


def test_batches_without_a_key_are_never_merged(client: openai.OpenAI, input_file: FileObject) -> None:
    ids = {create(client, input_file.id).id for _ in range(3)}
    assert len(ids) == 3
    assert set(batches_reading(client, input_file.id)) == ids


def test_batch_keys_belong_to_a_team(
    client: openai.OpenAI, other_client: openai.OpenAI, input_file: FileObject
) -> None:
    key = new_key()
    mine = create(client, input_file.id, key)
    their_file = upload(other_client, input_jsonl("globex"))
    theirs = create(other_client, their_file.id, key)
    assert theirs.id != mine.id
    assert theirs.input_file_id == their_file.id
    assert create(other_client, their_file.id, key).id == theirs.id
    assert create(client, input_file.id, key).id == mine.id
    with pytest.raises(openai.NotFoundError):
        other_client.batches.retrieve(mine.id)


def test_concurrent_retries_create_one_batch(client: openai.OpenAI, input_file: FileObject) -> None:
    key = new_key()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: create(client, input_file.id, key), range(6)))
    assert len({b.id for b in results}) == 1
    assert batches_reading(client, input_file.id) == [results[0].id]


def test_long_idempotency_key_is_honoured_or_rejected_never_500(client: openai.OpenAI, input_file: FileObject) -> None:
    key = "k" * 300
    try:
        first = create(client, input_file.id, key)
    except openai.BadRequestError as exc:
        assert_error(exc.response, 400, param="Idempotency-Key")
        assert batches_reading(client, input_file.id) == []
        return
    assert create(client, input_file.id, key).id == first.id
    assert batches_reading(client, input_file.id) == [first.id]


# --- files -------------------------------------------------------------------------------------------


def test_upload_retried_with_the_same_key_is_the_same_file(client: openai.OpenAI) -> None:
    key, content = new_key(), input_jsonl("same")
    first = upload(client, content, key)
    again = upload(client, content, key)
    assert again == first
    assert [f.id for f in client.files.list() if f.id in {first.id, again.id}] == [first.id]
    assert client.files.content(first.id).content == content


def test_upload_key_reused_with_other_content_is_409(client: openai.OpenAI) -> None:
    key = new_key()
    first = upload(client, input_jsonl("one"), key)
    before = [f.id for f in client.files.list()]
    with pytest.raises(openai.ConflictError) as caught:
        upload(client, input_jsonl("two"), key)
    assert_error(caught.value.response, 409, code="idempotency_key_reused")
    assert [f.id for f in client.files.list()] == before
    assert client.files.content(first.id).content == input_jsonl("one")


def test_upload_key_reused_with_another_expiry_is_409(client: openai.OpenAI) -> None:
    key, content = new_key(), input_jsonl("expiry")
    upload(client, content, key)
    with pytest.raises(openai.ConflictError):
        upload(client, content, key, expires_after={"anchor": "created_at", "seconds": 3600})


def test_upload_keys_belong_to_a_team(client: openai.OpenAI, other_client: openai.OpenAI) -> None:
    key = new_key()
    mine = upload(client, input_jsonl("acme"), key)
    theirs = upload(other_client, input_jsonl("globex"), key)
    assert theirs.id != mine.id
    assert other_client.files.content(theirs.id).content == input_jsonl("globex")
    assert upload(client, input_jsonl("acme"), key).id == mine.id


def test_a_key_used_for_a_file_is_free_for_a_batch(client: openai.OpenAI) -> None:
    key = new_key()
    file = upload(client, input_jsonl("kinds"), key)
    batch = create(client, file.id, key)
    assert batch.input_file_id == file.id
    assert create(client, file.id, key).id == batch.id
    assert upload(client, input_jsonl("kinds"), key).id == file.id
