"""OpenAI-compatible Files API: upload, retrieve, list, content, delete."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.response import Stream

from gateway.api import idempotency
from gateway.api.auth import Principal, provide_principal
from gateway.api.objects import file_object, list_object
from gateway.api.openapi import CLIENT_SECURITY, UPLOAD_BODY, errors, with_request_body
from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.models import StoredFile, new_id, now_s
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import Conflict, NotFound, bad_request, not_found
from gateway.pipeline.intake import check_declared_length, receive_upload
from gateway.pipeline.intake import idempotency as intake_idempotency
from gateway.textcheck import check_text

ACCEPTED_PURPOSES = {"batch"}
KNOWN_PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}
DEFAULT_BATCH_FILE_TTL_S = 30 * 24 * 3600
EXPIRY_FIELDS = ("expires_after[anchor]", "expires_after.anchor", "expires_after[seconds]", "expires_after.seconds")


def _expiry(fields: dict[str, str], created_at: int) -> int:
    anchor = fields.get("expires_after[anchor]") or fields.get("expires_after.anchor")
    seconds = fields.get("expires_after[seconds]") or fields.get("expires_after.seconds")
    if anchor is None and seconds is None:
        return created_at + DEFAULT_BATCH_FILE_TTL_S
    if anchor != "created_at":
        raise bad_request("'expires_after[anchor]' must be 'created_at'.", param="expires_after.anchor")
    try:
        ttl = int(seconds or "")
    except ValueError:
        raise bad_request("'expires_after[seconds]' must be an integer.", param="expires_after.seconds") from None
    if not 3600 <= ttl <= 2_592_000:
        raise bad_request(
            "'expires_after[seconds]' must be between 3600 (1 hour) and 2592000 (30 days).",
            param="expires_after.seconds",
        )
    return created_at + ttl


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
        limits = context.settings.limits
        idem_key = idempotency.key_of(request)
        check_declared_length(request.headers.get("content-length"), limits.max_upload_bytes)
        file_id = new_id("file-")
        key = f"files/{file_id}"
        upload = await receive_upload(
            request.headers.get("content-type"),
            request.stream(),
            context.blobs,
            key,
            max_bytes=limits.max_upload_bytes,
            max_lines=limits.max_file_lines,
            digest_content=idem_key is not None,
        )
        try:
            purpose = upload.fields.get("purpose")
            check_text(purpose or "", "purpose")
            if not purpose:
                raise bad_request(
                    "Missing required parameter: 'purpose'.", param="purpose", code="missing_required_parameter"
                )
            if purpose not in ACCEPTED_PURPOSES:
                known = "known, but " if purpose in KNOWN_PURPOSES else ""
                raise bad_request(
                    f"Purpose '{purpose[:64]}' is {known}not accepted here: this gateway stores batch input "
                    "files only (purpose='batch').",
                    param="purpose",
                )
            created_at = now_s()
            row = StoredFile(
                id=file_id,
                team_id=principal.team_id,
                filename=(upload.filename or "upload.jsonl")[:1024],
                purpose=purpose,
                bytes=upload.size,
                created_at=created_at,
                expires_at=_expiry(upload.fields, created_at),
                storage_key=key,
                line_count=upload.line_count,
            )
            expires = (upload.fields.get(name, "") for name in EXPIRY_FIELDS)
            fingerprint = intake_idempotency.fingerprint(upload.sha256, purpose, row.filename, *expires)
            async with transaction(context.sessions) as session:
                earlier = await intake_idempotency.earlier_result(
                    session, principal.team_id, "file", idem_key, fingerprint
                )
                if earlier is None:
                    session.add(row)
            if earlier is None:
                async with transaction(context.sessions) as session:
                    earlier = await intake_idempotency.remember(
                        session, principal.team_id, "file", idem_key, fingerprint, row.id
                    )
                    loser = None if earlier is None else await repo.get_file(session, principal.team_id, row.id)
                    if loser is not None:  # a concurrent upload with the same key won: ours goes
                        loser.deleted = True
                        session.add(loser)
                if earlier is None:
                    return file_object(row)
            await context.blobs.delete(key)
            async with reading(context.sessions) as session:
                original = await repo.get_file(session, principal.team_id, earlier)
            if original is None:
                raise not_found("file", earlier)
            return file_object(original)
        except BaseException:
            await context.blobs.delete(key)
            raise

    @get("/", summary="List files", responses=errors(404))
    async def list_files(
        self,
        state: State,
        principal: Principal,
        after: str | None = None,
        limit: int = 10_000,
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
            row.deleted = True
            session.add(row)
        await context.blobs.delete(row.storage_key)
        return {"id": file_id, "object": "file", "deleted": True}


async def _team_file(state: State, principal: Principal, file_id: str) -> StoredFile:
    context: GatewayContext = state.context
    async with reading(context.sessions) as session:
        row = await repo.get_file(session, principal.team_id, file_id)
    if row is None:
        raise not_found("file", file_id)
    return row
