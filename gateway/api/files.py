"""OpenAI-compatible Files API: upload, retrieve, list, content, delete."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import Stream

from gateway.api import idempotency
from gateway.api.auth import Principal, provide_principal
from gateway.api.objects import file_object, list_object
from gateway.api.openapi import CLIENT_SECURITY, UPLOAD_BODY, errors, page_size, with_request_body
from gateway.context import GatewayContext
from gateway.db import message_batches as message_db
from gateway.db import repo
from gateway.db.models import HELD_BY_MESSAGE_BATCH, StoredFile
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import Conflict, NotFound, bad_request, not_found
from gateway.pipeline import intake
from gateway.pipeline.intake import check_declared_length


class FilesController(Controller):
    """``/v1/files``"""

    path = "/files"
    dependencies = {"principal": Provide(provide_principal)}
    tags = ["files"]
    security = CLIENT_SECURITY

    @post(
        "/",
        status_code=200,
        summary="Upload a file",
        responses=errors(409, 413, 507),
        operation_class=with_request_body(UPLOAD_BODY),
    )
    async def create_file(self, request: Request, state: State, principal: Principal) -> dict[str, Any]:
        """Stream a multipart upload into storage; ``purpose`` must be ``batch``."""
        context: GatewayContext = state.context
        idem_key = idempotency.key_of(request)
        declared = request.headers.get("content-length")
        check_declared_length(declared, context.settings.limits.max_upload_bytes)
        content_type = request.headers.get("content-type")
        declared_bytes = int(declared) if declared and declared.isdigit() else None
        row = await intake.create_file(
            context, principal.team_id, content_type, request.stream(), idem_key, declared_bytes
        )
        return file_object(row)

    @get("/", summary="List files", responses=errors(404))
    async def list_files(
        self,
        state: State,
        principal: Principal,
        after: str | None = None,
        limit: Annotated[
            int, Parameter(**page_size(None, "Files per page: 1 to limits.files_list_max (10,000 by default)."))
        ] = 10_000,
        order: str = "desc",
        purpose: str | None = None,
    ) -> dict[str, Any]:
        """Files of the caller's team, newest first by default, with cursor pagination."""
        context: GatewayContext = state.context
        if not 1 <= limit <= context.settings.limits.files_list_max:
            raise bad_request(f"'limit' must be between 1 and {context.settings.limits.files_list_max}.", param="limit")
        if order not in ("asc", "desc"):
            raise bad_request("'order' must be 'asc' or 'desc'.", param="order")
        async with reading(context.sessions) as session:
            cursor = None
            if after:
                cursor = await repo.get_file(session, principal.team_id, after)
                if cursor is None:
                    raise not_found("file", after, param="after")
            rows = await repo.list_files(
                session, principal.team_id, purpose=purpose, after=cursor, limit=limit + 1, descending=order == "desc"
            )
        return list_object([file_object(r) for r in rows[:limit]], has_more=len(rows) > limit)

    @get("/{file_id:str}", summary="Retrieve a file", responses=errors(404))
    async def retrieve_file(self, state: State, principal: Principal, file_id: str) -> dict[str, Any]:
        """One file of the caller's team."""
        return file_object(await _team_file(state, principal, file_id))

    @get("/{file_id:str}/content", summary="Download a file's content", responses=errors(404))
    async def file_content(self, state: State, principal: Principal, file_id: str) -> Stream:
        """Stream the file's bytes."""
        context: GatewayContext = state.context
        row = await _team_file(state, principal, file_id)
        if not await context.blobs.exists(row.storage_key):
            raise NotFound(f"The content of file '{file_id}' is no longer stored.", code="content_missing")
        return Stream(
            context.blobs.iter_bytes(row.storage_key),
            media_type="application/octet-stream",
            headers={"content-length": str(row.bytes)},
        )

    @delete("/{file_id:str}", status_code=200, summary="Delete a file", responses=errors(404, 409))
    async def delete_file(self, state: State, principal: Principal, file_id: str) -> dict[str, Any]:
        """Delete a file unless a running batch still reads it."""
        context: GatewayContext = state.context
        async with transaction(context.sessions) as session:
            row = await repo.get_file(session, principal.team_id, file_id)
            if row is None:
                raise not_found("file", file_id)
            if await repo.file_in_use(session, file_id):
                raise Conflict(f"File '{file_id}' is the input of a batch that is still running.", code="file_in_use")
            if row.held_by == HELD_BY_MESSAGE_BATCH:
                batch_id = await repo.batch_holding_file(session, principal.team_id, file_id)
                holder = message_db.public_id(batch_id) if batch_id else "{id}"
                raise Conflict(
                    f"File '{file_id}' holds the requests or results of a message batch: it is deleted with the "
                    f"message batch (DELETE /v1/messages/batches/{holder}).",
                    code="file_in_use",
                )
            row.deleted = True
            session.add(row)
        await intake.delete_file_blobs(context, row.storage_key)
        return {"id": file_id, "object": "file", "deleted": True}


async def _team_file(state: State, principal: Principal, file_id: str) -> StoredFile:
    context: GatewayContext = state.context
    async with reading(context.sessions) as session:
        row = await repo.get_file(session, principal.team_id, file_id)
    if row is None:
        raise not_found("file", file_id)
    return row
