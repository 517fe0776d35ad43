"""A Message Batches create call (the Anthropic-compatible endpoint) enters the gateway as a batch.

The body ``{"requests": [{custom_id, params}, ...]}`` is parsed while it arrives (one request in memory
at a time, whatever the body's size) and each request's ``params`` is translated to an OpenAI chat
completion line (:mod:`gateway.translate.anthropic_clients`). The lines become the input file of an
ordinary batch on ``/v1/chat/completions``, so routing, budgets, canaries, failover and webhooks all
apply unchanged. As at Anthropic, a request's ``params`` are checked after the create call: one that
cannot run (untranslatable, an unknown model, too long) becomes an ``errored`` result kept beside the
batch, and the rest run. The envelope is checked at once: a malformed body, a bad or repeated
``custom_id`` or an unknown top-level field is a 400 naming the request, and nothing is stored.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, Any

import ijson
import msgspec

from gateway.context import GatewayContext
from gateway.db import message_batches as message_db
from gateway.db import repo
from gateway.db.models import HELD_BY_MESSAGE_BATCH, Batch, MessageBatch, StoredFile, new_id, now_s
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import GatewayError, TooLarge, UnknownModel, bad_request, not_found
from gateway.pipeline.intake import idempotency
from gateway.pipeline.intake.batches import (
    BatchRequest,
    cancel_batch,
    create_batch,
    validate_metadata,
    validate_routing_hints,
)
from gateway.textcheck import check_text
from gateway.translate import TranslationError
from gateway.translate.anthropic_clients import check_custom_id, errored, params_to_chat

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
WINDOW_S = 24 * 3600
MAX_REQUEST_DEPTH = 128
"""Deepest nesting of one request (as for an input line of the OpenAI endpoint)."""
TOP_LEVEL_FIELDS = ("requests", "metadata")
"""``metadata`` is the gateway's addition: routing hints and labels, as on ``POST /v1/batches``."""
ENDED = ("completed", "failed", "expired", "cancelled")


@dataclass
class _Body:
    """The request body as a file-like object for the streaming parser, with its size bounded and hashed."""

    chunks: AsyncIterator[bytes]
    limit: int
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    _buffer: bytes = b""

    async def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""  # the parser's probe of the stream's type must consume nothing
        while not self._buffer:
            try:
                chunk = await anext(self.chunks)
            except StopAsyncIteration:
                return b""
            self.size += len(chunk)
            if self.size > self.limit:
                raise TooLarge(f"The request body is larger than {self.limit} bytes.", code="request_too_large")
            self.digest.update(chunk)
            self._buffer = chunk
        piece, self._buffer = (self._buffer, b"") if size < 0 else (self._buffer[:size], self._buffer[size:])
        return piece


@dataclass
class _Intake:
    """What one pass over the requests wrote."""

    requests: int = 0
    sent: int = 0
    errored: int = 0
    seen: set[str] = field(default_factory=set)
    metadata: Any = None


class _Sink:
    """Writes each request: its OpenAI line to the input file, or its ``errored`` result to the errors file."""

    def __init__(self, context: GatewayContext, lines: IO[bytes], errors: IO[bytes], intake: _Intake) -> None:
        self.context, self.lines, self.errors, self.intake = context, lines, errors, intake
        self.max_line_bytes = context.settings.limits.max_line_bytes
        self.max_requests = context.settings.limits.max_file_lines

    def take(self, index: int, item: Any, too_deep: bool) -> None:
        """Check one request's envelope (400 at once) and write its line or its ``errored`` result."""
        intake = self.intake
        intake.requests += 1
        if intake.requests > self.max_requests:
            raise bad_request(f"requests: at most {self.max_requests} requests fit one batch.", param="requests")
        if not isinstance(item, dict):
            raise bad_request(f"requests.{index}: must be an object with custom_id and params.", param="requests")
        extra = sorted(set(item) - {"custom_id", "params"})
        if extra:
            raise bad_request(f"requests.{index}.{extra[0]}: Extra inputs are not permitted", param="requests")
        try:
            custom_id = check_custom_id(item.get("custom_id"), intake.seen, index)
        except TranslationError as exc:
            raise bad_request(exc.message, param=exc.param) from None
        if "params" not in item:
            raise bad_request(f"requests.{index}.params: Field required", param=f"requests.{index}.params")
        if too_deep:
            self._errored(custom_id, "invalid_request_error", f"params: nested more than {MAX_REQUEST_DEPTH} levels.")
            return
        line = self._line(custom_id, item["params"])
        if line is not None:
            self.lines.write(line)
            intake.sent += 1

    def _line(self, custom_id: str, params: Any) -> bytes | None:
        try:
            body = params_to_chat(params)
        except TranslationError as exc:
            where = "params: " if exc.param == "params" else f"params.{exc.param}: " if exc.param else ""
            self._errored(custom_id, "invalid_request_error", f"{where}{exc.message}")
            return None
        try:
            self.context.offers.resolve(body["model"])
        except UnknownModel as exc:
            self._errored(custom_id, "not_found_error", f"model: {exc.message}")
            return None
        line = msgspec.json.encode({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body})
        if len(line) > self.max_line_bytes:
            self._errored(custom_id, "request_too_large", f"The request is larger than {self.max_line_bytes} bytes.")
            return None
        return line + b"\n"

    def _errored(self, custom_id: str, kind: str, message: str) -> None:
        self.errors.write(msgspec.json.encode(errored(custom_id, kind, message)) + b"\n")
        self.intake.errored += 1


