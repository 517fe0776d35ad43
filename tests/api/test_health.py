"""Probes and the OpenAPI document: /healthz, /readyz, /schema/openapi.json.

Liveness needs only the process; readiness needs the database, so a gateway whose database
cannot be reached is alive but answers 503 on /readyz. Unknown routes and methods answer in
OpenAI's error shape.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_URL, FreshDatabase, GatewayProcess, loopback


@pytest.fixture(scope="module")
def unreachable_database(
    gateway_factory: object, database_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    """A gateway whose database cannot be opened (it does not migrate at start, so it starts anyway)."""
    if database_kind == "sqlite":
        folder: Path = tmp_path_factory.mktemp("not-a-database")
        url = f"sqlite:///{folder}"
    else:
        assert PG_URL
        url = make_url(PG_URL).set(database="bgw_never_created").render_as_string(hide_password=False)
    gw: GatewayProcess = gateway_factory({"BATCHGW_AUTO_MIGRATE": "false"}, FreshDatabase(url=url))  # type: ignore[operator]
    gw.start(wait_ready=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            loopback.get(f"{gw.base_url}/healthz", timeout=1)
            return gw
        except httpx.HTTPError:
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)


def test_healthz_is_ok_without_a_key(gateway: GatewayProcess) -> None:
    response = loopback.get(f"{gateway.base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_when_the_database_answers(gateway: GatewayProcess) -> None:
    response = loopback.get(f"{gateway.base_url}/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok"}


def test_readyz_is_503_while_alive_when_the_database_is_unreachable(unreachable_database: GatewayProcess) -> None:
    assert loopback.get(f"{unreachable_database.base_url}/healthz").json() == {"status": "ok"}
    response = loopback.get(f"{unreachable_database.base_url}/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"]
    assert "password" not in response.text.lower()


def test_client_requests_answer_a_retryable_503_when_the_database_is_unreachable(
    unreachable_database: GatewayProcess,
) -> None:
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/batches/batch_x"), ("GET", "/v1/files")):
        response = loopback.request(method, unreachable_database.base_url + path, headers={"Authorization": "Bearer k"})
        assert response.status_code == 503, (path, response.text)
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "database_unavailable"
        assert response.json()["error"]["type"] == "server_error"
    log = unreachable_database.log()
    assert "database unavailable on GET /v1/models: OperationalError" in log
    assert "unhandled error" not in log  # what a 500 logs, with its traceback


def test_openapi_schema_describes_the_client_api(gateway: GatewayProcess) -> None:
    response = loopback.get(f"{gateway.base_url}/schema/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0].endswith("json")
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "batch-gateway"
    operations = {(path, method) for path, item in schema["paths"].items() for method in item}
    expected = {
        ("/v1/files", "post"),
        ("/v1/files", "get"),
        ("/v1/files/{file_id}", "get"),
        ("/v1/files/{file_id}", "delete"),
        ("/v1/files/{file_id}/content", "get"),
        ("/v1/batches", "post"),
        ("/v1/batches", "get"),
        ("/v1/batches/{batch_id}", "get"),
        ("/v1/batches/{batch_id}/cancel", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    }
    assert expected <= operations
    # A client key goes as a bearer token or, as Anthropic's clients send it, in x-api-key: both documented.
    schemes = schema["components"]["securitySchemes"]
    assert schemes["clientApiKey"] == {
        "type": "apiKey", "name": "x-api-key", "in": "header", "description": "A client key, as `x-api-key`."
    }  # fmt: skip
    for path in ("/v1/batches/{batch_id}", "/v1/messages/batches/{message_batch_id}"):
        assert schema["paths"][path]["get"]["security"] == [{"clientKey": []}, {"clientApiKey": []}], path


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nothing-here", 404, "unknown_url"),
        ("POST", "/v1/chat/completions", 404, "unknown_url"),
        ("PUT", "/v1/files", 405, "method_not_allowed"),
        ("DELETE", "/v1/batches/batch_x", 405, "method_not_allowed"),
    ],
)
def test_unknown_routes_answer_openai_errors(
    gateway: GatewayProcess, method: str, path: str, status: int, code: str
) -> None:
    response = loopback.request(method, gateway.base_url + path)
    assert response.status_code == status
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["type"] == "invalid_request_error"
