"""The Files API through the official SDK: upload, retrieve, list, content, delete, and the limits.

Where the SDK cannot express a request (no auth, a body that is not multipart, a missing part),
httpx sends it. Every error must carry OpenAI's four-key error body and never be a 500.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.pipeline.line_figures import LineFigures
from tests.api.batch_helpers import assert_error
from tests.conftest import GatewayProcess

THIRTY_DAYS = 30 * 24 * 3600


def chat_jsonl(count: int, start: int = 0) -> bytes:
    """``count`` valid chat request lines."""
    lines = [
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Question {i}"}]},
            }
        )
        for i in range(start, start + count)
    ]
    return ("\n".join(lines) + "\n").encode()


def upload(
    client: openai.OpenAI, content: bytes, name: str = "input.jsonl", **kwargs: object
) -> openai.types.FileObject:
    return client.files.create(file=(name, io.BytesIO(content)), purpose="batch", **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess, team_key: str) -> Iterator[httpx.Client]:
    """Raw HTTP with the team's key, for requests the SDK cannot make."""
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {team_key}"}) as raw:
        yield raw


@pytest.fixture(scope="module")
def small_gateway(gateway_factory: object) -> GatewayProcess:
    """A gateway accepting uploads of at most 1000 bytes and 5 lines."""
    env = {"BATCHGW_LIMITS__MAX_UPLOAD_BYTES": "1000", "BATCHGW_LIMITS__MAX_FILE_LINES": "5"}
    return gateway_factory(env).start()  # type: ignore[operator, no-any-return]


@pytest.fixture(scope="module")
def small_client(small_gateway: GatewayProcess) -> openai.OpenAI:
    return small_gateway.client(small_gateway.create_key("acme"))


# --- upload, retrieve, content ------------------------------------------------------------------


def test_upload_returns_a_file_object_that_retrieve_repeats(client: openai.OpenAI) -> None:
    content = chat_jsonl(3)
    created = upload(client, content, name="questions é 日本.jsonl")
    assert created.id.startswith("file-")
    assert created.object == "file"
    assert created.bytes == len(content)
    assert created.filename == "questions é 日本.jsonl"
    assert created.purpose == "batch"
    assert created.status == "processed"
    assert created.expires_at == created.created_at + THIRTY_DAYS
    assert client.files.retrieve(created.id) == created


def test_upload_streamed_from_disk_reads_back_byte_for_byte(client: openai.OpenAI, tmp_path: Path) -> None:
    content = chat_jsonl(2000) + "ünïcödé € 日本\r\n".encode() + b"last line without newline"
    path = tmp_path / "big.jsonl"
    path.write_bytes(content)
    with path.open("rb") as handle:
        created = client.files.create(file=handle, purpose="batch")
    assert created.bytes == len(content)
    assert created.filename == "big.jsonl"
    downloaded = client.files.content(created.id)
    assert downloaded.content == content
    assert downloaded.response.headers["content-length"] == str(len(content))


def test_empty_file_uploads_with_zero_bytes(client: openai.OpenAI) -> None:
    created = upload(client, b"")
    assert created.bytes == 0
    assert client.files.content(created.id).content == b""


def test_expires_after_sets_expires_at(client: openai.OpenAI) -> None:
    created = upload(client, chat_jsonl(1), expires_after={"anchor": "created_at", "seconds": 3600})
    assert created.expires_at == created.created_at + 3600


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "60"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"}, "expires_after.seconds"),
        ({"expires_after[anchor]": "last_access", "expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ],
)
def test_bad_expires_after_is_400(http: httpx.Client, fields: dict[str, str], param: str) -> None:
    response = http.post("/v1/files", data={"purpose": "batch", **fields}, files={"file": ("a.jsonl", b"{}\n")})
    assert_error(response, 400, param=param)


# --- bad uploads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("purpose", ["fine-tune", "assistants", "nonsense", "BATCH"])
def test_purpose_other_than_batch_is_400(client: openai.OpenAI, purpose: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose=purpose)  # type: ignore[arg-type]
    error = assert_error(caught.value.response, 400, param="purpose")
    assert "batch" in error["message"]


def test_missing_purpose_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")})
    assert_error(response, 400, code="missing_required_parameter", param="purpose")


def test_missing_file_part_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/files", data={"purpose": "batch"}, files={"document": ("a.jsonl", b"{}\n")})
    assert_error(response, 400, code="missing_file", param="file")


@pytest.mark.parametrize("name", ["notes.txt", "input.json", "requests.jsonl.gz", "upload"])
def test_file_not_named_jsonl_is_400_as_at_openai_and_stores_nothing(client: openai.OpenAI, name: str) -> None:
    before = {f.id for f in client.files.list()}
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, chat_jsonl(2), name=name)
    error = assert_error(caught.value.response, 400, code="invalid_file_format", param="file")
    assert error["message"] == "Invalid file format for Batch API. Must be .jsonl"
    assert {f.id for f in client.files.list()} == before


def test_jsonl_in_capitals_is_a_jsonl_file(client: openai.OpenAI) -> None:
    assert upload(client, chat_jsonl(1), name="REQUESTS.JSONL").filename == "REQUESTS.JSONL"


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "application/json"}, {"content-type": "text/plain"}, {"content-type": "multipart/form-data"}],
)
def test_body_that_is_not_multipart_is_400(http: httpx.Client, headers: dict[str, str]) -> None:
    response = http.post("/v1/files", content=b'{"purpose": "batch"}', headers=headers)
    assert_error(response, 400, code="invalid_content_type", param="file")


