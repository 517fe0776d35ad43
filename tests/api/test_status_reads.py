"""The retrieve-batch route's fast path: it answers a plain status read itself, byte for byte as the handler
would, and passes every other read (a refused key, a key whose use is due to be noted, request limits, another
team's or an unknown batch, a query string, an odd id) to the handler, which gives it its usual answer. A
finished batch's answer is kept, while every read still checks its key and the batch's ``updated_at``."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import openai
import pytest
from sqlmodel import col, select, update

from gateway.api.objects import batch_object
from gateway.api.status_reads import fast_status_reads
from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.models import ApiKey, Batch, Shard, StoredFile
from gateway.db.unit_of_work import transaction
from tests.api.batch_helpers import assert_error
from tests.conftest import GatewayProcess, loopback, migrated_context
from tests.observability import samples, scrape

ADMIN = {"Authorization": "Bearer test-admin-key"}


class Route:
    """The middleware in front of a stand-in for the handler that records what reached it."""

    def __init__(self, context: GatewayContext) -> None:
        self.app = SimpleNamespace(state=SimpleNamespace(context=context))
        self.passed_on = 0
        self.middleware = fast_status_reads(self._handler)  # type: ignore[arg-type]  # once, as the app builds it

    async def _handler(self, scope: Any, receive: Any, send: Any) -> None:
        self.passed_on += 1

    async def read(
        self, batch_id: str, authorization: bytes | None, query: bytes = b""
    ) -> tuple[int, dict[bytes, bytes], bytes] | None:
        """(status, headers, body) when the fast path answered, None when it passed the read on."""
        headers = [(b"host", b"gateway")] + ([(b"authorization", authorization)] if authorization else [])
        scope = {
            "type": "http", "method": "GET", "path": f"/v1/batches/{batch_id}", "query_string": query,
            "headers": headers, "path_params": {"batch_id": batch_id}, "litestar_app": self.app,
        }  # fmt: skip
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        before = self.passed_on
        await self.middleware(scope, _no_body, send)  # type: ignore[arg-type]
        if self.passed_on > before:
            assert not sent, "a read passed on must not be answered too"
            return None
        start, body = sent
        return start["status"], dict(start["headers"]), body["body"]


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _setup(context: GatewayContext, *, used_now: bool = True) -> tuple[str, ApiKey, Batch]:
    async with transaction(context.sessions) as session:
        secret, key = await repo.create_api_key(session, "pollers")
        if used_now:
            key.last_used_at = int(time.time())
        stored = StoredFile(team_id=key.team_id, filename="in.jsonl", purpose="batch", storage_key="files/x")
        session.add(stored)
        batch = Batch(
            team_id=key.team_id, input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h",
            status="in_progress", stage="run", metadata_={"project": "p1"}, policy="cheapest", providers="floor",
        )  # fmt: skip
        session.add(batch)
        shard = Shard(batch_id=batch.id, seq=0, provider="floor", model="m", provider_model="m", input_key="in/0")
        shard.state, shard.wait_code = "queued", "rate_limited"
        shard.wait_detail = "floor is rate limiting batch creates: next try at 10:00:01 UTC"
        session.add(shard)
    return secret, key, batch


async def _loaded(context: GatewayContext, batch_id: str) -> Batch:
    async with transaction(context.sessions) as session:
        return (await session.exec(select(Batch).where(col(Batch.id) == batch_id))).one()


async def _fast_path(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        secret, key, batch = await _setup(context)
        route = Route(context)
        bearer = f"Bearer {secret}".encode()
        await route.read(batch.id, bearer)  # the process's first read opens the database the ordinary way

        answered = await route.read(batch.id, bearer)
        assert answered is not None, "a plain read of a running batch is answered by the fast path"
        status, headers, body = answered
        assert status == 200 and headers == {b"content-type": b"application/json", b"content-length": b"%d" % len(body)}
        shown = json.loads(body)
        assert shown["metadata"]["gateway_waiting"].startswith("floor is rate limiting"), "the open shard's wait"
        assert shown["metadata"]["project"] == "p1" and shown["status"] == "in_progress"

        async with transaction(context.sessions) as session:
            await session.exec(
                update(Batch).where(col(Batch.id) == batch.id).values(status="completed", stage="done", completed_at=7)
            )
            await session.exec(update(Shard).where(col(Shard.batch_id) == batch.id).values(state="done"))
        answered = await route.read(batch.id, bearer)
        assert answered is not None
        assert json.loads(answered[2]) == batch_object(await _loaded(context, batch.id)), "the commit is seen at once"

        async with transaction(context.sessions) as session:
            other_secret, other = await repo.create_api_key(session, "others")
            other.last_used_at = int(time.time())  # a key the fast path would take: only its team differs
        passed_on = {
            "no key": (batch.id, None, b""),
            "another scheme": (batch.id, f"Basic {secret}".encode(), b""),
            "an unknown key": (batch.id, b"Bearer sk-nope", b""),
            "another team's key": (batch.id, f"Bearer {other_secret}".encode(), b""),
            "an unknown batch": ("batch_nope", bearer, b""),
            "a query string": (batch.id, bearer, b"x=1"),
            "an odd id": (batch.id + ".", bearer, b""),
        }
        for case, (batch_id, authorization, query) in passed_on.items():
            assert await route.read(batch_id, authorization, query) is None, case

        context.settings.limits.key_requests_per_minute = 600
        assert await route.read(batch.id, bearer) is None, "request limits are counted by the handler's path"
        context.settings.limits.key_requests_per_minute = None
        assert await route.read(batch.id, bearer) is not None

        for values, case in (
            ({"last_used_at": None}, "a key's use due to be noted goes to the handler"),
            ({"expires_at": int(time.time()) - 1}, "an expired key is refused by the handler"),
            ({"revoked_at": int(time.time())}, "a revoked key is refused by the handler"),
        ):
            async with transaction(context.sessions) as session:
                used_now = {"last_used_at": int(time.time()), "expires_at": None, "revoked_at": None}
                await session.exec(update(ApiKey).where(col(ApiKey.id) == key.id).values(**(used_now | values)))
            assert await route.read(batch.id, bearer) is None, case
        async with transaction(context.sessions) as session:
            await session.exec(update(ApiKey).where(col(ApiKey.id) == key.id).values(revoked_at=None))
        assert await route.read(batch.id, bearer) is not None, "the key is plain again"
        assert route.passed_on == len(passed_on) + 4


def test_the_fast_path_answers_plain_reads_and_passes_on_everything_else(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_fast_path(database_kind, tmp_path))


async def _finished_answers(database_kind: str, tmp_path: Path) -> None:
    async with migrated_context(database_kind, tmp_path) as context:
        secret, key, batch = await _setup(context)
        route = Route(context)
        bearer = f"Bearer {secret}".encode()
        context.settings.status_cache_s = 0.5
        await route.read(batch.id, bearer)  # the process's first read opens the database the ordinary way

        async def change(**values: Any) -> dict[str, Any]:
            async with transaction(context.sessions) as session:
                await session.exec(update(Batch).where(col(Batch.id) == batch.id).values(**values))
            return batch_object(await _loaded(context, batch.id))

        async def shown() -> dict[str, Any]:
            answered = await route.read(batch.id, bearer)
            assert answered is not None, "a plain read is answered by the fast path"
            body: dict[str, Any] = json.loads(answered[2])
            body["metadata"].pop("gateway_waiting", None)  # the open shard's wait, which batch_object is not given
            return body

        async def waiting() -> str | None:
            answered = await route.read(batch.id, bearer)
            assert answered is not None
            return cast("str | None", json.loads(answered[2])["metadata"].get("gateway_waiting"))

        running = await change(request_completed=3, updated_at=time.time())
        assert await shown() == running
        running = await change(request_completed=4, updated_at=time.time())
        assert await shown() == running, "a change of a running batch (its updated_at) shows on the next read"
        assert await change(request_completed=5) != running
        assert await shown() == running, "a running batch's answer is kept too"
        async with transaction(context.sessions) as session:
            await session.exec(
                update(Shard)
                .where(col(Shard.batch_id) == batch.id)
                .values(wait_code="provider_turnaround", wait_detail="running at floor", updated_at=time.time())
            )
        assert await waiting() == "running at floor", (
            "a change of an open shard (its updated_at) shows on the next read"
        )

        finished = await change(status="completed", stage="done", completed_at=7, updated_at=time.time())
        await route.read(batch.id, bearer)  # kept now
        assert await shown() == finished
        late = await change(cost_usd=0.25, updated_at=time.time())  # a late charge of an abandoned provider batch
        assert late != finished
        assert await shown() == late, "a change of a kept batch (its updated_at) shows on the next read"

        unstamped = await change(cost_usd=0.5)  # a write that does not stamp updated_at: only the time bounds it
        kept_since = time.monotonic()
        assert await shown() == late, "a finished batch's answer is kept"

        async with transaction(context.sessions) as session:
            await session.exec(update(ApiKey).where(col(ApiKey.id) == key.id).values(revoked_at=int(time.time())))
        assert await route.read(batch.id, bearer) is None, "the key of a kept answer is still checked: revoked"
        async with transaction(context.sessions) as session:
            await session.exec(update(ApiKey).where(col(ApiKey.id) == key.id).values(revoked_at=None))
            other_secret, other = await repo.create_api_key(session, "others")
            other.last_used_at = int(time.time())
        assert await route.read(batch.id, f"Bearer {other_secret}".encode()) is None, "another team's key"

        assert time.monotonic() - kept_since < 0.5, "the checks above outlasted the answer's time"
        assert await shown() == late
        await asyncio.sleep(0.5)
        assert await shown() == unstamped, "an answer is kept no longer than status_cache_s"

        context.settings.status_cache_s = 0
        route = Route(context)  # a process started with it
        await route.read(batch.id, bearer)
        changed = await change(cost_usd=0.75)
        assert await shown() == changed, "status_cache_s = 0 keeps nothing"


def test_a_batch_is_answered_from_memory_while_its_key_and_version_hold(database_kind: str, tmp_path: Path) -> None:
    asyncio.run(_finished_answers(database_kind, tmp_path))


def _created_batch(client: openai.OpenAI) -> str:
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}}
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h").id


def _counted_reads(gateway: GatewayProcess) -> float:
    """Successful reads of the retrieve-batch route in the gateway's request histogram."""
    return sum(
        count
        for (name, labels), count in samples(scrape(gateway.base_url)).items()
        if name == "batchgw_http_request_duration_seconds_count"
        and dict(labels) == {"route": "/v1/batches/{batch_id}", "method": "GET", "status_class": "2xx"}
    )


