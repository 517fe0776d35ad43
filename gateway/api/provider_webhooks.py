"""``POST /webhooks/providers/{provider}``: batch webhooks from providers (OpenAI's), verified by signature.

No client key: the provider signs each delivery with the secret of the provider's ``webhook_secret_env`` (see
:mod:`gateway.pipeline.provider_webhooks`, which does the work).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.datastructures import State

from gateway.api.openapi import provider_errors
from gateway.pipeline import provider_webhooks


@post(
    "/webhooks/providers/{provider:str}",
    status_code=200,
    tags=["providers"],
    summary="Receive a provider's batch webhook",
    responses=provider_errors(404, 413),
    request_max_body_size=provider_webhooks.MAX_BODY_BYTES,
)
async def provider_webhook(request: Request[Any, Any, Any], state: State, provider: str) -> dict[str, str]:
    """Verify a ``batch.completed`` (``failed``, ``expired``, ``cancelled``) event and poll that batch now."""
    outcome = await provider_webhooks.receive(state.context, provider, await request.body(), request.headers)
    return {"status": outcome}
