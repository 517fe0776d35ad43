"""A batch enters the pipeline: the checks on a create request, creating the batch, cancelling it.

The client API, the admin API and the CLI call these functions and only parse and render around them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlmodel import SQLModel

from gateway.billing import budgets as billing
from gateway.context import GatewayContext
from gateway.db import message_batches as message_db
from gateway.db import repo
from gateway.db.models import Batch, now_s
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import Conflict, QuotaExceeded, bad_request, not_found
from gateway.pipeline.intake import idempotency
from router_policies.base import PolicyError
from router_policies.registry import parse_hints

SUPPORTED_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
CREATE_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512
_WINDOW = re.compile(r"^(\d{1,7})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 7 * 86400
RESERVED_METADATA_PREFIX = "gateway_"
MAX_CANARY = 1_000_000_000
"""Largest canary size (already far above the most lines a file holds)."""
CANCELLED = ("cancelling", "cancelled")


@dataclass(frozen=True)
class BatchRequest:
    """A checked request to create a batch."""

    input_file_id: str
    endpoint: str
    completion_window: str
    window_s: int
    metadata: dict[str, str] | None
    output_ttl_s: int | None
    """Seconds the batch's output and error files are kept (None: the default, 30 days)."""
    fingerprint: str
    """What makes two creates with the same idempotency key the same request."""


def parse_completion_window(value: object, min_seconds: int = 3600) -> int:
    """Seconds in a completion window such as ``24h`` (OpenAI's only value), ``90m`` or ``2d``."""
    match = _WINDOW.match(value) if isinstance(value, str) else None
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if not min_seconds <= seconds <= MAX_WINDOW_S:
        shortest = f"{min_seconds // 3600}h" if min_seconds % 3600 == 0 else f"{min_seconds}s"
        raise bad_request(
            f"Invalid 'completion_window': {value!r}. Use '24h' (or a duration from '{shortest}' to '7d').",
            param="completion_window",
        )
    return seconds


def validate_metadata(value: object) -> dict[str, str] | None:
    """OpenAI's metadata rules: at most 16 string pairs, keys <= 64 and values <= 512 chars.

    Keys starting with :data:`RESERVED_METADATA_PREFIX` are the gateway's own (what it adds to a batch it
    routed): they are dropped before the rules apply, so metadata read from one batch can be sent with the next.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("'metadata' must be an object of string keys and string values.", param="metadata")
    value = {key: item for key, item in value.items() if not str(key).startswith(RESERVED_METADATA_PREFIX)}
    if len(value) > METADATA_MAX_PAIRS:
        raise bad_request(f"'metadata' may hold at most {METADATA_MAX_PAIRS} pairs.", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str):
            raise bad_request(f"metadata['{key}'] must be a string.", param=f"metadata.{key}")
        if len(key) > METADATA_MAX_KEY:
            raise bad_request(f"metadata keys may be at most {METADATA_MAX_KEY} characters.", param="metadata")
        if len(item) > METADATA_MAX_VALUE:
            raise bad_request(
                f"metadata['{key}'] may be at most {METADATA_MAX_VALUE} characters.", param=f"metadata.{key}"
            )
    return dict(value)


def validate_routing_hints(context: GatewayContext, metadata: dict[str, str] | None) -> None:
    """Routing hints in ``metadata`` (policy, deadline, providers, weights, max_cost_usd, canary) must be valid."""
    try:
        hints = parse_hints(metadata, context.policies)
    except PolicyError as exc:
        message = f"Invalid routing hint in 'metadata': {exc}."
        raise bad_request(message, param="metadata", code="invalid_hint") from None
    named = [*hints.providers, *hints.weights]
    unknown = sorted({name for name in named if name not in context.providers})
    if unknown:
        known = ", ".join(context.providers.names()) or "none"
        raise bad_request(
            f"Invalid routing hint in 'metadata': unknown provider {', '.join(map(repr, unknown))}; known: {known}.",
            param="metadata",
            code="invalid_hint",
        )
    canary = (metadata or {}).get("canary")
    if canary is not None and not (canary.isascii() and canary.isdigit() and 0 < int(canary) <= MAX_CANARY):
        raise bad_request(
            f"Invalid routing hint in 'metadata': canary {canary!r} must be a whole number of requests from 1 to "
            f"{MAX_CANARY}.",
            param="metadata.canary",
            code="invalid_hint",
        )


def validate_output_expiry(value: object) -> int | None:
    """OpenAI's rule: ``{"anchor": "created_at", "seconds": 3600..2592000}``, or absent; the seconds (None: absent).
    The anchor is the output file's creation."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"anchor", "seconds"}:
        raise bad_request(
            "'output_expires_after' must be an object with 'anchor' and 'seconds'.", param="output_expires_after"
        )
    if value["anchor"] != "created_at":
        raise bad_request("'output_expires_after.anchor' must be 'created_at'.", param="output_expires_after")
    seconds = value["seconds"]
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 3600 <= seconds <= 2_592_000:
        raise bad_request(
            "'output_expires_after.seconds' must be an integer from 3600 (1 hour) to 2592000 (30 days).",
            param="output_expires_after",
        )
    return seconds


