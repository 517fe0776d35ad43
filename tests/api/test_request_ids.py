"""Every answer names a request id, as OpenAI's (``x-request-id``) and Anthropic's (``request-id``) APIs do."""

from __future__ import annotations

import re
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.api.batch_helpers import create, good_file, upload
from tests.conftest import GatewayProcess

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url) as raw:
        yield raw


def request_id(response: httpx.Response) -> str:
    """The answer's one request id, the same under both names."""
    assert len(response.headers.get_list("x-request-id")) == 1, response.headers
    assert len(response.headers.get_list("request-id")) == 1, response.headers
    assert response.headers["x-request-id"] == response.headers["request-id"]
    return response.headers["x-request-id"]


def test_the_openai_sdk_sees_a_fresh_request_id_on_every_answer(client: openai.OpenAI) -> None:
    listed = client.files.with_raw_response.list()
    uploaded = client.files.with_raw_response.create(file=("input.jsonl", good_file()), purpose="batch")
    ids = [listed.request_id, uploaded.request_id]
    with pytest.raises(openai.NotFoundError) as caught:
        client.files.retrieve("file-unknown")
    ids.append(caught.value.request_id)
    assert all(isinstance(value, str) and REQUEST_ID.fullmatch(value) for value in ids), ids
    assert len(set(ids)) == 3
    assert request_id(listed.http_response) == listed.request_id


def test_status_reads_answered_by_their_own_middleware_carry_one_too(client: openai.OpenAI) -> None:
    batch = create(client, upload(client, good_file()).id)
    reads = [client.batches.with_raw_response.retrieve(batch.id) for _ in range(3)]
    ids = [request_id(read.http_response) for read in reads]
    assert all(REQUEST_ID.fullmatch(value) for value in ids) and len(set(ids)) == 3
    assert reads[-1].parse().id == batch.id


def test_refusals_health_and_unknown_routes_carry_one(http: httpx.Client) -> None:
    for response in (http.get("/v1/files"), http.get("/healthz"), http.get("/v1/nowhere")):
        assert REQUEST_ID.fullmatch(request_id(response)), response


def test_an_anthropic_error_names_the_id_of_its_header_in_its_body(gateway: GatewayProcess, team_key: str) -> None:
    claude = anthropic.Anthropic(base_url=gateway.base_url, api_key=team_key, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.batches.retrieve("msgbatch_unknown")
    response = caught.value.response
    assert response.json()["request_id"] == request_id(response) == caught.value.request_id
    listed = claude.messages.batches.with_raw_response.list()
    assert REQUEST_ID.fullmatch(request_id(listed.http_response))
