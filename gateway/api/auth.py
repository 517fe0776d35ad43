"""Bearer-key authentication for the client API and the admin API."""

from __future__ import annotations

import hmac
import math
import time
from dataclasses import dataclass

from litestar import Request
from litestar.datastructures import State

from gateway.context import GatewayContext
from gateway.db import ratelimits, repo
from gateway.db.unit_of_work import Rollback, transaction
from gateway.errors import Forbidden, RateLimited, Unauthorized

LAST_USED_EVERY_S = 60
"""A key's ``last_used_at`` is written at most this often (a write a minute per key, not one per request)."""


@dataclass(frozen=True)
class Principal:
    """The caller of a client API request."""

    team_id: str
    team_name: str
    api_key_id: str


def bearer_token(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header's value, or None."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _bearer(request: Request, *, api_key_header: bool = False) -> str:
    """The key of ``Authorization: Bearer``, or (``api_key_header``) of ``x-api-key`` as Anthropic's clients send it."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is not None:
        return token
    if api_key_header and request.headers.get("x-api-key", "").strip():
        return request.headers["x-api-key"].strip()
    raise Unauthorized(
        "You didn't provide an API key. Provide it in the Authorization header as 'Bearer YOUR_KEY'"
        + (" or in the x-api-key header." if api_key_header else "."),
        code="missing_api_key",
    )


async def provide_principal(request: Request, state: State) -> Principal:
    """Resolve the caller's key to its team, or answer 401 (saying so when the key was revoked or expired).

    Read from the database on every request, so a revocation holds at once on every replica."""
    token = _bearer(request, api_key_header=True)
    context: GatewayContext = state.context
    key = await repo.authenticate(context.point_reads, token)
    if key is None:
        raise Unauthorized("Incorrect API key provided.")
    now = int(time.time())
    refusal = _refusal(key, now)
    if refusal is not None:
        raise refusal
    await _admit(context, key)
    if _use_to_note(key, now):
        async with transaction(context.sessions) as session:
            await repo.note_key_used(session, key.key_id, now, LAST_USED_EVERY_S)
    return _principal(key)


def read_only_principal(context: GatewayContext, key: repo.PresentedKey) -> Principal | None:
    """The caller, when its key (just read) needs nothing more: valid now, its last use noted within the
    minute, no request limits configured. None when anything more is due (an answer other than success, a rate
    check, a write): the caller then takes :func:`provide_principal`'s path, which does it."""
    limits = context.settings.limits
    now = int(time.time())
    if limits.key_requests_per_minute or limits.team_requests_per_minute:
        return None
    if _refusal(key, now) is not None or _use_to_note(key, now):
        return None
    return _principal(key)


def _refusal(key: repo.PresentedKey, now: int) -> Unauthorized | None:
    """Why ``key`` may not be used at ``now``, or None."""
    if key.revoked_at is not None:
        return Unauthorized(f"This API key was revoked at {_when(key.revoked_at)}.", code="api_key_revoked")
    if key.expires_at is not None and key.expires_at <= now:
        return Unauthorized(f"This API key expired at {_when(key.expires_at)}.", code="api_key_expired")
    return None


def _use_to_note(key: repo.PresentedKey, now: int) -> bool:
    """True when the key's ``last_used_at`` is due to be written."""
    return key.last_used_at is None or now - key.last_used_at >= LAST_USED_EVERY_S


def _principal(key: repo.PresentedKey) -> Principal:
    return Principal(team_id=key.team_id, team_name=key.team_name, api_key_id=key.key_id)


async def _admit(context: GatewayContext, key: repo.PresentedKey) -> None:
    """Answer 429 with Retry-After when the key or its team is over its request rate (when limits are set)."""
    settings = context.settings.limits
    limits = [
        ratelimits.Limit(name, per_minute)
        for name, per_minute in ((f"key:{key.key_id}", settings.key_requests_per_minute),
                                 (f"team:{key.team_id}", settings.team_requests_per_minute))
        if per_minute
    ]  # fmt: skip
    if not limits:
        return
    refusal = None
    async with transaction(context.sessions) as session:
        refusal = await ratelimits.admit(session, limits, time.time())
        if refusal is not None:
            raise Rollback  # neither timeline keeps a reservation for a refused request
    if refusal is not None:
        limit, wait_s = refusal
        whose = f"key {key.key_id}" if limit.name.startswith("key:") else f"team '{key.team_name}'"
        raise RateLimited(
            f"Rate limit reached for requests of {whose}: {limit.per_minute} a minute. "
            f"Please try again in {max(1, math.ceil(wait_s))}s.",
            retry_after_s=wait_s,
        )


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


async def require_admin(request: Request, state: State) -> None:
    """Answer 401 unless the request carries the admin key from settings."""
    context: GatewayContext = state.context
    admin_key = context.settings.admin_key
    token = _bearer(request)
    if admin_key is None:
        raise Forbidden("Admin endpoints are disabled: BATCHGW_ADMIN_KEY is not set.", code="admin_disabled")
    if not hmac.compare_digest(token.encode(), admin_key.get_secret_value().encode()):
        raise Unauthorized("Incorrect admin key provided.")
