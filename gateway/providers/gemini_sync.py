"""Synchronous Gemini (``kind = "gemini_sync"``): ``POST /v1beta/models/{model}:generateContent`` per request,
with Gemini's Flex and Priority service tiers.

Each shard request's OpenAI chat body is translated by :mod:`gateway.translate.gemini` (``service_tier``
``flex`` or ``priority`` becomes ``serviceTier`` at the request's root) and the answer is translated back.
The tier that served the request is read from the ``x-gemini-service-tier`` header, else from
``usageMetadata.serviceTier``, and becomes the answer's ``service_tier``: a priority request Gemini
downgraded says ``standard`` and is billed at the standard rate. Flex refused for short capacity (a 429
``RESOURCE_EXHAUSTED`` or a 503, the service does not document which) is retried like any 429 or 5xx and
costs nothing. A request that cannot be translated is never sent: it gets a 400 line.

Chat only: Gemini's embeddings run as batches (``kind = "gemini"``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote

import httpx
import msgspec

from gateway.providers.base import HealthReport, SyncRequest
from gateway.providers.gemini_batch import API, CHAT_ENDPOINT, GeminiHttpAdapter
from gateway.providers.openai_wire import rejected_line, sync_output_line
from gateway.providers.sync_http import SyncCall, SyncHttpAdapter, asked_tier, json_object, now_s
from gateway.translate import TranslationError
from gateway.translate.gemini import chat_to_gemini, gemini_to_chat, google_error, served_tier

TIER_HEADER = "x-gemini-service-tier"
TARGET = "a Gemini model"


@dataclass
class GeminiSyncAdapter(SyncHttpAdapter, GeminiHttpAdapter):
    """Request-by-request execution on the Gemini API (``base_url`` with or without ``/v1beta``)."""

    kind: ClassVar[str] = "gemini_sync"

    def serves(self, endpoint: str) -> bool:
        """Chat completions only."""
        return endpoint == CHAT_ENDPOINT

    async def health(self) -> HealthReport:
        """``GET /v1beta/models?pageSize=1``, without retries."""
        return await self._probe((f"{API}/models", {"pageSize": 1}))

    def _call(self, request: SyncRequest) -> SyncCall | bytes:
        body = json_object(request.body)
        try:
            if body is None:
                raise TranslationError("The request body must be a JSON object.", "body")
            generate = chat_to_gemini(body)
        except TranslationError as exc:
            return msgspec.json.encode(rejected_line(request.custom_id, exc, batch_id=self.name, target=TARGET))
        model = quote(str(body.get("model") or "").removeprefix("models/"), safe="")
        path = f"{API}/models/{model}:generateContent"
        return SyncCall(path, msgspec.json.encode(generate), slow=asked_tier(body) == "flex")

    def _answer_line(self, request: SyncRequest, response: httpx.Response) -> bytes:
        answer = json_object(response.content)
        status, content = response.status_code, response.content
        request_id = None
        if answer is not None and response.is_success:
            model = str((json_object(request.body) or {}).get("model") or "")
            fallback = "chatcmpl-" + hashlib.sha256(response.content).hexdigest()[:24]
            chat = gemini_to_chat(answer, model=model, created=now_s(), fallback_id=fallback)
            tier = served_tier(response.headers.get(TIER_HEADER))
            if tier is not None:
                chat["service_tier"] = tier
            content, request_id = msgspec.json.encode(chat), str(answer.get("responseId") or "") or None
        elif answer is not None and isinstance(answer.get("error"), dict):
            content = msgspec.json.encode(google_error(answer["error"])[1])  # the status is the HTTP one
        return sync_output_line(request.custom_id, status, content, request_id, self._sanitise)
