# One module past 400 lines on purpose: one table of hostile inputs run against every served route.
"""Hostile input against a real gateway: every answer is a 4xx in OpenAI's shape, never a 500.

Control characters in ids, query parameters, headers and body fields; integer ids out of the
database's range; JSON bodies nested absurdly deep or too large; an upload announcing more bytes
than the gateway accepts, or carrying two files; an input line nested too deep for validation; and
no client input can forge a line of the server's log. Routes are enumerated from the served OpenAPI
document, so a new route is covered without editing this module.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from gateway.api.inputs import MAX_DB_INT, MAX_JSON_BODY_BYTES, MAX_JSON_DEPTH
from gateway.pipeline.input_lines import MAX_LINE_DEPTH
from gateway.pipeline.intake import MULTIPART_ALLOWANCE
from tests.api.test_files import assert_error, chat_jsonl
from tests.conftest import GatewayProcess, loopback

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

ADMIN_KEY = "test-admin-key"
HOSTILE = ["\x00", "file-\x00", "\x00\nFORGED line", "id\r\nFORGED: x", "\x1b[31mred", "x\x7f", "x\x85y"]
"""Values with a control character: NUL, a forged log line, a terminal escape, DEL and a C1 control."""
METHODS = ("get", "post", "put", "delete")


@pytest.fixture(scope="module")
def http(gateway: GatewayProcess, team_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {team_key}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def admin(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def operations(gateway: GatewayProcess) -> list[tuple[str, str, dict[str, Any]]]:
    """``(method, path, operation)`` of every client and admin route in the served document."""
    document = loopback.get(f"{gateway.base_url}/schema/openapi.json", timeout=30).json()
    found = [
        (method, path, operation)
        for path, item in document["paths"].items()
        if path.startswith(("/v1/", "/admin/"))
        for method, operation in item.items()
        if method in METHODS
    ]
    assert len(found) >= 20, found
    return found


@pytest.fixture(scope="module")
def input_file(http: httpx.Client) -> str:
    """A valid batch input file of the team."""
    response = http.post("/v1/files", files={"file": ("in.jsonl", chat_jsonl(2))}, data={"purpose": "batch"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def client_for(path: str, http: httpx.Client, admin: httpx.Client) -> httpx.Client:
    return admin if path.startswith("/admin") else http


def params_of(operation: dict[str, Any], where: str) -> list[dict[str, Any]]:
    return [p for p in operation.get("parameters", []) if p["in"] == where]


def fill_path(path: str, operation: dict[str, Any], overrides: dict[str, str]) -> str:
    """The path with every parameter filled: ``overrides`` first, then a harmless value of its type."""
    for param in params_of(operation, "path"):
        harmless = "1" if param["schema"].get("type") == "integer" else "unknown-id"
        path = path.replace("{" + param["name"] + "}", quote(overrides.get(param["name"], harmless), safe=""))
    return path


# --- control characters -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE)
def test_a_control_character_in_a_path_id_is_400_on_every_route(
    http: httpx.Client, admin: httpx.Client, operations: list[tuple[str, str, dict[str, Any]]], value: str
) -> None:
    checked = 0
    for method, path, operation in operations:
        for param in params_of(operation, "path"):
            if param["schema"].get("type") != "string":
                continue
            url = fill_path(path, operation, {param["name"]: value})
            response = client_for(path, http, admin).request(method.upper(), url)
            assert_error(response, 400, code="invalid_characters")
            checked += 1
    assert checked >= 9


@pytest.mark.parametrize("value", HOSTILE)
def test_a_control_character_in_a_query_parameter_is_400_on_every_route(
    http: httpx.Client, admin: httpx.Client, operations: list[tuple[str, str, dict[str, Any]]], value: str
) -> None:
    checked = 0
    for method, path, operation in operations:
        for param in params_of(operation, "query"):
            url = fill_path(path, operation, {})
            response = client_for(path, http, admin).request(method.upper(), url, params={param["name"]: value})
            assert_error(response, 400, code="invalid_characters", param=param["name"])
            checked += 1
    assert checked >= 10


def test_an_unknown_query_parameter_with_a_control_character_is_400(http: httpx.Client) -> None:
    assert_error(http.get("/v1/batches", params={"whatever": "\x00"}), 400, code="invalid_characters")


@pytest.mark.parametrize("value", HOSTILE)
def test_nul_in_the_batch_input_file_id_is_400_not_a_database_error(http: httpx.Client, value: str) -> None:
    body = {"input_file_id": value, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert_error(http.post("/v1/batches", json=body), 400, code="invalid_characters", param="input_file_id")


def valid_bodies(input_file: str) -> dict[tuple[str, str], dict[str, Any]]:
    """A body each JSON-body operation accepts, keyed by (method, path)."""
    return {
        ("post", "/v1/batches"): {
            "input_file_id": input_file,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"note": "hello"},
        },
        ("post", "/v1/messages/batches"): {
            "requests": [{"custom_id": "a", "params": {"model": "gpt-4o-mini", "max_tokens": 5, "messages": []}}],
            "metadata": {"note": "hello"},
        },
        ("post", "/admin/keys"): {"team": "hostile-input", "name": "label"},
        ("post", "/admin/webhook_endpoints"): {
            "team": "hostile-input",
            "url": "https://hooks.example.com/x",
            "name": "l",
        },
        ("post", "/admin/estimate"): {"file_id": input_file, "model": "gpt-4o-mini"},
        ("post", "/v1/estimates"): {"file_id": input_file, "model": "gpt-4o-mini"},
        ("put", "/admin/budgets"): {"scope": "team:hostile-input", "period": "day", "limit_usd": 100000},
    }


def string_fields(body: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, list[str]]]:
    """``(param, key path)`` of every string in a body, nested ones included."""
    for key, value in body.items():
        if isinstance(value, str):
            yield prefix + key, [key]
        elif isinstance(value, dict):
            for name, path in string_fields(value, f"{prefix}{key}."):
                yield name, [key, *path]


def replaced(body: dict[str, Any], path: list[str], value: str) -> dict[str, Any]:
    copy = json.loads(json.dumps(body))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def test_every_json_body_operation_is_known_here(operations: list[tuple[str, str, dict[str, Any]]]) -> None:
    """The operations documenting a JSON body are exactly those this module sends bodies to."""
    with_json = {
        (method, path)
        for method, path, operation in operations
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    }
    assert with_json == set(valid_bodies("file-x"))


@pytest.mark.parametrize("value", ["x\x00", "x\x1b", "a\nb"])
def test_a_control_character_in_any_body_string_is_400(
    http: httpx.Client, admin: httpx.Client, input_file: str, value: str
) -> None:
    checked = 0
    for (method, path), body in valid_bodies(input_file).items():
        for param, key_path in string_fields(body):
            free_text = param.startswith("metadata.") or param == "name"
            response = client_for(path, http, admin).request(method.upper(), path, json=replaced(body, key_path, value))
            if free_text and value == "a\nb":
                assert response.status_code < 300, (path, param, response.text)
            else:
                assert_error(response, 400, code="invalid_characters", param=param)
            checked += 1
    assert checked >= 9


@pytest.mark.parametrize(
    "canary",
    ["\u00b2", "\u0663", "9" * 500, "0", "-1", str(10**12)],
    ids=["superscript", "arabic", "huge", "0", "-1", "1e12"],
)
def test_a_canary_hint_that_is_not_a_plain_count_is_400(http: httpx.Client, input_file: str, canary: str) -> None:
    """A superscript two passes ``str.isdigit`` but not ``int``: it was a 500."""
    body = valid_bodies(input_file)[("post", "/v1/batches")] | {"metadata": {"canary": canary}}
    assert_error(http.post("/v1/batches", json=body), 400, code="invalid_hint", param="metadata.canary")


def test_a_control_character_in_a_metadata_key_is_400(http: httpx.Client, input_file: str) -> None:
    body = valid_bodies(input_file)[("post", "/v1/batches")] | {"metadata": {"k\x00": "v"}}
    assert_error(http.post("/v1/batches", json=body), 400, code="invalid_characters", param="metadata")


def test_a_control_character_in_the_idempotency_key_is_400(http: httpx.Client, input_file: str) -> None:
    body = valid_bodies(input_file)[("post", "/v1/batches")]
    response = http.post("/v1/batches", json=body, headers={"Idempotency-Key": "key\twith tab"})
    assert_error(response, 400, code="invalid_characters", param="Idempotency-Key")


def raw_multipart(filename: bytes, purpose: bytes, content: bytes) -> tuple[bytes, str]:
    """A multipart body written byte for byte (clients percent-encode control characters in file names)."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + purpose + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/jsonl\r\n\r\n" + content + b"\r\n--b--\r\n"
    )
    return body, "multipart/form-data; boundary=b"


