"""OpenAI-compatible Batches API: create, retrieve, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter

from gateway.api import idempotency
from gateway.api.auth import Principal, provide_principal
from gateway.api.inputs import MAX_JSON_BODY_BYTES, decode_json_object
from gateway.api.objects import batch_object, list_object
from gateway.api.openapi import CLIENT_SECURITY, CREATE_BATCH_BODY, errors, page_size, with_request_body
from gateway.api.status_reads import fast_status_reads, shown_batch
from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.unit_of_work import reading
from gateway.errors import bad_request, not_found
from gateway.pipeline import intake, lifecycle


class BatchesController(Controller):
    """``/v1/batches``"""

    path = "/batches"
    dependencies = {"principal": Provide(provide_principal)}
    tags = ["batches"]
    security = CLIENT_SECURITY

    @post(
        "/",
        status_code=200,
        summary="Create a batch",
        responses=errors(404, 409, 413, 429),
        operation_class=with_request_body(CREATE_BATCH_BODY),
        request_max_body_size=MAX_JSON_BODY_BYTES,
    )
    async def create_batch(self, request: Request, state: State, principal: Principal) -> dict[str, Any]:
        """Accept a batch for validation and execution; it starts in ``validating``."""
        context: GatewayContext = state.context
        idem_key = idempotency.key_of(request)
        body = decode_json_object(await request.body(), free_text=("metadata",))
        checked = intake.check_batch_request(context, body)
        batch = await intake.create_batch(context, principal.team_id, principal.api_key_id, checked, idem_key)
        return batch_object(batch)

    @get("/", summary="List batches", responses=errors(404))
    async def list_batches(
        self,
        state: State,
        principal: Principal,
        after: str | None = None,
        limit: Annotated[int, Parameter(**page_size(100, "Batches per page, 1 to 100."))] = 20,
    ) -> dict[str, Any]:
        """The caller's batches, newest first, with cursor pagination."""
        context: GatewayContext = state.context
        if not 1 <= limit <= 100:
            raise bad_request("'limit' must be between 1 and 100.", param="limit")
        async with reading(context.sessions) as session:
            cursor = None
            if after:
                cursor = await repo.get_batch(session, principal.team_id, after)
                if cursor is None:
                    raise not_found("batch", after, param="after")
            rows = await repo.list_batches(session, principal.team_id, after=cursor, limit=limit + 1)
        return list_object([batch_object(r) for r in rows[:limit]], has_more=len(rows) > limit)

    @get("/{batch_id:str}", summary="Retrieve a batch", responses=errors(404), middleware=[fast_status_reads])
    async def retrieve_batch(self, state: State, principal: Principal, batch_id: str) -> dict[str, Any]:
        """One batch of the caller's team (the route's fast path answers most reads before this)."""
        context: GatewayContext = state.context
        if context.point_reads.direct:  # direct reads: the batch, then (while it runs) its open shards
            row = await repo.read_batch(context.point_reads, principal.team_id, batch_id)
            if row is None:
                raise not_found("batch", batch_id)
            return await shown_batch(context, row)
        async with reading(context.sessions) as session:
            row = await repo.get_batch(session, principal.team_id, batch_id)
            if row is None:
                raise not_found("batch", batch_id)
            waiting = await lifecycle.batch_waiting(session, row)
        return batch_object(row, waiting)

    @post("/{batch_id:str}/cancel", status_code=200, summary="Cancel a batch", responses=errors(404, 409))
    async def cancel_batch(self, state: State, principal: Principal, batch_id: str) -> dict[str, Any]:
        """Request cancellation; finished requests keep their results."""
        return batch_object(await intake.cancel_batch(state.context, principal.team_id, batch_id))