def check_batch_request(context: GatewayContext, body: Mapping[str, Any]) -> BatchRequest:
    """The checked fields of a create request (a decoded JSON object); 400 naming the first field at fault."""
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise bad_request(
            f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0], code="unknown_parameter"
        )
    for required in ("input_file_id", "endpoint", "completion_window"):
        if body.get(required) in (None, ""):
            raise bad_request(
                f"Missing required parameter: '{required}'.", param=required, code="missing_required_parameter"
            )
    if not isinstance(body["input_file_id"], str):
        raise bad_request("'input_file_id' must be a string.", param="input_file_id")
    if body["endpoint"] not in SUPPORTED_ENDPOINTS:
        raise bad_request(
            f"Invalid 'endpoint': {body['endpoint']!r}. Supported: {', '.join(SUPPORTED_ENDPOINTS)}.",
            param="endpoint",
            code="unsupported_endpoint",
        )
    window_s = parse_completion_window(body["completion_window"], context.settings.limits.min_completion_window_s)
    metadata = validate_metadata(body.get("metadata"))
    validate_routing_hints(context, metadata)
    output_ttl_s = validate_output_expiry(body.get("output_expires_after"))
    return BatchRequest(
        input_file_id=body["input_file_id"],
        endpoint=body["endpoint"],
        completion_window=body["completion_window"],
        window_s=window_s,
        output_ttl_s=output_ttl_s,
        metadata=metadata,
        fingerprint=idempotency.fingerprint(msgspec.json.encode(body, order="sorted").decode()),
    )


async def create_batch(
    context: GatewayContext,
    team_id: str,
    api_key_id: str | None,
    request: BatchRequest,
    idem_key: str | None,
    attach: Callable[[Batch], SQLModel] | None = None,
) -> Batch:
    """Create a batch in ``validating`` for the team's input file, or return the batch an earlier create with
    the same ``idem_key`` made. 429 when a hard budget is used up, 404 for an unknown file, 400 for a file
    whose purpose is not ``batch``, 409 for a key reused with another request. ``attach`` makes a row that
    refers to the new batch, written in the same transaction."""
    batch: Batch | None = None
    async with transaction(context.sessions) as session:
        earlier = await idempotency.earlier_result(session, team_id, "batch", idem_key, request.fingerprint)
        if earlier is None:
            refusal = await billing.refuse_new_batch(session, team_id)
            if refusal is not None:
                raise QuotaExceeded(refusal)
            input_file = await repo.get_file(session, team_id, request.input_file_id)
            if input_file is None:
                raise not_found("file", request.input_file_id, param="input_file_id")
            if input_file.purpose != "batch":
                raise bad_request(
                    f"File '{input_file.id}' has purpose '{input_file.purpose}'; a batch needs purpose 'batch'.",
                    param="input_file_id",
                )
            created_at = now_s()
            batch = Batch(
                team_id=team_id,
                api_key_id=api_key_id,
                input_file_id=input_file.id,
                endpoint=request.endpoint,
                completion_window=request.completion_window,
                metadata_=request.metadata,
                created_at=created_at,
                expires_at=created_at + request.window_s,
                output_ttl_s=request.output_ttl_s,
            )
            session.add(batch)
            if attach is not None:
                await session.flush()  # the batch row first: the attached row refers to it
                session.add(attach(batch))
    if batch is not None:
        earlier = await idempotency.remember(
            context.sessions, team_id, "batch", idem_key, request.fingerprint, batch.id
        )
        if earlier is not None:  # a concurrent create with the same key won: ours goes
            async with transaction(context.sessions) as session:
                loser = await repo.get_batch(session, team_id, batch.id)
                if loser is not None:
                    if attach is not None:
                        await message_db.remove(session, batch.id)
                    await session.delete(loser)
        if earlier is None:
            context.work_available.set()
            return batch
    assert earlier is not None
    async with reading(context.sessions) as session:
        original = await repo.get_batch(session, team_id, earlier)
    if original is None:
        raise not_found("batch", earlier)
    return original


async def cancel_batch(context: GatewayContext, team_id: str | None, batch_id: str) -> Batch:
    """Move a batch to ``cancelling`` (any team's when ``team_id`` is None); finished requests keep their
    results. 404 for an unknown batch, 409 for one that already ended otherwise."""
    changed = True
    async with transaction(context.sessions) as session:
        row = await repo.get_batch(session, team_id, batch_id)
        if row is None:
            raise not_found("batch", batch_id)
        if row.status not in CANCELLED:
            changed = await repo.request_cancel(session, row)
            await session.refresh(row)
    if not changed and row.status not in CANCELLED:
        raise Conflict(f"Cannot cancel a batch with status '{row.status}'.", code="batch_not_cancellable")
    context.work_available.set()
    return row
