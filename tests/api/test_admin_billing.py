"""Admin billing API on a real gateway: spend from the ledger, budgets (and the 429 they cause), alerts.

Ledger rows and alerts are seeded with SQL into the gateway's own database, as the engine would
write them; everything else goes through HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from gateway.db.models import BillingAlert, LedgerEntry
from tests.conftest import GatewayProcess, loopback

T0 = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
HOUR, DAY = 3600, 86400


@pytest.fixture(scope="module")
def sql(gateway: GatewayProcess) -> Iterator[Engine]:
    """A synchronous connection pool to the gateway's database."""
    url = make_url(gateway.database_url)
    if url.get_backend_name() == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    engine = create_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def admin(gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"{gateway.base_url}/admin", headers={"Authorization": "Bearer test-admin-key"}, timeout=30
    ) as client:
        yield client


def team_id(sql: Engine, name: str) -> str:
    with sql.connect() as conn:
        return str(conn.execute(text("SELECT id FROM teams WHERE name = :n"), {"n": name}).scalar_one())


def add_spend(sql: Engine, team: str, at: float, cost: float, list_cost: float, **fields: Any) -> None:
    row = {
        "shard_id": f"shard_{time.monotonic_ns()}",
        "batch_id": "batch_seeded",
        "team_id": team,
        "api_key_id": None,
        "provider": "fast",
        "model": "gpt-4o-mini",
        "provider_model": "gpt-4o-mini-2024-07-18",
        "mode": "batch",
        "requests": 10,
        "input_tokens": 1000,
        "output_tokens": 100,
        "cached_tokens": 0,
        "cost_usd": cost,
        "list_cost_usd": list_cost,
        "created_at": at,
    } | fields
    with sql.begin() as conn:
        conn.execute(LedgerEntry.__table__.insert(), [row])  # type: ignore[attr-defined]


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return str(error["message"])


@pytest.fixture(scope="module")
def spend_teams(gateway: GatewayProcess, sql: Engine) -> tuple[str, str]:
    gateway.create_key("spendco")
    gateway.create_key("spendtwo")
    one, two = team_id(sql, "spendco"), team_id(sql, "spendtwo")
    add_spend(sql, one, T0 + 100, 1.25, 2.5)
    add_spend(sql, one, T0 + HOUR + 100, 0.5, 1.0, requests=4, input_tokens=400, output_tokens=40)
    add_spend(sql, one, T0 + 200, 2.0, 3.0, provider="other", model="claude-haiku", requests=5)
    add_spend(sql, two, T0 + DAY + 5, 4.0, 8.0)
    add_spend(sql, one, T0 - 10, 100.0, 100.0)  # before the queried range
    return one, two


def test_spend_by_provider_per_hour(admin: httpx.Client, spend_teams: tuple[str, str]) -> None:
    body = admin.get("/spend", params={"group_by": "provider", "bucket": "hour", "since": T0, "until": T0 + DAY}).json()
    assert [(r["bucket_start"], r["key"], r["cost_usd"]) for r in body["data"]] == [
        (T0, "fast", 1.25),
        (T0, "other", 2.0),
        (T0 + HOUR, "fast", 0.5),
    ]
    first = body["data"][0]
    assert first == {
        "bucket_start": T0,
        "key": "fast",
        "cost_usd": 1.25,
        "list_cost_usd": 2.5,
        "savings_usd": 1.25,
        "requests": 10,
        "input_tokens": 1000,
        "output_tokens": 100,
    }
    assert body["totals"] == {
        "cost_usd": 3.75,
        "list_cost_usd": 6.5,
        "savings_usd": 2.75,
        "requests": 19,
        "input_tokens": 2400,
        "output_tokens": 240,
    }