@pytest.mark.parametrize(
    ("filename", "purpose", "param"),
    [
        (b"in.jsonl", b"batch\x00", "purpose"),
        (b"in\x00.jsonl", b"batch", "file"),
        (b"in\nFORGED.jsonl", b"batch", "file"),
        (b"in\x1b[2J.jsonl", b"batch", "file"),
    ],
)
def test_a_control_character_in_an_upload_field_or_file_name_is_400(
    gateway: GatewayProcess, http: httpx.Client, filename: bytes, purpose: bytes, param: str
) -> None:
    before = stored_blobs(gateway)
    body, content_type = raw_multipart(filename, purpose, chat_jsonl(1))
    response = http.post("/v1/files", content=body, headers={"content-type": content_type})
    assert_error(response, 400, code="invalid_characters", param=param)
    assert stored_blobs(gateway) == before


def test_the_raw_multipart_helper_makes_an_upload_the_gateway_accepts(http: httpx.Client) -> None:
    body, content_type = raw_multipart(b"in.jsonl", b"batch", chat_jsonl(1))
    response = http.post("/v1/files", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.json()["filename"] == "in.jsonl"


def stored_blobs(gateway: GatewayProcess) -> set[str]:
    return {str(p) for p in (gateway.data_dir / "blobs").rglob("*") if p.is_file()}


# --- numbers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [str(MAX_DB_INT + 1), "100000000000000000000", "0", "-1", "99999999999999999999999999999999999999"]
)
def test_an_integer_id_out_of_range_is_400_on_every_route(
    admin: httpx.Client, operations: list[tuple[str, str, dict[str, Any]]], value: str
) -> None:
    checked = 0
    for method, path, operation in operations:
        for param in params_of(operation, "path"):
            if param["schema"].get("type") == "integer":
                response = admin.request(method.upper(), fill_path(path, operation, {param["name"]: value}))
                assert_error(response, 400, param=param["name"])
                checked += 1
    assert checked >= 2