class _Builder:
    """Builds one JSON value from parser events up to a depth. Past it, building stops (the value keeps what
    came before, such as a ``custom_id``) and only the depth is followed, so nothing deep is ever held."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.builder = ijson.ObjectBuilder()
        self.depth = 0
        self.too_deep = False

    def event(self, event: str, value: Any) -> bool:
        """Feed one event; True once the value is complete."""
        if event in ("start_map", "start_array"):
            self.depth += 1
            self.too_deep = self.too_deep or self.depth > self.max_depth
        elif event in ("end_map", "end_array"):
            self.depth -= 1
        if not self.too_deep:
            self.builder.event(event, value)
        return self.depth == 0

    @property
    def value(self) -> Any:
        """The value (partial when too deep)."""
        return self.builder.value


async def _parse(body: _Body, sink: _Sink) -> None:
    """Walk the body's events: each element of ``requests`` goes to ``sink`` as it completes.

    Events carry no path (a path per event would grow with the nesting of a hostile body)."""
    depth = 0  # 1: in the top-level object; 2: in the requests array
    key: str | None = None
    index = -1
    builder: _Builder | None = None
    seen_requests = False
    try:
        async for event, value in ijson.basic_parse_async(body, use_float=True):
            if builder is None and depth == 2 and event != "end_array":
                index += 1
                builder = _Builder(MAX_REQUEST_DEPTH)
            elif builder is None and depth == 1 and key == "metadata" and event != "map_key":
                builder = _Builder(1)
            if builder is not None:
                if builder.event(event, value):
                    if depth == 2:
                        sink.take(index, builder.value, too_deep=builder.too_deep)
                    else:
                        sink.intake.metadata = _metadata(builder)
                        key = None
                    builder = None
            elif depth == 0 and event == "start_map":
                depth = 1
            elif depth == 1 and event == "map_key":
                if value not in TOP_LEVEL_FIELDS:
                    raise bad_request(f"{str(value)[:64]}: Extra inputs are not permitted", param=str(value)[:64])
                key = value
            elif depth == 1 and key == "requests" and event == "start_array":
                depth, seen_requests = 2, True
            elif depth == 1 and event == "end_map":
                depth = 0
            elif depth == 2 and event == "end_array":
                depth, key = 1, None
            elif depth == 0:
                raise bad_request("The body must be a JSON object with 'requests'.")
            else:
                raise bad_request("requests: must be an array of request objects.", param="requests")
    except ijson.JSONError as exc:
        raise bad_request(f"The body is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    if not seen_requests:
        raise bad_request("requests: Field required", param="requests", code="missing_required_parameter")
    if sink.intake.requests == 0:
        raise bad_request("requests: must hold at least one request.", param="requests")


def _checked_text(metadata: Any) -> Any:
    """Metadata keys and values hold no control characters (values may hold tab and line breaks)."""
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            check_text(key, "metadata")
            if isinstance(value, str):
                check_text(value, f"metadata.{key}", free_text=True)
    return metadata


def _metadata(builder: _Builder) -> Any:
    if builder.too_deep:
        raise bad_request("'metadata' must be an object of string keys and string values.", param="metadata")
    return builder.value


async def create_message_batch(
    context: GatewayContext, team_id: str, api_key_id: str | None, chunks: AsyncIterator[bytes], idem_key: str | None
) -> tuple[MessageBatch, Batch]:
    """Store the requests of a Message Batches create call as a batch's input file and create the batch, or
    return the one an earlier create with the same ``idem_key`` made. Errors as for ``POST /v1/batches``,
    plus 400 for a malformed body (naming the request) and 413 over ``max_upload_bytes``."""
    limits = context.settings.limits
    file_id = new_id("file-")
    input_key = f"files/{file_id}"
    errors_key = f"message-batches/{file_id}/intake-errors.jsonl"
    body = _Body(chunks, limits.max_upload_bytes)
    intake = _Intake()
    context.blobs.scratch.mkdir(parents=True, exist_ok=True)
    errors_path = context.blobs.scratch / f"{file_id}-intake-errors.jsonl"
    try:
        async with context.blobs.staged(input_key) as input_path:
            with input_path.open("wb") as lines, errors_path.open("wb") as errors:
                await _parse(body, _Sink(context, lines, errors, intake))
            size = input_path.stat().st_size
        metadata = validate_metadata(_checked_text(intake.metadata))
        validate_routing_hints(context, metadata)
        if intake.errored:
            await context.blobs.put_file(errors_key, errors_path)
        created = await _create(context, team_id, api_key_id, idem_key, body, intake, file_id, size, metadata)
    except BaseException:
        await context.blobs.delete(input_key)
        await context.blobs.delete(errors_key)
        raise
    finally:
        errors_path.unlink(missing_ok=True)
    if created[1].input_file_id != file_id:  # an earlier create with the same key made the batch: ours goes
        await _discard(context, team_id, file_id, input_key, errors_key)
    return created


async def _create(
    context: GatewayContext,
    team_id: str,
    api_key_id: str | None,
    idem_key: str | None,
    body: _Body,
    intake: _Intake,
    file_id: str,
    size: int,
    metadata: dict[str, str] | None,
) -> tuple[MessageBatch, Batch]:
    created_at = now_s()
    async with transaction(context.sessions) as session:
        session.add(
            StoredFile(
                id=file_id,
                team_id=team_id,
                filename="message-batch-requests.jsonl",
                purpose="batch",
                bytes=size,
                created_at=created_at,
                expires_at=created_at + WINDOW_S + 30 * 24 * 3600,
                storage_key=f"files/{file_id}",
                line_count=intake.sent,
                held_by=HELD_BY_MESSAGE_BATCH,
            )
        )

    def record(batch: Batch) -> MessageBatch:
        return MessageBatch(
            batch_id=batch.id,
            team_id=team_id,
            request_count=intake.requests,
            intake_errors=intake.errored,
            intake_errors_key=f"message-batches/{file_id}/intake-errors.jsonl" if intake.errored else None,
        )

    request = BatchRequest(
        input_file_id=file_id,
        endpoint=ENDPOINT,
        completion_window=COMPLETION_WINDOW,
        window_s=WINDOW_S,
        metadata=metadata,
        output_ttl_s=None,
        fingerprint=idempotency.fingerprint("message_batch", body.digest.hexdigest()),
    )
    try:
        batch = await create_batch(context, team_id, api_key_id, request, idem_key, attach=record)
    except GatewayError:
        await _forget_file(context, team_id, file_id)
        raise
    async with reading(context.sessions) as session:
        found = await message_db.get(session, team_id, message_db.public_id(batch.id))
    if found is None:
        raise not_found("message batch", message_db.public_id(batch.id))
    return found


async def _forget_file(context: GatewayContext, team_id: str, file_id: str) -> None:
    async with transaction(context.sessions) as session:
        row = await repo.get_file(session, team_id, file_id)
        if row is not None:
            row.deleted = True
            session.add(row)


async def _discard(context: GatewayContext, team_id: str, file_id: str, *keys: str) -> None:
    await _forget_file(context, team_id, file_id)
    for key in keys:
        await context.blobs.delete(key)


async def cancel_message_batch(context: GatewayContext, team_id: str, message_batch_id: str) -> None:
    """Cancel the batch behind a message batch (404 unknown, 409 once it ended)."""
    async with reading(context.sessions) as session:
        found = await message_db.get(session, team_id, message_batch_id)
    if found is None:
        raise not_found("message batch", message_batch_id)
    await cancel_batch(context, team_id, found[1].id)


async def delete_message_batch(context: GatewayContext, team_id: str, message_batch_id: str) -> None:
    """Delete an ended message batch: it is no longer listed or retrievable, and its results are removed.
    400 while it is still processing (cancel it first), 404 when unknown."""
    async with reading(context.sessions) as session:
        found = await message_db.get(session, team_id, message_batch_id)
    if found is None:
        raise not_found("message batch", message_batch_id)
    message, batch = found
    if batch.status not in ENDED:
        raise bad_request(
            f"Message batch '{message_batch_id}' is still processing: cancel it first, then delete it once it ended."
        )
    file_ids = [f for f in (batch.output_file_id, batch.error_file_id, batch.input_file_id) if f]
    async with transaction(context.sessions) as session:
        if not await message_db.mark_deleted(session, batch.id):
            raise not_found("message batch", message_batch_id)
        for file_id in file_ids:
            row = await repo.get_file(session, team_id, file_id)
            if row is not None:
                row.deleted = True
                session.add(row)
    # The blob collector removes the files' content; the intake errors go now.
    if message.intake_errors_key:
        await context.blobs.delete(message.intake_errors_key)
