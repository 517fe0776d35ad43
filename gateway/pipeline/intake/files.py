"""A client's file enters the gateway: the upload streamed into the blob store, then its record, created
idempotently. The Files API calls :func:`create_file` and only parses and renders around it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.models import DEFAULT_FILE_TTL_S, StoredFile, new_id, now_s
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import bad_request, not_found
from gateway.pipeline.input_lines import CheckedUpload
from gateway.pipeline.intake import idempotency
from gateway.pipeline.intake.upload import UploadResult, receive_upload
from gateway.pipeline.intake.upload_check import checking_upload
from gateway.pipeline.line_figures import figures_key, store_figures
from gateway.textcheck import check_text

ACCEPTED_PURPOSES = {"batch"}
KNOWN_PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}
EXPIRY_FIELDS = ("expires_after[anchor]", "expires_after.anchor", "expires_after[seconds]", "expires_after.seconds")


def _expiry(fields: dict[str, str], created_at: int) -> int:
    anchor = fields.get("expires_after[anchor]") or fields.get("expires_after.anchor")
    seconds = fields.get("expires_after[seconds]") or fields.get("expires_after.seconds")
    if anchor is None and seconds is None:
        return created_at + DEFAULT_FILE_TTL_S
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


async def create_file(
    context: GatewayContext,
    team_id: str,
    content_type: str | None,
    body: AsyncIterator[bytes],
    idem_key: str | None,
    declared_bytes: int | None = None,
) -> StoredFile:
    """Store a ``multipart/form-data`` upload whose ``purpose`` must be ``batch`` and record it for the team, or
    return the file an earlier upload with the same ``idem_key`` stored. 400 for a bad form, 413 over the limits,
    409 for a key reused with another upload; nothing stays stored when it fails. ``declared_bytes`` (the
    request's announced length) decides whether the lines are checked while they arrive."""
    limits = context.settings.limits
    file_id = new_id("file-")
    key = f"files/{file_id}"
    upload: UploadResult | None = None
    try:
        async with checking_upload(context.upload_checks, limits, declared_bytes) as checking:
            upload = await receive_upload(
                content_type,
                body,
                context.blobs,
                key,
                max_bytes=limits.max_upload_bytes,
                max_lines=limits.max_file_lines,
                digest_content=idem_key is not None,
                on_file_piece=checking.feed,
            )
            verdict = await checking.verdict(upload.size)
        line_check = await _kept_check(context, verdict, key, upload.line_count)
    except BaseException:
        if upload is not None:  # stored, but no record will name it (a failed upload removed its own bytes)
            await delete_file_blobs(context, key)
        raise
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
            team_id=team_id,
            filename=(upload.filename or "upload.jsonl")[:1024],
            purpose=purpose,
            bytes=upload.size,
            created_at=created_at,
            expires_at=_expiry(upload.fields, created_at),
            storage_key=key,
            line_count=upload.line_count,
            line_check=line_check,
        )
        expires = (upload.fields.get(name, "") for name in EXPIRY_FIELDS)
        fingerprint = idempotency.fingerprint(upload.sha256, purpose, row.filename, *expires)
        async with transaction(context.sessions) as session:
            earlier = await idempotency.earlier_result(session, team_id, "file", idem_key, fingerprint)
            if earlier is None:
                session.add(row)
        if earlier is None:
            earlier = await idempotency.remember(context.sessions, team_id, "file", idem_key, fingerprint, row.id)
            if earlier is not None:  # a concurrent upload with the same key won: ours goes
                async with transaction(context.sessions) as session:
                    loser = await repo.get_file(session, team_id, row.id)
                    if loser is not None:
                        loser.deleted = True
                        session.add(loser)
            if earlier is None:
                return row
        await delete_file_blobs(context, key)
        async with reading(context.sessions) as session:
            original = await repo.get_file(session, team_id, earlier)
        if original is None:
            raise not_found("file", earlier)
        return original
    except BaseException:
        await delete_file_blobs(context, key)
        raise


async def _kept_check(
    context: GatewayContext, verdict: CheckedUpload | None, storage_key: str, lines: int
) -> dict[str, Any] | None:
    """The check to keep with the file (None: its batches check it), its requests' figures stored first."""
    if verdict is None or verdict.check.get("lines") != lines:
        return None
    if verdict.figures is not None:
        await store_figures(context.blobs, storage_key, verdict.figures)
    return verdict.check


async def delete_file_blobs(context: GatewayContext, storage_key: str) -> None:
    """Remove a file's content and its figures."""
    await context.blobs.delete(storage_key)
    await context.blobs.delete(figures_key(storage_key))
