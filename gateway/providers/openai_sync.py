"""Synchronous fan-out to any OpenAI-compatible ``/v1/chat/completions`` or ``/v1/embeddings``.

For providers without a batch API (DeepSeek, vLLM, Ollama, Together's sync API...) the engine runs a
shard's requests itself; this adapter sends each request's body as it is, and its answer, success or error,
becomes the output line. Retries, limits, flex timeouts and the "unsupported" batch methods come from
:class:`~gateway.providers.sync_http.SyncHttpAdapter`. ``service_tier`` travels in the body as the shard
placed it, and OpenAI's answer names the tier that served it in its own ``service_tier``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import httpx

from gateway.providers.base import HealthReport, SyncRequest
from gateway.providers.openai_wire import sync_output_line
from gateway.providers.sync_http import SyncCall, SyncHttpAdapter

_FLEX_FIELD = b'"service_tier":"flex"'
"""How the gateway's shard lines spell the flex tier (written compactly when the shard is placed)."""


@dataclass
class OpenAISyncAdapter(SyncHttpAdapter):
    """Request-by-request execution on an OpenAI-compatible endpoint."""

    kind: ClassVar[str] = "openai_sync"

    async def health(self) -> HealthReport:
        """``GET /models``: any answer below 500 means the endpoint is up, unless it refuses the key."""
        return await self._probe(("/models", None), healthy=self._answers)

    def _call(self, request: SyncRequest) -> SyncCall:
        path = request.endpoint.removeprefix("/v1")
        return SyncCall(path, request.body, slow=_FLEX_FIELD in request.body)

    def _answer_line(self, request: SyncRequest, response: httpx.Response) -> bytes:
        request_id = response.headers.get("x-request-id")
        return sync_output_line(request.custom_id, response.status_code, response.content, request_id, self._sanitise)