def test_a_status_read_answers_alike_on_both_paths_and_is_counted(
    gateway: GatewayProcess, client: openai.OpenAI, team_key: str
) -> None:
    batch_id = _created_batch(client)
    headers = {"Authorization": f"Bearer {team_key}"}
    url = f"{gateway.base_url}/v1/batches/{batch_id}"
    before, reads = _counted_reads(gateway), 0
    for _ in range(3):
        fast, handled = loopback.get(url, headers=headers), loopback.get(url, params={"x": "1"}, headers=headers)
        reads += 2
        assert fast.status_code == handled.status_code == 200
        if fast.content == handled.content:  # the worker may move the batch between the two reads
            break
    assert fast.content == handled.content, "the fast path and the handler render the batch alike"
    per_answer = {"date", "x-request-id", "request-id"}
    assert {k: v for k, v in fast.headers.items() if k not in per_answer} == {
        k: v for k, v in handled.headers.items() if k not in per_answer
    }
    assert fast.headers["x-request-id"] != handled.headers["x-request-id"], "each answer has its own request id"
    assert client.batches.retrieve(batch_id).id == batch_id, "the official SDK reads the fast path's answer"
    assert _counted_reads(gateway) == before + reads + 1, "every read is timed and counted, the fast path's too"


def test_a_revoked_key_is_refused_on_its_next_status_read(gateway: GatewayProcess, client: openai.OpenAI) -> None:
    made = loopback.post(f"{gateway.base_url}/admin/keys", json={"team": "acme"}, headers=ADMIN, timeout=30).json()
    batch_id = _created_batch(client)
    reader = gateway.client(made["key"])
    for _ in range(2):
        assert reader.batches.retrieve(batch_id).id == batch_id
    revoked = loopback.delete(f"{gateway.base_url}/admin/keys/{made['id']}", headers=ADMIN, timeout=30)
    assert revoked.status_code == 200
    response = loopback.get(
        f"{gateway.base_url}/v1/batches/{batch_id}", headers={"Authorization": f"Bearer {made['key']}"}
    )
    assert_error(response, 401, code="api_key_revoked")
    unknown = loopback.get(
        f"{gateway.base_url}/v1/batches/batch_nope", headers={"Authorization": f"Bearer {made['key']}"}
    )
    assert_error(unknown, 401, code="api_key_revoked")


@pytest.mark.parametrize(("in_url", "named"), [("batch_nope", "batch_nope"), ("batch%2Enope", "batch.nope")])
def test_an_unknown_batch_is_a_404_naming_it(gateway: GatewayProcess, team_key: str, in_url: str, named: str) -> None:
    headers = {"Authorization": f"Bearer {team_key}"}
    for _ in range(2):  # the first read notes the key's use; the second is a plain read
        response = loopback.get(f"{gateway.base_url}/v1/batches/{in_url}", headers=headers)
        error = assert_error(response, 404, code="not_found")
        assert f"'{named}'" in error["message"]
