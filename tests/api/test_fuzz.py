"""Schema-driven fuzzing of every client (/v1) and admin (/admin) operation of a real gateway.

Schemathesis reads the OpenAPI document the gateway serves (``/schema/openapi.json``) and sends
what it describes, valid and invalid: boundary values, wrong types, missing and unknown fields,
strings with control characters, huge numbers. Every answer must be below 500, every error must
be in OpenAI's shape, and every answer must be one the document lists, with a body that fits it.
Requests carry a client key on /v1 and the admin key on /admin; some path ids are swapped for ids
of real objects so the handlers behind the 404s are fuzzed too.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from tests.conftest import GatewayProcess, loopback

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

MAX_EXAMPLES = 25
"""Generated cases per operation in the fuzzing phase (the coverage phase adds its own boundary cases);
with 23 operations this keeps a run on one database well under a minute on two cores."""
ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="module")
def real_ids(gateway: GatewayProcess, team_key: str) -> dict[str, str]:
    """A stored file and a batch of the fuzzing team, so some cases reach real objects."""
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    client = gateway.client(team_key)
    stored = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n")), purpose="batch")
    batch = client.batches.create(input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h")
    return {"file_id": stored.id, "batch_id": batch.id}


@pytest.fixture(scope="module")
def api_schema(gateway: GatewayProcess) -> Any:
    """The OpenAPI document as the gateway serves it (the test keeps its client and admin operations)."""
    return schemathesis.openapi.from_url(f"{gateway.base_url}/schema/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema").include(path_regex=r"^/(v1|admin)/")


def _with_real_ids(case: Case, real_ids: dict[str, str]) -> None:
    """Swap a generated path id for a real one when the generated one is short (a third of cases or so)."""
    for name, value in (case.path_parameters or {}).items():
        if name in real_ids and isinstance(value, str) and len(value) < 3:
            case.path_parameters[name] = real_ids[name]
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("input_file_id"), str) and len(body["input_file_id"]) < 3:
        body["input_file_id"] = real_ids["file_id"]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_operation_answers_a_server_error(
    case: Case, gateway: GatewayProcess, team_key: str, real_ids: dict[str, str]
) -> None:
    """Whatever the fuzzer sends, the gateway answers below 500, errors in OpenAI's shape (Anthropic's on the
    Anthropic-format routes)."""
    _with_real_ids(case, real_ids)
    key = ADMIN_KEY if case.path.startswith("/admin") else team_key
    reproduce = case.as_curl_command()
    try:
        response = case.call(base_url=gateway.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    except Exception as exc:
        raise AssertionError(f"no answer ({exc!r})\n{reproduce}\n--- gateway log ---\n{gateway.log()[-4000:]}") from exc
    assert response.status_code < 500, (
        f"{response.status_code} {response.text[:500]}\n{reproduce}\n--- gateway log ---\n{gateway.log()[-4000:]}"
    )
    if response.status_code >= 400 and case.path.startswith("/v1/messages"):  # the Anthropic-format routes
        body = response.json()
        assert set(body) == {"type", "error", "request_id"} and body["type"] == "error", reproduce
        assert set(body["error"]) == {"type", "message"}, reproduce
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], reproduce
    elif response.status_code >= 400:
        body = response.json()
        assert list(body) == ["error"], reproduce
        assert set(body["error"]) == {"message", "type", "param", "code"}, reproduce
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], reproduce
    # The document does not mislead: the status is one it lists for the operation, the body fits its schema.
    case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])


def test_the_gateway_log_holds_no_traceback(gateway: GatewayProcess) -> None:
    """After the fuzzing, no request has been answered from an unhandled exception."""
    assert loopback.get(f"{gateway.base_url}/healthz", timeout=10).status_code == 200
    assert "unhandled error" not in gateway.log(), gateway.log()[-5000:]
