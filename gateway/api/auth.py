"""Bearer-key authentication for the client API and the admin API."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from litestar import Request
from litestar.datastructures import State

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.unit_of_work import reading
from gateway.errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class Principal:
    """The caller of a client API request."""

    team_id: str
    team_name: str
    api_key_id: str


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "You didn't provide an API key. Provide it in the Authorization header as 'Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    return token.strip()


async def provide_principal(request: Request, state: State) -> Principal:
    """Resolve the caller's key to its team, or answer 401."""
    token = _bearer(request)
    context: GatewayContext = state.context
    async with reading(context.sessions) as session:
        found = await repo.authenticate(session, token)
    if found is None:
        raise Unauthorized("Incorrect API key provided.")
    key, team = found
    return Principal(team_id=team.id, team_name=team.name, api_key_id=key.id)


async def require_admin(request: Request, state: State) -> None:
    """Answer 401 unless the request carries the admin key from settings."""
    context: GatewayContext = state.context
    admin_key = context.settings.admin_key
    token = _bearer(request)
    if admin_key is None:
        raise Forbidden("Admin endpoints are disabled: BATCHGW_ADMIN_KEY is not set.", code="admin_disabled")
    if not hmac.compare_digest(token.encode(), admin_key.get_secret_value().encode()):
        raise Unauthorized("Incorrect admin key provided.")
