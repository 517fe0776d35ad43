"""Anthropic-compatible Message Batches API: create, retrieve, list, cancel, delete, results.

Clients of the official ``anthropic`` SDK point ``base_url`` at the gateway and send their client key as
``x-api-key``. Errors on these routes are in Anthropic's shape (:mod:`gateway.api.errors`).
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter
from litestar.response import Stream

from gateway.api import idempotency
from gateway.api.auth import Principal, provide_principal
from gateway.api.objects import message_batch_object, message_batch_page
from gateway.api.openapi import (
    CLIENT_SECURITY,
    CREATE_MESSAGE_BATCH_BODY,
    anthropic_errors,
    page_size,
    with_request_body,
)
from gateway.context import GatewayContext
from gateway.db import message_batches as message_db
from gateway.db import repo
from gateway.db.models import Batch, MessageBatch
from gateway.db.unit_of_work import reading
from gateway.errors import Conflict, bad_request, not_found
from gateway.pipeline import message_results
from gateway.pipeline.intake import check_declared_length
from gateway.pipeline.intake.message_batches import (
    cancel_message_batch,
    create_message_batch,
    delete_message_batch,
)

MAX_PAGE = 1000


class MessageBatchesController(Controller):
    """``/v1/messages/batches``"""

    path = "/messages/batches"
    dependencies = {"principal": Provide(provide_principal)}
    tags = ["message batches (Anthropic format)"]
    security = CLIENT_SECURITY

    @post(
        "/",
        status_code=200,
        summary="Create a message batch",
        responses=anthropic_errors(409, 413, 507),
        operation_class=with_request_body(CREATE_MESSAGE_BATCH_BODY),
    )
    async def create(self, request: Request, state: State, principal: Principal) -> dict[str, Any]:
        """Accept ``{"requests": [{custom_id, params}, ...]}``; processing starts at once."""
        context: GatewayContext = state.context
        check_declared_length(request.headers.get("content-length"), context.settings.limits.max_upload_bytes)
        message, batch = await create_message_batch(
            context, principal.team_id, principal.api_key_id, request.stream(), idempotency.key_of(request)
        )
        return message_batch_object(message, batch, None, _results_url(request, context, batch))

    @get("/", summary="List message batches", responses=anthropic_errors(404))
    async def list_message_batches(
        self,
        request: Request,
        state: State,
        principal: Principal,
        before_id: str | None = None,
        after_id: str | None = None,
        limit: Annotated[int, Parameter(**page_size(MAX_PAGE, "Batches per page, 1 to 1000."))] = 20,
    ) -> dict[str, Any]:
        """The team's message batches, newest first; ``after_id`` pages on, ``before_id`` pages back."""
        context: GatewayContext = state.context
        if not 1 <= limit <= MAX_PAGE:
            raise bad_request(f"limit: must be between 1 and {MAX_PAGE}.", param="limit")
        if before_id and after_id:
            raise bad_request("Give before_id or after_id, not both.", param="before_id")
        async with reading(context.sessions) as session:
            before = await _cursor(session, principal, before_id, "before_id")
            after = await _cursor(session, principal, after_id, "after_id")
            rows = await message_db.page(session, principal.team_id, before=before, after=after, limit=limit + 1)
        has_more = len(rows) > limit
        rows = rows[1:] if before is not None and has_more else rows[:limit]
        data = [await _render(request, context, message, batch) for message, batch in rows]
        return message_batch_page(data, has_more)

    @get("/{message_batch_id:str}", summary="Retrieve a message batch", responses=anthropic_errors(404))
    async def retrieve(
        self, request: Request, state: State, principal: Principal, message_batch_id: str
    ) -> dict[str, Any]:
        """One message batch; ``request_counts`` are final once ``processing_status`` is ``ended``."""
        context: GatewayContext = state.context
        message, batch = await _find(context, principal, message_batch_id)
        return await _render(request, context, message, batch)

    @post(
        "/{message_batch_id:str}/cancel",
        status_code=200,
        summary="Cancel a message batch",
        responses=anthropic_errors(404, 409),
    )
    async def cancel(
        self, request: Request, state: State, principal: Principal, message_batch_id: str
    ) -> dict[str, Any]:
        """Stop it; requests already answered keep their results, the others end ``canceled``."""
        context: GatewayContext = state.context
        await cancel_message_batch(context, principal.team_id, message_batch_id)
        message, batch = await _find(context, principal, message_batch_id)
        return await _render(request, context, message, batch)

    @delete(
        "/{message_batch_id:str}", status_code=200, summary="Delete a message batch", responses=anthropic_errors(404)
    )
    async def delete(self, state: State, principal: Principal, message_batch_id: str) -> dict[str, Any]:
        """Delete an ended message batch and its results (a running one must be cancelled first)."""
        await delete_message_batch(state.context, principal.team_id, message_batch_id)
        return {"id": message_batch_id, "type": "message_batch_deleted"}

    @get(
        "/{message_batch_id:str}/results",
        summary="Stream a message batch's results",
        responses=anthropic_errors(404, 409),
        media_type="application/x-jsonl",
    )
    async def results(self, state: State, principal: Principal, message_batch_id: str) -> Stream:
        """One JSON line per request: ``{"custom_id", "result": {"type": succeeded|errored|canceled|expired}}``."""
        context: GatewayContext = state.context
        message, batch = await _find(context, principal, message_batch_id)
        if batch.status not in message_results.ENDED:
            raise Conflict(
                f"Message batch '{message_batch_id}' is still processing: its results exist once it ended.",
                code="results_not_ready",
            )
        await message_results.check_stored(context, message, batch)
        return Stream(message_results.result_bytes(context, message, batch), media_type="application/x-jsonl")


async def _find(context: GatewayContext, principal: Principal, message_batch_id: str) -> tuple[MessageBatch, Batch]:
    async with reading(context.sessions) as session:
        found = await message_db.get(session, principal.team_id, message_batch_id)
    if found is None:
        raise not_found("message batch", message_batch_id)
    return found


async def _cursor(session: Any, principal: Principal, message_batch_id: str | None, param: str) -> Batch | None:
    if not message_batch_id:
        return None
    found = await message_db.get(session, principal.team_id, message_batch_id)
    if found is None:
        raise not_found("message batch", message_batch_id, param=param)
    return await repo.get_batch(session, principal.team_id, found[1].id)


async def _render(request: Request, context: GatewayContext, message: MessageBatch, batch: Batch) -> dict[str, Any]:
    counts = await message_results.final_counts(context, message, batch)
    return message_batch_object(message, batch, counts, _results_url(request, context, batch))


def _results_url(request: Request, context: GatewayContext, batch: Batch) -> str:
    """Where the results are read: under ``public_base_url`` when set, else under the URL this request used."""
    base = (context.settings.public_base_url or str(request.base_url)).rstrip("/").removesuffix("/v1")
    return f"{base}/v1/messages/batches/{message_db.public_id(batch.id)}/results"
