"""Admin actions for operators: cancel any team's batch, retry its failed requests, download its files."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.response import Stream

from gateway.api.auth import require_admin
from gateway.api.objects import batch_object
from gateway.api.openapi import ADMIN_SECURITY, admin_errors
from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.unit_of_work import reading
from gateway.errors import NotFound, not_found
from gateway.pipeline import intake


def _safe_name(filename: str, fallback: str) -> str:
    return "".join(c for c in filename if c.isalnum() or c in "._-")[:200] or fallback


class AdminOpsController(Controller):
    """``/admin``: actions on any team's batches and files; every route needs the admin key."""

    path = "/admin"
    dependencies = {"_admin": Provide(require_admin)}
    tags = ["admin"]
    security = ADMIN_SECURITY

    @post(
        "/batches/{batch_id:str}/cancel",
        status_code=200,
        summary="Cancel any team's batch",
        responses=admin_errors(404, 409),
    )
    async def cancel(self, state: State, _admin: None, batch_id: str) -> dict[str, Any]:
        """Same semantics as the client cancel: finished requests keep their results; 409 once finished."""
        row = await intake.cancel_batch(state.context, None, batch_id)
        return batch_object(row) | {"team_id": row.team_id, "stage": row.stage}

    @post(
        "/batches/{batch_id:str}/retry",
        status_code=201,
        summary="Retry a batch's failed requests",
        responses=admin_errors(404, 409),
    )
    async def retry(self, state: State, _admin: None, batch_id: str) -> dict[str, Any]:
        """A new batch for the same team whose input is the original lines of the requests that failed."""
        batch = await intake.retry_batch(state.context, batch_id)
        return batch_object(batch) | {"team_id": batch.team_id, "stage": batch.stage, "retry_of": batch_id}

    @get("/files/{file_id:str}/content", summary="Download any team's file", responses=admin_errors(404))
    async def file_content(self, state: State, _admin: None, file_id: str) -> Stream:
        """Stream the bytes of an input, output or error file of any team."""
        context: GatewayContext = state.context
        async with reading(context.sessions) as session:
            row = await repo.get_file_any_team(session, file_id)
        if row is None:
            raise not_found("file", file_id)
        if not await context.blobs.exists(row.storage_key):
            raise NotFound(f"The content of file '{file_id}' is no longer stored.", code="content_missing")
        return Stream(
            context.blobs.iter_bytes(row.storage_key),
            media_type="application/octet-stream",
            headers={
                "content-length": str(row.bytes),
                "content-disposition": f'attachment; filename="{_safe_name(row.filename, file_id)}"',
            },
        )
