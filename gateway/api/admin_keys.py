"""Admin API for client keys: create (optionally expiring), list, look up and revoke.

A key is shown by its id and prefix, never its secret (the secret is in the create response only). A
revocation holds at once on every replica: each request reads its key from the database.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.di import Provide

from gateway.api.auth import require_admin
from gateway.api.inputs import MAX_JSON_BODY_BYTES, decode_json_object, team_and_label
from gateway.api.objects import list_object
from gateway.api.openapi import ADMIN_SECURITY, CREATE_KEY_BODY, admin_errors, with_request_body
from gateway.context import GatewayContext
from gateway.db import billing as billing_db
from gateway.db import repo
from gateway.db.models import ApiKey, Team
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import bad_request, not_found


def key_view(key: ApiKey, team: Team, now: int) -> dict[str, Any]:
    """A key as the admin API shows it: no secret, its state spelt out."""
    if key.revoked_at is not None:
        status = "revoked"
    elif key.expires_at is not None and key.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return {
        "id": key.id,
        "object": "api_key",
        "prefix": key.prefix,
        "team": team.name,
        "name": key.name,
        "status": status,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    }


def expiry_from(value: object, now: int) -> int | None:
    """A create body's ``expires_at``: unix seconds in the future (at most ten years ahead), or absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request("'expires_at' must be a unix timestamp in seconds (an integer).", param="expires_at")
    if value <= now:
        raise bad_request("'expires_at' must be in the future.", param="expires_at")
    if value > now + repo.MAX_KEY_LIFETIME_S:
        raise bad_request("'expires_at' must be at most ten years ahead.", param="expires_at")
    return value


class AdminKeysController(Controller):
    """``/admin/keys``: every route needs ``Authorization: Bearer <admin key>``."""

    path = "/admin/keys"
    dependencies = {"_admin": Provide(require_admin)}
    tags = ["admin"]
    security = ADMIN_SECURITY

    @post(
        "/",
        status_code=201,
        summary="Create a client API key",
        responses=admin_errors(413),
        operation_class=with_request_body(CREATE_KEY_BODY),
        request_max_body_size=MAX_JSON_BODY_BYTES,
    )
    async def create_key(self, request: Request, state: State, _admin: None) -> dict[str, Any]:
        """Body ``{"team": NAME, "name": LABEL?, "expires_at": UNIX_SECONDS?}``; the secret is in this
        response only."""
        context: GatewayContext = state.context
        body = decode_json_object(await request.body(), free_text=("name",))
        team, name = team_and_label(body)
        now = int(time.time())
        expires_at = expiry_from(body.get("expires_at"), now)
        async with transaction(context.sessions) as session:
            secret, key = await repo.create_api_key(session, team, name, expires_at=expires_at)
            owner = await billing_db.team_by_name(session, team)
        assert owner is not None
        return key_view(key, owner, now) | {"key": secret}

    @get("/", summary="List client API keys", responses=admin_errors(404))
    async def list_keys(
        self, state: State, _admin: None, team: str | None = None, include_revoked: bool = False
    ) -> dict[str, Any]:
        """Keys newest first, of one team by name if given; revoked ones only with ``include_revoked``."""
        context: GatewayContext = state.context
        async with reading(context.sessions) as session:
            team_id = await billing_db.team_id_named(session, team)
            rows = await repo.list_api_keys(session, team_id, include_revoked=include_revoked)
        now = int(time.time())
        return list_object([key_view(key, owner, now) for key, owner in rows], has_more=False)

    @get("/{key_id:str}", summary="Retrieve a client API key", responses=admin_errors(404))
    async def retrieve_key(self, state: State, _admin: None, key_id: str) -> dict[str, Any]:
        """One key by its id (``key_...``)."""
        context: GatewayContext = state.context
        async with reading(context.sessions) as session:
            found = await repo.get_api_key(session, key_id)
        if found is None:
            raise not_found("key", key_id)
        return key_view(*found, int(time.time()))

    @delete("/{key_id:str}", status_code=200, summary="Revoke a client API key", responses=admin_errors(404))
    async def revoke_key(self, state: State, _admin: None, key_id: str) -> dict[str, Any]:
        """Refuse the key from now on, on every replica; revoking a revoked key changes nothing."""
        context: GatewayContext = state.context
        now = int(time.time())
        async with transaction(context.sessions) as session:
            await repo.revoke_api_key(session, key_id, now)
            found = await repo.get_api_key(session, key_id)
        if found is None:
            raise not_found("key", key_id)
        return key_view(*found, now)
