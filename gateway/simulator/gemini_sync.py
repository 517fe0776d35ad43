"""The Gemini API's synchronous ``models/{model}:generateContent``, with its service tiers, and
``models/{model}:embedContent`` (one text's vector, without a token count, as the API answers it).

Answered at once by the same deterministic model as the batches. ``serviceTier`` (or ``service_tier``) at the
request's root asks for ``standard`` (also ``unspecified`` or absent), ``flex`` or ``priority``, in any case
and with or without the ``SERVICE_TIER_`` prefix the first SDK release sent (which spellings the service
accepts is not documented, so every one is taken). The answer names the tier that served it twice, as the
service does: ``usageMetadata.serviceTier`` and the ``x-gemini-service-tier`` header. Flex refused for
short capacity answers 429 ``RESOURCE_EXHAUSTED`` with a ``RetryInfo`` of ``retry_after_s`` (the service's
error for shed flex capacity is not documented; a careful client treats 429 and 503 alike), and a
downgraded priority call is served at ``standard``, both through the shared knobs of
:mod:`gateway.simulator.sync_calls`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from litestar import Response

from gateway.simulator.errors import ApiError
from gateway.simulator.gemini_files import Req, invalid, json_field
from gateway.simulator.gemini_protocol import embed_content, generate_content
from gateway.simulator.state import emulator_of
from gateway.simulator.sync_calls import FlexUnavailable, Tier, bill, counted, maybe_fail, serve_tier

GENERATE = "generateContent"
EMBED_ONE = "embedContent"
TIER_HEADER = "x-gemini-service-tier"
GEMINI_TIERS: dict[str, Tier] = {
    "unspecified": "standard", "standard": "standard", "flex": "flex", "priority": "priority",
}  # fmt: skip
"""``serviceTier`` (lower-cased, without ``service_tier_``) -> the tier asked for."""
FLEX_SHED = "Flex capacity is temporarily unavailable for this model. Retry later, or send the request without flex."


def asked_tier(value: Any) -> Tier:
    """The tier a request's ``serviceTier`` asks for (400 for a value the API does not have)."""
    if value is None:
        return "standard"
    key = value.lower().removeprefix("service_tier_") if isinstance(value, str) else None
    if key not in GEMINI_TIERS:
        raise invalid(f"Invalid value at 'service_tier' ({value!r}): expected flex, standard or priority.")
    return GEMINI_TIERS[key]


async def generate(request: Req, model: str) -> Response[dict[str, Any]]:
    """One GenerateContentRequest answered now, at the tier that served it."""
    raw = await request.body()
    maybe_fail(request, raw)
    emu = emulator_of(request)
    with counted(request):
        body = _json_body(raw)
        try:
            served = serve_tier(emu, asked_tier(json_field(body, "serviceTier", "service_tier")))
        except FlexUnavailable:
            delay = {"retry-after": str(emu.faults.retry_after_s)}  # sent as RetryInfo, as Google's 429s are
            raise ApiError(429, FLEX_SHED, code="RESOURCE_EXHAUSTED", headers=delay) from None
        answer = generate_content(body, model, hashlib.sha256(raw).hexdigest()[:22])
    usage = answer["usageMetadata"]
    usage["serviceTier"] = served
    bill(emu, served, usage["promptTokenCount"], usage["candidatesTokenCount"])
    return Response(answer, status_code=200, headers={TIER_HEADER: served})


async def embed(request: Req, model: str) -> dict[str, Any]:
    """One EmbedContentRequest answered now: ``{"embedding": {"values"}}``, without a token count (the
    synchronous ``EmbedContentResponse`` has none; the batch's ``SingleEmbedContentResponse`` does)."""
    raw = await request.body()
    maybe_fail(request, raw)
    emu = emulator_of(request)
    with counted(request):
        body = _json_body(raw)
        answer = embed_content(body, model)
    bill(emu, "standard", answer.pop("tokenCount"), 0)
    return answer


def _json_body(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (Google's 400 otherwise)."""
    try:
        body = msgspec.json.decode(raw or b"{}")
    except msgspec.DecodeError:
        raise invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received: expected an object.")
    return body
