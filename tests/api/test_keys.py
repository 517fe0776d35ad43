"""Key lifecycle through the admin API of a real gateway, judged by the official SDK: keys are listed without
their secrets, a revoked key is refused from its next request on (on every API process of the database), an
expired key is refused with its own code, and bad expiries are 400s naming ``expires_at``."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.api.batch_helpers import assert_error
from tests.conftest import GatewayProcess, free_port, loopback

ADMIN = {"Authorization": "Bearer test-admin-key"}


def admin(gateway: GatewayProcess, method: str, path: str, body: Any = None, **params: Any) -> httpx.Response:
    return loopback.request(
        method, f"{gateway.base_url}/admin/keys{path}", json=body, params=params, headers=ADMIN, timeout=30
    )


def create(gateway: GatewayProcess, team: str, **fields: Any) -> dict[str, Any]:
    response = admin(gateway, "POST", "", {"team": team, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def refused(client: openai.OpenAI) -> openai.AuthenticationError:
    with pytest.raises(openai.AuthenticationError) as caught:
        client.files.list()
    return caught.value


def test_keys_are_listed_with_their_use_and_never_their_secret(gateway: GatewayProcess) -> None:
    made = create(gateway, "initech", name="nightly labelling")
    assert made["key"].startswith(made["prefix"]) and made["status"] == "active" and made["last_used_at"] is None
    gateway.client(made["key"]).files.list()

    listed = admin(gateway, "GET", "", team="initech").json()
    [shown] = [k for k in listed["data"] if k["id"] == made["id"]]
    assert shown["team"] == "initech" and shown["name"] == "nightly labelling" and shown["prefix"] == made["prefix"]
    assert shown["last_used_at"] is not None and abs(shown["last_used_at"] - time.time()) < 60
    assert "key" not in shown and made["key"] not in admin(gateway, "GET", "").text
    assert admin(gateway, "GET", f"/{made['id']}").json() == shown
    assert_error(admin(gateway, "GET", "", team="no-such-team"), 404, param="team")
    assert_error(admin(gateway, "GET", "/key_nope"), 404)


def test_a_revoked_key_is_refused_at_once_and_other_keys_keep_working(gateway: GatewayProcess) -> None:
    doomed, kept = create(gateway, "hooli"), create(gateway, "hooli")
    client = gateway.client(doomed["key"])
    client.files.list()

    revoked = admin(gateway, "DELETE", f"/{doomed['id']}")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    error = refused(client)
    assert error.code == "api_key_revoked" and "revoked" in error.message
    gateway.client(kept["key"]).files.list()

    again = admin(gateway, "DELETE", f"/{doomed['id']}").json()
    assert again["revoked_at"] == revoked.json()["revoked_at"], "revoking twice moved the revocation time"
    ids = [k["id"] for k in admin(gateway, "GET", "", team="hooli").json()["data"]]
    assert doomed["id"] not in ids and kept["id"] in ids
    ids = [k["id"] for k in admin(gateway, "GET", "", team="hooli", include_revoked=True).json()["data"]]
    assert doomed["id"] in ids
    assert_error(admin(gateway, "DELETE", "/key_nope"), 404)


def test_an_expired_key_is_refused_with_its_own_code(gateway: GatewayProcess) -> None:
    made = create(gateway, "umbrella", expires_at=int(time.time()) + 2)
    client = gateway.client(made["key"])
    client.files.list()
    time.sleep(max(0.0, made["expires_at"] - time.time()) + 1.1)
    error = refused(client)
    assert error.code == "api_key_expired" and "expired" in error.message
    assert admin(gateway, "GET", f"/{made['id']}").json()["status"] == "expired"


@pytest.mark.parametrize("expires_at", [1, "tomorrow", True, 1.5, 2**62])
def test_a_bad_expiry_is_a_400_naming_it(gateway: GatewayProcess, expires_at: object) -> None:
    assert_error(admin(gateway, "POST", "", {"team": "acme", "expires_at": expires_at}), 400, param="expires_at")


def test_a_revocation_holds_on_every_api_process_of_the_database(
    gateway: GatewayProcess, database_kind: str
) -> None:
    if database_kind != "postgresql":
        pytest.skip("several API processes on one database need PostgreSQL")
    first = gateway
    second = GatewayProcess(gateway.data_dir, gateway.database_url, free_port()).start("serve", "--no-worker")
    try:
        made = create(first, "acme")
        replica = second.client(made["key"])
        replica.files.list()
        assert admin(first, "DELETE", f"/{made['id']}").status_code == 200
        assert refused(replica).code == "api_key_revoked"
    finally:
        second.stop()

