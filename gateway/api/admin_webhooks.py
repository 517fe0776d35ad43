"""Admin API for batch webhooks: register a team's endpoint (its signing secret is in that answer only), list,
look one up with its recent deliveries, and delete it (see :mod:`gateway.batch_events`)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide

from gateway.api.auth import require_admin
from gateway.api.inputs import MAX_JSON_BODY_BYTES, decode_json_object, team_and_label
from gateway.api.objects import list_object
from gateway.api.openapi import ADMIN_SECURITY, CREATE_WEBHOOK_BODY, admin_errors, with_request_body
from gateway.batch_events import checked_event_types, checked_url, new_signing_secret
from gateway.context import GatewayContext
from gateway.db import billing as billing_db
from gateway.db import events as events_db
from gateway.db import repo
from gateway.db.models import BatchEvent, WebhookEndpoint, now_s
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import not_found

RECENT_EVENTS = 20


def endpoint_view(endpoint: WebhookEndpoint, team: str) -> dict[str, Any]:
    """An endpoint as the admin API shows it: never its secret, only the secret's last characters."""
    return {
        "id": endpoint.id,
        "object": "webhook_endpoint",
        "team": team,
        "name": endpoint.name,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "created_at": endpoint.created_at,
        "signing_secret_hint": f"...{endpoint.signing_secret[-4:]}",
    }


def event_view(event: BatchEvent) -> dict[str, Any]:
    """One event's delivery state."""
    return {
        "id": event.id,
        "webhook_id": event.message_id,
        "type": event.type,
        "batch_id": event.batch_id,
        "created_at": event.created_at,
        "state": event.state,
        "attempts": event.attempts,
        "next_attempt_at": event.next_attempt_at if event.state == "pending" else None,
        "delivered_at": event.delivered_at,
        "last_status": event.last_status,
        "last_error": event.last_error,
    }


class AdminWebhooksController(Controller):
    """``/admin/webhook_endpoints``: every route needs ``Authorization: Bearer <admin key>``."""

    path = "/admin/webhook_endpoints"
    dependencies = {"_admin": Provide(require_admin)}
    tags = ["admin"]
    security = ADMIN_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Register a team's batch webhook endpoint",
        responses=admin_errors(413),
        operation_class=with_request_body(CREATE_WEBHOOK_BODY),
        request_max_body_size=MAX_JSON_BODY_BYTES,
    )
    async def create_endpoint(self, request: Request, state: State, _admin: None) -> dict[str, Any]:
        """Body ``{"team", "url", "event_types"?, "name"?}``; the ``signing_secret`` is in this response only."""
        context: GatewayContext = state.context
        body = decode_json_object(await request.body(), free_text=("name",))
        team, name = team_and_label(body)
        url, event_types = checked_url(body.get("url")), checked_event_types(body.get("event_types"))
        secret = new_signing_secret()
        async with transaction(context.sessions) as session:
            owner = await repo.get_or_create_team(session, team)
            endpoint = await events_db.add_endpoint(session, owner.id, url, event_types, name, secret)
        return endpoint_view(endpoint, owner.name) | {"signing_secret": secret}

    @get("/", summary="List batch webhook endpoints", responses=admin_errors(404))
    async def list_endpoints(self, state: State, _admin: None, team: str | None = None) -> dict[str, Any]:
        """Endpoints newest first, of one team by name if given."""
        context: GatewayContext = state.context
        async with reading(context.sessions) as session:
            team_id = await billing_db.team_id_named(session, team)
            rows = await events_db.endpoints(session, team_id)
            names = await repo.team_names(session, [row.team_id for row in rows])
        return list_object([endpoint_view(row, names.get(row.team_id, row.team_id)) for row in rows], has_more=False)

    @get(
        "/{endpoint_id:str}", summary="A batch webhook endpoint and its recent deliveries", responses=admin_errors(404)
    )
    async def retrieve_endpoint(self, state: State, _admin: None, endpoint_id: str) -> dict[str, Any]:
        """The endpoint, its events by delivery state and its latest events."""
        context: GatewayContext = state.context
        async with reading(context.sessions) as session:
            endpoint = await events_db.get_endpoint(session, endpoint_id)
            if endpoint is None:
                raise not_found("webhook endpoint", endpoint_id)
            names = await repo.team_names(session, [endpoint.team_id])
            counts = await events_db.event_counts(session, endpoint_id)
            recent = await events_db.recent_events(session, endpoint_id, RECENT_EVENTS)
        return endpoint_view(endpoint, names.get(endpoint.team_id, endpoint.team_id)) | {
            "deliveries": {state: counts.get(state, 0) for state in ("pending", "delivered", "gave_up")},
            "recent_events": [event_view(event) for event in recent],
        }

    @delete(
        "/{endpoint_id:str}", status_code=200, summary="Delete a batch webhook endpoint", responses=admin_errors(404)
    )
    async def delete_endpoint(self, state: State, _admin: None, endpoint_id: str) -> dict[str, Any]:
        """Stop posting to it; events not delivered yet are dropped."""
        context: GatewayContext = state.context
        async with transaction(context.sessions) as session:
            endpoint = await events_db.get_endpoint(session, endpoint_id)
            if endpoint is None or not await events_db.delete_endpoint(session, endpoint_id, now_s()):
                raise not_found("webhook endpoint", endpoint_id)
        return {"id": endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}
