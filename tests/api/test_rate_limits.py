"""Request rate limits of client keys and teams on real gateways, judged by the official SDK: a key over its
limit gets OpenAI's 429 with Retry-After and is admitted again once it has waited that long; a team's limit
holds for all its keys together and not for other teams; on PostgreSQL two API processes share one limit."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.api.batch_helpers import assert_error
from tests.conftest import GatewayProcess, free_port, loopback

PER_MINUTE = 20  # one every 3 s, in bursts of up to 2 (slow enough for a loaded machine to send a burst in time)
BURST = 2


def burst(key: str, gateway: GatewayProcess, count: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"}
    return [loopback.get(f"{gateway.base_url}/v1/files", headers=headers, timeout=30) for _ in range(count)]


def assert_rate_limited(response: httpx.Response) -> float:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert "Please try again in" in error["message"]
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60 / PER_MINUTE + 1
    return retry_after


@pytest.fixture(scope="module")
def key_limited(gateway_factory: Any) -> GatewayProcess:
    started: GatewayProcess = gateway_factory({"BATCHGW_LIMITS__KEY_REQUESTS_PER_MINUTE": str(PER_MINUTE)}).start()
    return started


@pytest.fixture(scope="module")
def team_limited(gateway_factory: Any) -> GatewayProcess:
    started: GatewayProcess = gateway_factory({"BATCHGW_LIMITS__TEAM_REQUESTS_PER_MINUTE": str(PER_MINUTE)}).start()
    return started


def test_a_key_over_its_limit_gets_a_429_with_retry_after_and_is_admitted_after_it(
    key_limited: GatewayProcess,
) -> None:
    key, other = key_limited.create_key("acme"), key_limited.create_key("acme")
    answers = burst(key, key_limited, BURST + 1)
    assert [r.status_code for r in answers[:BURST]] == [200] * BURST, "a burst of a tenth of a minute is admitted"
    retry_after = assert_rate_limited(answers[BURST])
    assert burst(other, key_limited, 1)[0].status_code == 200, "another key of the team has its own limit"

    with pytest.raises(openai.RateLimitError) as caught:
        key_limited.client(key).files.list()
    assert caught.value.code == "rate_limit_exceeded"
    time.sleep(retry_after)
    assert burst(key, key_limited, 1)[0].status_code == 200


def test_a_team_limit_holds_for_its_keys_together_and_not_for_other_teams(team_limited: GatewayProcess) -> None:
    first, second = team_limited.create_key("acme"), team_limited.create_key("acme")
    outsider = team_limited.create_key("globex")
    answers = burst(first, team_limited, 1) + burst(second, team_limited, BURST)
    assert [r.status_code for r in answers[:BURST]] == [200] * BURST
    assert_rate_limited(answers[BURST])
    assert "team 'acme'" in answers[BURST].json()["error"]["message"]
    assert burst(outsider, team_limited, 1)[0].status_code == 200


def test_a_refused_request_reserves_nothing(key_limited: GatewayProcess) -> None:
    key = key_limited.create_key("initech")
    assert all(r.status_code == 200 for r in burst(key, key_limited, BURST))
    refused = [r for r in burst(key, key_limited, 10) if r.status_code == 429]
    assert refused, "nothing was refused past the burst"
    # Had each refusal reserved a slot, the tenth would wait ten intervals.
    assert max(assert_rate_limited(r) for r in refused) <= 60 / PER_MINUTE + 1


def test_admin_and_unauthenticated_calls_are_not_counted(key_limited: GatewayProcess) -> None:
    nope = {"Authorization": "Bearer bgw-nope"}
    response = loopback.get(f"{key_limited.base_url}/v1/files", headers=nope, timeout=30)
    assert_error(response, 401)
    listed = [
        loopback.get(
            f"{key_limited.base_url}/admin/keys", headers={"Authorization": "Bearer test-admin-key"}, timeout=30
        )
        for _ in range(10)
    ]
    assert {r.status_code for r in listed} == {200}


def test_two_api_processes_share_one_limit(key_limited: GatewayProcess, database_kind: str) -> None:
    if database_kind != "postgresql":
        pytest.skip("several API processes on one database need PostgreSQL")
    replica = GatewayProcess(
        key_limited.data_dir, key_limited.database_url, free_port(), dict(key_limited.extra_env)
    ).start("serve", "--no-worker")
    try:
        key = key_limited.create_key("hooli")
        answers = burst(key, key_limited, 1) + burst(key, replica, BURST)
        assert [r.status_code for r in answers[:BURST]] == [200] * BURST
        assert_rate_limited(answers[BURST])
    finally:
        replica.stop()