def test_spend_by_team_and_model_per_day(admin: httpx.Client, spend_teams: tuple[str, str]) -> None:
    window: dict[str, Any] = {"since": T0, "until": T0 + 2 * DAY, "bucket": "day"}
    teams = admin.get("/spend", params={"group_by": "team", **window}).json()
    assert [(r["bucket_start"], r["key"], r["cost_usd"]) for r in teams["data"]] == [
        (T0, "spendco", 3.75),
        (T0 + DAY, "spendtwo", 4.0),
    ]
    models = admin.get("/spend", params={"group_by": "model", **window}).json()
    assert [(r["bucket_start"], r["key"], r["cost_usd"]) for r in models["data"]] == [
        (T0, "claude-haiku", 2.0),
        (T0, "gpt-4o-mini", 1.75),
        (T0 + DAY, "gpt-4o-mini", 4.0),
    ]
    assert models["totals"]["cost_usd"] == 7.75


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "region"}, "group_by"),
        ({"bucket": "week"}, "bucket"),
        ({"since": "yesterday"}, "since"),
        ({"since": T0 + 10, "until": T0}, "since"),
        ({"bucket": "hour", "since": T0, "until": T0 + 800 * DAY}, "since"),
    ],
)
def test_spend_rejects_bad_queries(admin: httpx.Client, params: dict[str, Any], param: str) -> None:
    assert_error(admin.get("/spend", params=params), 400, param)


def test_billing_endpoints_need_the_admin_key(gateway: GatewayProcess) -> None:
    assert_error(loopback.get(f"{gateway.base_url}/admin/budgets"), 401)
    wrong = {"Authorization": "Bearer nope"}
    assert_error(loopback.get(f"{gateway.base_url}/admin/spend", headers=wrong), 401)
    assert_error(loopback.put(f"{gateway.base_url}/admin/budgets", headers=wrong, json={}), 401)


def test_hard_budget_answers_429_naming_it_until_raised(
    gateway: GatewayProcess, admin: httpx.Client, sql: Engine, client: openai.OpenAI
) -> None:
    capped_client = gateway.client(gateway.create_key("capped"))
    add_spend(sql, team_id(sql, "capped"), time.time(), 6.0, 12.0)
    line = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}\n'
    upload = capped_client.files.create(file=("in.jsonl", line), purpose="batch")
    other_upload = client.files.create(file=("in.jsonl", line), purpose="batch")

    def create(sdk: openai.OpenAI, file_id: str) -> Any:
        return sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")

    put = admin.put("/budgets", json={"scope": "team:capped", "period": "day", "limit_usd": 5, "hard": True})
    assert put.status_code == 200, put.text
    budget = put.json()
    assert budget["scope"] == "team:capped" and budget["period"] == "day" and budget["hard"] is True
    assert (budget["limit_usd"], budget["spent_usd"], budget["reserved_usd"]) == (5.0, 6.0, 0.0)
    assert budget["thresholds"] == [0.5, 0.8, 1.0] and budget["utilisation"] == 1.2 and budget["exhausted"]

    with pytest.raises(openai.RateLimitError) as refused:
        create(capped_client, upload.id)
    assert refused.value.code == "budget_exceeded" and refused.value.type == "insufficient_quota"
    assert "daily budget of team 'capped' of $5.00 is used up: $6.00 spent" in refused.value.message
    assert create(client, other_upload.id).status == "validating"  # another team is not affected

    raised = admin.put(
        "/budgets", json={"scope": "team:capped", "period": "day", "limit_usd": 50, "hard": True, "thresholds": [0.9]}
    ).json()
    assert raised["id"] == budget["id"] and raised["limit_usd"] == 50.0 and raised["thresholds"] == [0.9]
    assert create(capped_client, upload.id).status == "validating"

    listed = {b["id"]: b for b in admin.get("/budgets").json()["data"]}
    assert listed[budget["id"]]["spent_usd"] == 6.0 and listed[budget["id"]]["utilisation"] == 0.12
    deleted = admin.delete(f"/budgets/{budget['id']}")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert budget["id"] not in {b["id"] for b in admin.get("/budgets").json()["data"]}
    assert_error(admin.delete(f"/budgets/{budget['id']}"), 404)


