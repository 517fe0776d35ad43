"""Synchronous Anthropic (``kind = "anthropic_sync"``): ``POST /v1/messages`` per request, with Anthropic's
service tiers.

Each shard request's OpenAI chat body is translated by :mod:`gateway.translate.anthropic` and the Message
is translated back. ``service_tier`` follows the tier the request was placed at
(:data:`gateway.translate.anthropic.SERVICE_TIERS`): ``auto`` for priority, which takes Priority Tier
capacity where the organisation has a commitment, and ``standard_only`` otherwise, so no request is billed
at a tier nobody chose. The answer's ``usage.service_tier`` becomes its ``service_tier``: a priority request
served at the standard tier is billed at the standard rate. Anthropic's 529 (overloaded) is retried like
any 5xx. A request that cannot be translated is never sent: it gets a 400 line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import httpx
import msgspec

from gateway.providers.anthropic_batch import AnthropicHttpAdapter
from gateway.providers.anthropic_wire import BATCHES, CHAT
from gateway.providers.base import HealthReport, SyncRequest
from gateway.providers.openai_wire import rejected_line, sync_output_line
from gateway.providers.sync_http import SyncCall, SyncHttpAdapter, asked_tier, json_object, now_s
from gateway.translate import MalformedResult, TranslationError
from gateway.translate.anthropic import (
    DEFAULT_MAX_TOKENS,
    SERVICE_TIERS,
    chat_to_messages,
    error_to_openai,
    message_to_chat,
)

MESSAGES = "/v1/messages"
TARGET = "an Anthropic model"


@dataclass
class AnthropicSyncAdapter(SyncHttpAdapter, AnthropicHttpAdapter):
    """Request-by-request execution on Anthropic's Messages API."""

    kind: ClassVar[str] = "anthropic_sync"
    service_tiers: ClassVar[frozenset[str]] = frozenset({"priority"})
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    """``max_tokens`` for requests that set neither ``max_tokens`` nor ``max_completion_tokens``."""

    def serves(self, endpoint: str) -> bool:
        """Chat only: Anthropic has no embeddings."""
        return endpoint == CHAT

    async def health(self) -> HealthReport:
        """``GET /v1/messages/batches?limit=1`` (any answer below 500 but a refused key means up), no retries."""
        return await self._probe((BATCHES, {"limit": 1}), healthy=self._answers)

    def _call(self, request: SyncRequest) -> SyncCall | bytes:
        body = json_object(request.body)
        try:
            if body is None:
                raise TranslationError("The request body must be a JSON object.", "body")
            params = chat_to_messages(body, default_max_tokens=self.default_max_tokens)
        except TranslationError as exc:
            return msgspec.json.encode(rejected_line(request.custom_id, exc, batch_id=self.name, target=TARGET))
        params["service_tier"] = SERVICE_TIERS[asked_tier(body)]
        return SyncCall(MESSAGES, msgspec.json.encode(params))

    def _answer_line(self, request: SyncRequest, response: httpx.Response) -> bytes:
        answer = json_object(response.content)
        status, content = response.status_code, response.content
        request_id = response.headers.get("request-id")
        if answer is not None and response.is_success:
            try:
                content = msgspec.json.encode(message_to_chat(answer, created=now_s()))
            except MalformedResult as exc:
                status, content = 502, f"The provider's answer cannot be used: {exc}.".encode()
        elif answer is not None and answer.get("type") == "error":
            content = msgspec.json.encode(error_to_openai(answer)["body"])
            request_id = request_id or str(answer.get("request_id") or "") or None
        return sync_output_line(request.custom_id, status, content, request_id, self._sanitise)
