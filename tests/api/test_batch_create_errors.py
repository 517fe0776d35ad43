"""The Batches API's create endpoint refusing bad requests: each answer is a 4xx in OpenAI's error shape
naming the parameter at fault."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types import FileObject

from tests.api.batch_helpers import CHAT, assert_error, create, good_file, upload
from tests.conftest import GatewayProcess


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess, team_key: str) -> Iterator[httpx.Client]:
    """Raw HTTP with the team's key, for requests the SDK cannot make."""
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {team_key}"}) as raw:
        yield raw


@pytest.fixture(scope="module")
def input_file(client: openai.OpenAI) -> FileObject:
    """A valid three-request input file of the default team."""
    return upload(client, good_file())


@pytest.mark.parametrize("endpoint", ["/v1/unknown", "/v1/responses", "v1/chat/completions", ""])
def test_unknown_endpoint_is_400(client: openai.OpenAI, input_file: FileObject, endpoint: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=input_file.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    assert_error(caught.value.response, 400, param="endpoint")


@pytest.mark.parametrize("window", ["48x", "0h", "8d", "169h", "24", "twenty-four hours", ""])
def test_bad_completion_window_is_400(client: openai.OpenAI, input_file: FileObject, window: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=input_file.id, endpoint=CHAT, completion_window=window)  # type: ignore[arg-type]
    assert_error(caught.value.response, 400, param="completion_window")


def test_completion_window_of_a_wrong_type_is_400(http: httpx.Client, input_file: FileObject) -> None:
    response = http.post(
        "/v1/batches", json={"input_file_id": input_file.id, "endpoint": CHAT, "completion_window": 24}
    )
    assert_error(response, 400, param="completion_window")


def test_metadata_at_openai_limits_is_accepted(client: openai.OpenAI, input_file: FileObject) -> None:
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}
    assert create(client, input_file.id, metadata=metadata).metadata == metadata


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 1},
        {"k": None},
        ["k", "v"],
    ],
    ids=["17-pairs", "65-char-key", "513-char-value", "int-value", "null-value", "list"],
)
def test_metadata_over_openai_limits_is_400(client: openai.OpenAI, input_file: FileObject, metadata: object) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input_file.id, metadata=metadata)
    error = assert_error(caught.value.response, 400)
    assert str(error["param"]).startswith("metadata")


def test_unknown_create_parameter_is_400(client: openai.OpenAI, input_file: FileObject) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input_file.id, extra_body={"temperature": 0.5})
    assert_error(caught.value.response, 400, code="unknown_parameter", param="temperature")


@pytest.mark.parametrize(
    "value", ["soon", {"anchor": "created_at", "seconds": 60}, {"anchor": "completed_at", "seconds": 3600}]
)
def test_bad_output_expires_after_is_400(client: openai.OpenAI, input_file: FileObject, value: object) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input_file.id, extra_body={"output_expires_after": value})
    assert_error(caught.value.response, 400, param="output_expires_after")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"", "invalid_json", None),
        (b"[1, 2]", "invalid_json", None),
        (b'"a string"', "invalid_json", None),
        (
            b'{"endpoint": "/v1/chat/completions", "completion_window": "24h"}',
            "missing_required_parameter",
            "input_file_id",
        ),
        (b'{"input_file_id": "file-x", "completion_window": "24h"}', "missing_required_parameter", "endpoint"),
        (
            b'{"input_file_id": "file-x", "endpoint": "/v1/chat/completions"}',
            "missing_required_parameter",
            "completion_window",
        ),
        (
            b'{"input_file_id": 7, "endpoint": "/v1/chat/completions", "completion_window": "24h"}',
            None,
            "input_file_id",
        ),
    ],
)
def test_bad_create_body_is_400(http: httpx.Client, body: bytes, code: str | None, param: str | None) -> None:
    response = http.post("/v1/batches", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, code=code, param=param)


def test_unknown_input_file_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        create(client, "file-doesnotexist")
    assert_error(caught.value.response, 404, code="not_found", param="input_file_id")


def test_deleted_input_file_is_404(client: openai.OpenAI) -> None:
    file_id = upload(client, good_file()).id
    client.files.delete(file_id)
    with pytest.raises(openai.NotFoundError) as caught:
        create(client, file_id)
    assert_error(caught.value.response, 404, param="input_file_id")


def test_unknown_batch_is_404(http: httpx.Client) -> None:
    assert_error(http.get("/v1/batches/batch_nope"), 404, code="not_found")
    assert_error(http.post("/v1/batches/batch_nope/cancel"), 404, code="not_found")