def test_the_largest_integer_id_is_an_ordinary_404(admin: httpx.Client) -> None:
    assert_error(admin.post(f"/admin/alerts/{MAX_DB_INT}/ack"), 404, code="not_found")
    assert_error(admin.delete(f"/admin/budgets/{MAX_DB_INT}"), 404, code="not_found")


def test_an_id_that_is_not_an_integer_matches_no_route(admin: httpx.Client) -> None:
    """``1e20`` is not an integer in a URL: like any path that matches no route, a 404 in OpenAI's shape."""
    assert_error(admin.post("/admin/alerts/1e20/ack"), 404, code="unknown_url")
    assert_error(admin.delete("/admin/budgets/1.5"), 404, code="unknown_url")


@pytest.mark.parametrize("since", ["nan", "inf", "-inf", "1e400", "-1e308"])
def test_non_finite_or_huge_times_are_answered_without_a_server_error(admin: httpx.Client, since: str) -> None:
    for path in ("/admin/batches", "/admin/spend"):
        response = admin.get(path, params={"since": since})
        assert response.status_code < 500, (path, response.text)
        if response.status_code >= 400:
            assert_error(response, response.status_code)


# --- JSON bodies: depth and size --------------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_a_body_nested_100k_levels_deep_is_400_on_every_json_route(
    http: httpx.Client, admin: httpx.Client, input_file: str, opening: str
) -> None:
    closing = "]" if opening == "[" else "}"
    deep = opening * 100_000 + "1" + closing * 100_000
    for method, path in valid_bodies(input_file):
        response = client_for(path, http, admin).request(
            method.upper(), path, content=deep, headers={"content-type": "application/json"}
        )
        assert_error(response, 400, code="nesting_too_deep")