def test_malformed_multipart_body_is_400_not_500(http: httpx.Client) -> None:
    response = http.post(
        "/v1/files", content=b"garbage\r\n", headers={"content-type": "multipart/form-data; boundary=xx"}
    )
    assert_error(response, 400, code="invalid_multipart", param="file")


def test_upload_of_exactly_the_size_limit_is_accepted(small_client: openai.OpenAI) -> None:
    content = b"x" * 1000
    created = upload(small_client, content)
    assert created.bytes == 1000
    assert small_client.files.content(created.id).content == content


@pytest.mark.parametrize("size", [1001, 5 * 1024 * 1024])
def test_upload_over_the_size_limit_is_413_and_stores_nothing(
    small_gateway: GatewayProcess, small_client: openai.OpenAI, size: int
) -> None:
    before = {f.id for f in small_client.files.list()}
    with pytest.raises(openai.APIStatusError) as caught:
        upload(small_client, b"y" * size)
    assert caught.value.status_code == 413
    error = assert_error(caught.value.response, 413, code="file_too_large", param="file")
    assert "1000" in error["message"]
    assert {f.id for f in small_client.files.list()} == before
    leftovers = [
        p for p in (small_gateway.data_dir / "blobs").rglob("*") if p.is_file() and b"y" * 100 in p.read_bytes()
    ]
    assert leftovers == []


@pytest.mark.parametrize("content", [b"1\n2\n3\n4\n5\n6\n", b"1\n2\n3\n4\n5\n6"], ids=["newline", "no-newline"])
def test_more_lines_than_the_limit_is_413(small_client: openai.OpenAI, content: bytes) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        upload(small_client, content)
    assert caught.value.status_code == 413
    error = assert_error(caught.value.response, 413, code="too_many_lines", param="file")
    assert "5" in error["message"]


def test_exactly_the_line_limit_is_accepted(small_client: openai.OpenAI) -> None:
    assert upload(small_client, b"1\n2\n3\n4\n5\n").bytes == 10


# --- list -----------------------------------------------------------------------------------------


def test_list_orders_filters_and_pages(client: openai.OpenAI) -> None:
    marker = upload(client, b"{}\n", name="marker.jsonl").id
    ids = [upload(client, chat_jsonl(1, start=i), name=f"f{i}.jsonl").id for i in range(5)]

    newest_first = client.files.list(limit=5)
    assert [f.id for f in newest_first.data] == ids[::-1]
    assert newest_first.has_more is True
    assert (newest_first.first_id, newest_first.last_id) == (ids[4], ids[0])
    assert [f.id for f in client.files.list(order="asc", after=marker).data] == ids
    assert [f.id for f in client.files.list(purpose="batch", limit=5).data] == ids[::-1]
    assert client.files.list(purpose="fine-tune").data == []

    first = client.files.list(limit=2, order="asc", after=marker)
    assert [f.id for f in first.data] == ids[:2]
    assert first.has_more is True
    assert (first.first_id, first.last_id) == (ids[0], ids[1])
    second = client.files.list(limit=2, order="asc", after=first.last_id)
    assert [f.id for f in second.data] == ids[2:4]
    assert second.has_more is True
    last = client.files.list(limit=2, order="asc", after=second.last_id)
    assert [f.id for f in last.data] == ids[4:]
    assert last.has_more is False
    assert [f.id for f in client.files.list(limit=2, after=ids[2]).data] == [ids[1], ids[0]]

    empty = client.files.with_raw_response.list(order="asc", after=ids[4]).http_response.json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}

    every = [f.id for f in client.files.list(limit=2)]
    assert every[:6] == [*ids[::-1], marker]
    assert len(every) == len(set(every)) == len(client.files.list().data)


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "10001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"order": "up"}, "order"),
    ],
)
def test_bad_list_query_is_400(http: httpx.Client, query: dict[str, str], param: str) -> None:
    assert_error(http.get("/v1/files", params=query), 400, param=param)


def test_list_after_an_unknown_id_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.files.list(after="file-doesnotexist")
    assert_error(caught.value.response, 404, param="after")


# --- delete -------------------------------------------------------------------------------------------


def test_delete_removes_the_file_everywhere(client: openai.OpenAI) -> None:
    created = upload(client, chat_jsonl(2))
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as caught:
            call(created.id)
        error = assert_error(caught.value.response, 404, code="not_found")
        assert created.id in error["message"]
    assert created.id not in {f.id for f in client.files.list()}


def test_an_upload_checked_while_it_arrives_keeps_its_figures_until_it_is_deleted(
    client: openai.OpenAI, gateway: GatewayProcess
) -> None:
    content = chat_jsonl(12_000)
    assert len(content) > 1 << 20  # large enough to be checked while it arrives
    created = upload(client, content)
    figures = gateway.data_dir / "blobs" / "files" / f"{created.id}.figures"
    stored = LineFigures.from_bytes(figures.read_bytes())
    assert stored is not None and len(stored) == 12_000 and stored.names == ["gpt-4o-mini"]
    client.files.delete(created.id)
    assert not figures.exists(), "the figures outlived their file"
    assert not figures.with_suffix("").exists()


@pytest.mark.parametrize("path", ["/v1/files/file-nope", "/v1/files/file-nope/content"])
def test_unknown_file_is_404(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404, code="not_found")
