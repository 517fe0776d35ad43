"""Synchronous Gemini (``kind = "gemini_sync"``): ``POST /v1beta/models/{model}:generateContent`` per request,
with Gemini's Flex and Priority service tiers.

Each shard request's OpenAI chat body is translated by :mod:`gateway.translate.gemini` (``service_tier``
``flex`` or ``priority`` becomes ``serviceTier`` at the request's root) and the answer is translated back.
The tier that served the request is read from the ``x-gemini-service-tier`` header, else from
``usageMetadata.serviceTier``, and becomes the answer's ``service_tier``: a priority request Gemini
downgraded says ``standard`` and is billed at the standard rate. Flex refused for short capacity (a 429
``RESOURCE_EXHAUSTED`` or a 503, the service does not document which) is retried like any 429 or 5xx and
costs nothing. A request that cannot be translated is never sent: it gets a 400 line.

Embeddings go to ``:embedContent``, one text per request (:mod:`gateway.translate.gemini_embeddings`). Its
answer carries no token count (only the batch's does), so each is priced at the gateway's estimate of its
text, bytes / 4.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import msgspec

from gateway.providers.base import HealthReport, SyncRequest
from gateway.providers.gemini_batch import API, CHAT_ENDPOINT, GeminiHttpAdapter
from gateway.providers.gemini_wire import EMBEDDINGS
from gateway.providers.openai_wire import rejected_line, sync_output_line
from gateway.providers.sync_http import SyncCall, SyncHttpAdapter, asked_tier, json_object, now_s
from gateway.translate import MalformedResult, TranslationError, estimated_tokens, vectors_as_base64
from gateway.translate.gemini import chat_to_gemini, gemini_to_chat, google_error, served_tier
from gateway.translate.gemini_embeddings import embedding_to_gemini, gemini_to_embedding

TIER_HEADER = "x-gemini-service-tier"
TARGET = "a Gemini model"


@dataclass
class GeminiSyncAdapter(SyncHttpAdapter, GeminiHttpAdapter):
    """Request-by-request execution on the Gemini API (``base_url`` with or without ``/v1beta``)."""

    kind: ClassVar[str] = "gemini_sync"

    def serves(self, endpoint: str) -> bool:
        """Chat completions and embeddings."""
        return endpoint in (CHAT_ENDPOINT, EMBEDDINGS)

    async def health(self) -> HealthReport:
        """``GET /v1beta/models?pageSize=1``, without retries."""
        return await self._probe((f"{API}/models", {"pageSize": 1}))

    def _call(self, request: SyncRequest) -> SyncCall | bytes:
        body = json_object(request.body)
        embeds = request.endpoint == EMBEDDINGS
        try:
            if body is None:
                raise TranslationError("The request body must be a JSON object.", "body")
            translated = embedding_to_gemini(body) if embeds else chat_to_gemini(body)
        except TranslationError as exc:
            return msgspec.json.encode(rejected_line(request.custom_id, exc, batch_id=self.name, target=TARGET))
        model = quote(str(body.get("model") or "").removeprefix("models/"), safe="")
        path = f"{API}/models/{model}:{'embedContent' if embeds else 'generateContent'}"
        return SyncCall(path, msgspec.json.encode(translated), slow=not embeds and asked_tier(body) == "flex")

    def _answer_line(self, request: SyncRequest, response: httpx.Response) -> bytes:
        answer = json_object(response.content)
        status, content = response.status_code, response.content
        request_id = None
        if answer is not None and response.is_success and request.endpoint == EMBEDDINGS:
            status, content = self._embedding_answer(request, answer)
        elif answer is not None and response.is_success:
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

    def _embedding_answer(self, request: SyncRequest, answer: dict[str, Any]) -> tuple[int, bytes]:
        """The status and OpenAI embeddings list of an ``EmbedContentResponse``, priced at the text's bytes / 4
        (a 502 ``invalid_provider_output`` for an answer without a vector)."""
        body = json_object(request.body) or {}
        text = body.get("input")
        text = text[0] if isinstance(text, list) and text else text
        estimate = estimated_tokens(len(str(text).encode()))
        try:
            embedded = gemini_to_embedding(answer, model=str(body.get("model") or ""), estimated_tokens=estimate)
            if body.get("encoding_format") == "base64":
                embedded = vectors_as_base64(embedded, "Gemini")
        except MalformedResult as exc:
            error = {"message": str(exc), "type": "server_error", "param": None, "code": "invalid_provider_output"}
            return 502, msgspec.json.encode({"error": error})
        return 200, msgspec.json.encode(embedded)