def test_global_budget_is_listed_with_all_spend(admin: httpx.Client, spend_teams: tuple[str, str]) -> None:
    put = admin.put("/budgets", json={"scope": "global", "period": "month", "limit_usd": 1000})
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["scope"] == "global" and body["team_id"] is None and body["hard"] is False
    assert body["period_end"] > time.time() >= body["period_start"]
    assert admin.delete(f"/budgets/{body['id']}").status_code == 200


GOOD = {"scope": "global", "period": "day", "limit_usd": 10}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (GOOD | {"scope": "everyone"}, 400, "scope"),
        (GOOD | {"scope": "team:"}, 400, "scope"),
        (GOOD | {"scope": "team:nobody-here"}, 404, "scope"),
        (GOOD | {"period": "week"}, 400, "period"),
        (GOOD | {"limit_usd": 0}, 400, "limit_usd"),
        (GOOD | {"limit_usd": "ten"}, 400, "limit_usd"),
        (GOOD | {"hard": "yes"}, 400, "hard"),
        (GOOD | {"thresholds": [0.5, 0]}, 400, "thresholds"),
        (GOOD | {"thresholds": [50]}, 400, "thresholds"),
        (GOOD | {"thresholds": "0.5"}, 400, "thresholds"),
        (GOOD | {"currency": "EUR"}, 400, None),
        ({"scope": "global", "period": "day"}, 400, None),
    ],
)
def test_bad_budgets_are_refused_clearly(admin: httpx.Client, body: dict[str, Any], status: int, param: str) -> None:
    assert_error(admin.put("/budgets", json=body), status, param)


def test_budget_body_must_be_json(admin: httpx.Client) -> None:
    response = admin.put("/budgets", content=b"{not json", headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def add_alert(sql: Engine, key: str, message: str, created_at: float) -> int:
    row = {
        "kind": "budget_threshold",
        "dedup_key": key,
        "message": message,
        "threshold": 0.8,
        "spent_usd": 8.0,
        "limit_usd": 10.0,
        "created_at": created_at,
    }
    with sql.begin() as conn:
        conn.execute(BillingAlert.__table__.insert(), [row])  # type: ignore[attr-defined]
        return int(conn.execute(text("SELECT id FROM billing_alerts WHERE dedup_key = :k"), {"k": key}).scalar_one())


def test_alerts_newest_first_and_acknowledged(admin: httpx.Client, sql: Engine) -> None:
    older = add_alert(sql, "test:older", "80% of something reached.", time.time() - 10)
    newer = add_alert(sql, "test:newer", "50% of something reached.", time.time())
    open_alerts = admin.get("/alerts", params={"acknowledged": "false"}).json()["data"]
    assert [a["id"] for a in open_alerts][:2] == [newer, older]
    assert open_alerts[0]["message"] == "50% of something reached." and open_alerts[0]["webhook"] is None
    acked = admin.post(f"/alerts/{older}/ack")
    assert acked.status_code == 200 and acked.json()["acknowledged_at"] is not None
    again = admin.post(f"/alerts/{older}/ack").json()
    assert again["acknowledged_at"] == acked.json()["acknowledged_at"]
    assert older not in [a["id"] for a in admin.get("/alerts", params={"acknowledged": "false"}).json()["data"]]
    assert older in [a["id"] for a in admin.get("/alerts", params={"acknowledged": "true"}).json()["data"]]
    assert [a["id"] for a in admin.get("/alerts", params={"limit": 1}).json()["data"]] == [newer]
    assert_error(admin.post("/alerts/987654/ack"), 404)
    assert_error(admin.get("/alerts", params={"limit": 0}), 400, "limit")
    assert_error(admin.get("/alerts", params={"acknowledged": "maybe"}), 400, "acknowledged")


def test_billing_routes_are_in_the_openapi_schema(gateway: GatewayProcess) -> None:
    schema = loopback.get(f"{gateway.base_url}/schema/openapi.json").json()
    for path in ("/admin/spend", "/admin/budgets", "/admin/budgets/{budget_id}", "/admin/alerts"):
        assert path in schema["paths"], path
    assert "put" in schema["paths"]["/admin/budgets"]
