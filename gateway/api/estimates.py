"""Estimates of an uploaded file, and the break-even advisor: ``POST /v1/estimates`` (a client, with its
team's history) and ``POST /admin/estimate`` (an operator, for any file) answer the same figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.di import Provide

from gateway.api.auth import Principal, provide_principal
from gateway.api.inputs import MAX_JSON_BODY_BYTES, decode_json_object
from gateway.api.openapi import ESTIMATE_BODY, errors, with_request_body
from gateway.billing.quote import quote_file
from gateway.billing.quote_view import quote_view
from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.models import StoredFile
from gateway.db.unit_of_work import reading
from gateway.errors import bad_request, not_found
from router_policies.base import PolicyError
from router_policies.registry import parse_hints

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")


@dataclass(frozen=True)
class EstimateRequest:
    """A checked estimate request."""

    file_id: str
    model: str | None
    endpoint: str
    metadata: dict[str, str]
    team: str | None


def parse_request(context: GatewayContext, raw: bytes, *, admin: bool) -> EstimateRequest:
    """Body ``{"file_id", "model"?, "policy"?, "deadline"?, "endpoint"?}`` (admin: also ``"team"``); 400 on
    anything invalid."""
    body = decode_json_object(raw)
    allowed = {"file_id", "model", "policy", "deadline", "endpoint", *(["team"] if admin else [])}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad_request(f"Unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}.", param=unknown[0])
    file_id = body.get("file_id")
    if not isinstance(file_id, str) or not file_id:
        raise bad_request("'file_id' must be the id of an uploaded batch input file.", param="file_id")
    for name in ("model", "policy", "deadline", "endpoint", "team"):
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise bad_request(f"'{name}' must be a non-empty string.", param=name)
    endpoint = body.get("endpoint") or ENDPOINTS[0]
    if endpoint not in ENDPOINTS:
        raise bad_request(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.", param="endpoint")
    metadata = {key: body[key] for key in ("policy", "deadline") if body.get(key)}
    try:
        parse_hints(metadata, context.policies)
    except PolicyError as exc:
        param = "deadline" if "deadline" in str(exc) else "policy"
        raise bad_request(f"Invalid {param}: {exc}.", param=param, code="invalid_hint") from None
    return EstimateRequest(file_id, body.get("model"), endpoint, metadata, body.get("team"))


async def estimate_stored(
    context: GatewayContext, stored: StoredFile, request: EstimateRequest, team_id: str | None
) -> dict[str, Any]:
    """The quote of a stored file as JSON (see :func:`~gateway.billing.quote_view.quote_view`)."""
    async with context.blobs.local_copy(stored.storage_key) as path:
        try:
            quote = await quote_file(
                context,
                path,
                endpoint=request.endpoint,
                model=request.model,
                metadata=request.metadata or None,
                team_id=team_id,
            )
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise bad_request(f"The file is not a valid batch input file: {exc}.", param="file_id") from None
        except RecursionError:
            # The decoder's own limit: lines this deep never pass a batch's validation either.
            raise bad_request(
                "The file is not a valid batch input file: a line is nested too deeply.", param="file_id"
            ) from None
    return quote_view(quote)


class EstimatesController(Controller):
    """``/v1/estimates``: what an uploaded file would cost and take, estimated from the caller's team's history."""

    path = "/estimates"
    dependencies = {"principal": Provide(provide_principal)}
    tags = ["estimates"]

    @post(
        "/",
        status_code=200,
        summary="Estimate an uploaded file: cost, turnaround and a recommendation",
        responses=errors(404, 413),
        operation_class=with_request_body(ESTIMATE_BODY),
        request_max_body_size=MAX_JSON_BODY_BYTES,
    )
    async def estimate(self, request: Request, state: State, principal: Principal) -> dict[str, Any]:
        """Body ``{"file_id", "model"?, "policy"?, "deadline"?, "endpoint"?}``: per offer the batch and synchronous
        cost, savings, the token range and its basis, expected turnaround and synchronous fan-out time; per model
        the advisor's recommendation (batch, fan-out or tiered) for the deadline."""
        context: GatewayContext = state.context
        parsed = parse_request(context, await request.body(), admin=False)
        async with reading(context.sessions) as session:
            stored = await repo.get_file(session, principal.team_id, parsed.file_id)
        if stored is None:
            raise not_found("file", parsed.file_id, param="file_id")
        return await estimate_stored(context, stored, parsed, principal.team_id)