def test_the_depth_limit_is_exact(http: httpx.Client) -> None:
    at_limit = '{"x":' + "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1) + "}"
    over = '{"x":' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH + "}"
    headers = {"content-type": "application/json"}
    assert_error(http.post("/v1/batches", content=at_limit, headers=headers), 400, code="unknown_parameter")
    assert_error(http.post("/v1/batches", content=over, headers=headers), 400, code="nesting_too_deep")


def test_a_json_body_over_the_size_limit_is_413(http: httpx.Client, admin: httpx.Client, input_file: str) -> None:
    for (method, path), body in valid_bodies(input_file).items():
        if path == "/v1/messages/batches":
            continue  # its body holds the requests: bounded by max_upload_bytes (tests/api/test_message_batches.py)
        padded = json.dumps(body | {"padding": "x" * MAX_JSON_BODY_BYTES})
        response = client_for(path, http, admin).request(
            method.upper(), path, content=padded, headers={"content-type": "application/json"}
        )
        assert_error(response, 413, code="request_too_large")


# --- uploads ----------------------------------------------------------------------------------------------


def announce_upload(gateway: GatewayProcess, key: str, length: int) -> tuple[bytes, float]:
    """Send only the headers of an upload announcing ``length`` bytes; return the answer's start and its delay."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        head = (
            "POST /v1/files HTTP/1.1\r\nHost: gateway\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    return answer, time.monotonic() - started


def test_an_upload_announcing_3_gb_is_413_before_any_body_is_sent(gateway: GatewayProcess, team_key: str) -> None:
    answer, delay = announce_upload(gateway, team_key, 3 * 1024**3)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert body["error"]["code"] == "file_too_large"
    assert delay < 5


def test_an_upload_announcing_more_than_the_limit_is_refused_but_the_limit_is_not(
    gateway_factory: Any,
) -> None:
    small = gateway_factory({"BATCHGW_LIMITS__MAX_UPLOAD_BYTES": "1000"}).start()
    key = small.create_key("acme")
    answer, _ = announce_upload(small, key, 1000 + MULTIPART_ALLOWANCE + 1)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    # Within the allowance the body is read and judged by the file's own size.
    fitting = loopback.post(
        f"{small.base_url}/v1/files",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("in.jsonl", chat_jsonl(1))},
        data={"purpose": "batch"},
        timeout=30,
    )
    assert fitting.status_code == 200, fitting.text


def test_an_upload_with_two_file_parts_is_400_and_stores_nothing(gateway: GatewayProcess, http: httpx.Client) -> None:
    before = stored_blobs(gateway)
    files = [("file", ("a.jsonl", chat_jsonl(1))), ("file", ("b.jsonl", chat_jsonl(2)))]
    response = http.post("/v1/files", files=files, data={"purpose": "batch"})
    error = assert_error(response, 400, code="multiple_files", param="file")
    assert "more than one 'file' part" in error["message"]
    assert stored_blobs(gateway) == before


# --- an input line nested too deep -----------------------------------------------------------------------


def test_a_batch_whose_line_nests_5000_levels_deep_fails_with_the_line_number(http: httpx.Client) -> None:
    good = chat_jsonl(1).decode().strip()
    deep = json.dumps(
        {"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
    )
    deep = deep[:-2] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}}"
    content = f"{good}\n{deep}\n".encode()
    upload = http.post("/v1/files", files={"file": ("deep.jsonl", io.BytesIO(content))}, data={"purpose": "batch"})
    assert upload.status_code == 200, upload.text
    body = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    batch = http.post("/v1/batches", json=body).json()
    deadline = time.monotonic() + 30
    while batch["status"] == "validating" and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = http.get(f"/v1/batches/{batch['id']}").json()
    assert batch["status"] == "failed", batch
    errors = batch["errors"]["data"]
    assert [(e["code"], e["line"]) for e in errors] == [("nesting_too_deep", 2)]
    assert str(MAX_LINE_DEPTH) in errors[0]["message"]


# --- the server's log -------------------------------------------------------------------------------------


def test_no_request_forged_a_log_line_or_caused_a_traceback(gateway: GatewayProcess, http: httpx.Client) -> None:
    """Runs after the tests above (file order): their hostile values reached the server."""
    http.get("/v1/files/%00%0aFORGED%20line")
    http.get("/v1/files", params={"after": "\x00\nFORGED line"})
    log = gateway.log()
    assert not [line for line in log.splitlines() if line.startswith("FORGED")]
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]
