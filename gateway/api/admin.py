"""Admin API (guarded by the admin key): providers, batches across teams with their shards, keys."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide

from gateway.api.auth import require_admin
from gateway.api.errors import bad_request, not_found
from gateway.api.objects import batch_object, list_object
from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Shard


def shard_view(shard: Shard) -> dict[str, Any]:
    """A shard as the admin API shows it (no provider credentials, ever)."""
    return {
        "id": shard.id,
        "seq": shard.seq,
        "provider": shard.provider,
        "model": shard.model,
        "provider_model": shard.provider_model,
        "state": shard.state,
        "end_reason": shard.end_reason,
        "provider_batch_id": shard.provider_batch_id,
        "provider_status": shard.provider_status,
        "request_count": shard.request_count,
        "completed": shard.result_completed + shard.progress_completed,
        "failed": shard.result_failed + shard.progress_failed,
        "attempts": shard.attempts,
        "last_error": shard.last_error,
        "created_at": shard.created_at,
        "submitted_at": shard.submitted_at,
        "finished_at": shard.finished_at,
    }


class AdminController(Controller):
    """``/admin``: operator endpoints; every route needs ``Authorization: Bearer <admin key>``."""

    path = "/admin"
    dependencies = {"_admin": Provide(require_admin)}
    tags = ["admin"]

    @get("/providers", summary="Configured providers (no secrets)")
    async def providers(self, state: State, _admin: None) -> dict[str, Any]:
        """Each provider's kind, base URL, models and limits; keys are named by variable only."""
        context: GatewayContext = state.context
        return {"data": [adapter.config.public_dict() for adapter in context.providers]}

    @get("/batches", summary="Batches of every team")
    async def batches(
        self, state: State, _admin: None, after: str | None = None, limit: int = 20, status: str | None = None
    ) -> dict[str, Any]:
        """Newest first, with cursor pagination and an optional status filter."""
        context: GatewayContext = state.context
        if not 1 <= limit <= 100:
            raise bad_request("'limit' must be between 1 and 100.", param="limit")
        async with context.sessions() as session:
            cursor = await repo.get_batch(session, None, after) if after else None
            if after and cursor is None:
                raise not_found("batch", after, param="after")
            rows = await repo.list_batches(
                session, None, after=cursor, limit=limit + 1, statuses=[status] if status else ()
            )
        data = [batch_object(r) | {"team_id": r.team_id, "stage": r.stage} for r in rows[:limit]]
        return list_object(data, has_more=len(rows) > limit)

    @get("/batches/{batch_id:str}", summary="One batch with its shards")
    async def batch_detail(self, state: State, _admin: None, batch_id: str) -> dict[str, Any]:
        """The batch object plus the engine's view: stage and every shard."""
        context: GatewayContext = state.context
        async with context.sessions() as session:
            row = await repo.get_batch(session, None, batch_id)
            if row is None:
                raise not_found("batch", batch_id)
            shards = await shard_db.batch_shards(session, batch_id)
        return batch_object(row) | {
            "team_id": row.team_id,
            "stage": row.stage,
            "shards": [shard_view(s) for s in shards],
        }

    @post("/keys", status_code=201, summary="Create a client API key")
    async def create_key(self, request: Request, state: State, _admin: None) -> dict[str, Any]:
        """Body ``{"team": NAME, "name": LABEL?}``; the secret is in this response only."""
        context: GatewayContext = state.context
        try:
            body = msgspec.json.decode(await request.body())
        except msgspec.DecodeError:
            raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
        team = body.get("team") if isinstance(body, dict) else None
        if not isinstance(team, str) or not team.strip():
            raise bad_request("'team' must be a non-empty string.", param="team")
        async with context.sessions() as session:
            secret, key = await repo.create_api_key(session, team.strip(), body.get("name"))
            await session.commit()
        return {"id": key.id, "team": team.strip(), "key": secret, "prefix": key.prefix}
