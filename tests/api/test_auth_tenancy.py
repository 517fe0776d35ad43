"""Authentication and tenancy: a key sees only its own team's files and batches.

A missing or wrong key answers 401 with OpenAI's error body on every route; another team's ids
answer 404 exactly as ids that never existed (never 403), and lists never show them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai.types import Batch, FileObject

from tests.api.batch_helpers import assert_error
from tests.conftest import GatewayProcess, loopback

CHAT = "/v1/chat/completions"
ADMIN_KEY = "test-admin-key"

ROUTES = [
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file-x"),
    ("GET", "/v1/files/file-x/content"),
    ("DELETE", "/v1/files/file-x"),
    ("GET", "/v1/batches"),
    ("POST", "/v1/batches"),
    ("GET", "/v1/batches/batch_x"),
    ("POST", "/v1/batches/batch_x/cancel"),
]


def input_jsonl(count: int = 2) -> bytes:
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {"model": "gpt-4o-mini", "messages": []}}
        for i in range(count)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@pytest.fixture(scope="module")
def other_keys(gateway: GatewayProcess, team_key: str) -> tuple[str, str]:
    """A key of team ``globex`` and a second key of team ``acme`` (created side by side)."""
    with ThreadPoolExecutor(2) as pool:
        globex, acme_again = pool.map(gateway.create_key, ["globex", "acme"])
    return globex, acme_again


@pytest.fixture(scope="module")
def intruder(gateway: GatewayProcess, other_keys: tuple[str, str]) -> openai.OpenAI:
    """The SDK as team ``globex``."""
    return gateway.client(other_keys[0])


@pytest.fixture(scope="module")
def owned(client: openai.OpenAI) -> tuple[FileObject, Batch]:
    """A file and a batch of team ``acme``."""
    file = client.files.create(file=("acme.jsonl", io.BytesIO(input_jsonl())), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    return file, batch


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_missing_key_is_401_on_every_route(gateway: GatewayProcess, method: str, path: str) -> None:
    response = loopback.request(method, gateway.base_url + path)
    assert_error(response, 401, code="missing_api_key")


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Basic dXNlcjpwYXNz", "bgw-not-a-key"],
    ids=["empty", "bearer-only", "basic", "no-scheme"],
)
def test_malformed_authorization_is_401(gateway: GatewayProcess, authorization: str) -> None:
    response = loopback.get(f"{gateway.base_url}/v1/batches", headers={"Authorization": authorization})
    assert_error(response, 401, code="missing_api_key")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_wrong_key_is_401_on_every_route(gateway: GatewayProcess, method: str, path: str) -> None:
    response = loopback.request(method, gateway.base_url + path, headers={"Authorization": "Bearer bgw-wrong"})
    assert_error(response, 401, code="invalid_api_key")


def test_wrong_key_through_the_sdk_is_an_authentication_error(gateway: GatewayProcess, team_key: str) -> None:
    for key in ("bgw-wrong", team_key + "x", team_key[:-1], team_key.upper()):
        with pytest.raises(openai.AuthenticationError) as caught:
            gateway.client(key).batches.list()
        assert caught.value.status_code == 401
        assert_error(caught.value.response, 401, code="invalid_api_key")


def test_admin_key_is_not_a_client_key(gateway: GatewayProcess) -> None:
    admin_as_client = gateway.client(ADMIN_KEY)
    with pytest.raises(openai.AuthenticationError) as caught:
        admin_as_client.files.list()
    assert_error(caught.value.response, 401, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        admin_as_client.files.create(file=("a.jsonl", io.BytesIO(input_jsonl())), purpose="batch")


def test_client_key_and_wrong_admin_key_are_refused_by_the_admin_api(gateway: GatewayProcess, team_key: str) -> None:
    url = f"{gateway.base_url}/admin/providers"
    assert loopback.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    for key in (team_key, ADMIN_KEY + "x", "bgw-wrong"):
        assert_error(loopback.get(url, headers={"Authorization": f"Bearer {key}"}), 401, code="invalid_api_key")
    assert_error(loopback.get(url), 401)


def test_key_is_checked_before_the_body_is_read(gateway: GatewayProcess) -> None:
    bad_json = loopback.post(f"{gateway.base_url}/v1/batches", content=b"{nope")
    assert_error(bad_json, 401)
    not_multipart = loopback.post(
        f"{gateway.base_url}/v1/files", content=b"x" * 100_000, headers={"Authorization": "Bearer bgw-wrong"}
    )
    assert_error(not_multipart, 401, code="invalid_api_key")


def test_key_secret_is_not_echoed_in_errors(gateway: GatewayProcess, team_key: str) -> None:
    response = loopback.get(f"{gateway.base_url}/v1/files", headers={"Authorization": f"Bearer {team_key}zz"})
    assert_error(response, 401)
    assert team_key not in response.text


# --- tenancy -----------------------------------------------------------------------------------------


def test_a_second_key_of_the_same_team_sees_the_team_objects(
    gateway: GatewayProcess, other_keys: tuple[str, str], owned: tuple[FileObject, Batch]
) -> None:
    file, batch = owned
    colleague = gateway.client(other_keys[1])
    assert colleague.files.retrieve(file.id).id == file.id
    assert colleague.batches.retrieve(batch.id).id == batch.id
    assert file.id in {f.id for f in colleague.files.list()}
    assert batch.id in {b.id for b in colleague.batches.list()}


def test_another_team_gets_404_for_every_read_of_a_file(
    intruder: openai.OpenAI, client: openai.OpenAI, owned: tuple[FileObject, Batch]
) -> None:
    file, _ = owned
    fake = "file-" + "0" * (len(file.id) - 5)
    for call in (intruder.files.retrieve, intruder.files.content, intruder.files.delete):
        foreign, never_existed = (_not_found(call, file_id) for file_id in (file.id, fake))
        assert foreign == {**never_existed, "message": never_existed["message"].replace(fake, file.id)}
    assert client.files.content(file.id).content == input_jsonl()


def test_another_team_gets_404_for_every_use_of_a_batch(
    intruder: openai.OpenAI, client: openai.OpenAI, owned: tuple[FileObject, Batch]
) -> None:
    _, batch = owned
    fake = "batch_" + "0" * (len(batch.id) - 6)
    for call in (intruder.batches.retrieve, intruder.batches.cancel):
        foreign, never_existed = (_not_found(call, batch_id) for batch_id in (batch.id, fake))
        assert foreign == {**never_existed, "message": never_existed["message"].replace(fake, batch.id)}
    after = client.batches.retrieve(batch.id)
    assert after.status != "cancelling" and after.cancelling_at is None


def test_another_team_cannot_build_a_batch_on_a_foreign_file(
    intruder: openai.OpenAI, owned: tuple[FileObject, Batch]
) -> None:
    file, _ = owned
    with pytest.raises(openai.NotFoundError) as caught:
        intruder.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert_error(caught.value.response, 404, code="not_found", param="input_file_id")
    assert all(b.input_file_id != file.id for b in intruder.batches.list())


def test_lists_show_only_the_callers_team(
    intruder: openai.OpenAI, client: openai.OpenAI, owned: tuple[FileObject, Batch]
) -> None:
    file, batch = owned
    mine = intruder.files.create(file=("globex.jsonl", io.BytesIO(input_jsonl(1))), purpose="batch")
    my_batch = intruder.batches.create(input_file_id=mine.id, endpoint=CHAT, completion_window="24h")

    assert [f.id for f in intruder.files.list()] == [mine.id]
    assert [b.id for b in intruder.batches.list()] == [my_batch.id]
    assert [f.id for f in intruder.files.list(order="asc", purpose="batch")] == [mine.id]
    assert mine.id not in {f.id for f in client.files.list()}
    assert my_batch.id not in {b.id for b in client.batches.list(limit=100)}
    assert file.id in {f.id for f in client.files.list()}
    assert batch.id in {b.id for b in client.batches.list(limit=100)}


def test_another_teams_id_is_not_a_list_cursor(intruder: openai.OpenAI, owned: tuple[FileObject, Batch]) -> None:
    file, batch = owned
    with pytest.raises(openai.NotFoundError) as caught:
        intruder.files.list(after=file.id)
    assert_error(caught.value.response, 404, param="after")
    with pytest.raises(openai.NotFoundError) as caught:
        intruder.batches.list(after=batch.id)
    assert_error(caught.value.response, 404, param="after")


def _not_found(call: Callable[[str], object], object_id: str) -> dict:
    """The OpenAI error of a call that must answer 404."""
    with pytest.raises(openai.NotFoundError) as caught:
        call(object_id)
    return assert_error(caught.value.response, 404, code="not_found")
