"""The synchronous OpenAI endpoints of an emulated provider: ``/chat/completions``, ``/embeddings``
and ``/models``, answered at once by the same deterministic model as its batches.

Providers without a batch API are driven through these by the gateway's fan-out. Per-call faults
(down, latency, 429 with Retry-After, 5xx) apply as to every call; ``fail_fraction`` fails the
requests whose body hashes under it with a 500, deterministically (:mod:`gateway.simulator.sync_calls`).

Chat completions take OpenAI's ``service_tier`` and answer the tier that served them: ``flex`` and
``priority`` as asked, ``auto``/``default``/none as ``default``. ``flex_unavailable_rate`` refuses flex calls
with the unbilled 429 of short flex capacity; ``priority_downgrade_rate`` serves priority calls as
``default``, as the ramp limit does.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from litestar import Controller, Request, get, post

from gateway.simulator.errors import ApiError
from gateway.simulator.openai_protocol import chat_completion, embeddings
from gateway.simulator.state import emulator_of
from gateway.simulator.sync_calls import FlexUnavailable, Tier, bill, counted, maybe_fail, serve_tier


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


OPENAI_TIERS: dict[str, Tier] = {
    "auto": "standard", "default": "standard", "scale": "standard", "flex": "flex", "priority": "priority",
    "fast": "priority",
}  # fmt: skip
"""OpenAI ``service_tier`` values chat completions take -> the tier asked for. ``fast`` is answered as
``priority`` (as OpenAI's answers show it); ``scale`` (pre-purchased units this emulator has none of) is served
at the standard tier; ``ultrafast`` is the Responses API's only, so chat completions refuse it."""
FLEX_UNAVAILABLE = (
    "Resource Unavailable: flex processing is temporarily short of capacity. Retry later, or retry with "
    "service_tier 'auto' for standard processing. You were not charged for this request."
)


def _served_tier(request: Request[Any, Any, Any], asked: Any) -> str:
    """The OpenAI name of the tier that serves a call asking for ``asked`` (flex's 429 when flex is short)."""
    if asked is not None and (not isinstance(asked, str) or asked not in OPENAI_TIERS):
        raise ApiError(400, f"Invalid value for 'service_tier': {asked!r}.", param="service_tier", code="invalid_value")
    try:
        served = serve_tier(emulator_of(request), OPENAI_TIERS[asked or "auto"])
    except FlexUnavailable:
        raise ApiError(429, FLEX_UNAVAILABLE, type="rate_limit_error", code="resource_unavailable") from None
    return "default" if served == "standard" else served


class SyncController(Controller):
    """One request, one answer."""

    @post("/chat/completions", status_code=200)
    async def chat(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        raw = await request.body()
        maybe_fail(request, raw)
        emu = emulator_of(request)
        with counted(request):
            body = _body(raw)
            served = _served_tier(request, body.pop("service_tier", None))
            answer = chat_completion(body, emu.models, hashlib.sha256(raw).hexdigest()[:16], emu.clock.ts())
        bill(emu, served, answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"])
        return {**answer, "service_tier": served}

    @post("/embeddings", status_code=200)
    async def embed(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        raw = await request.body()
        maybe_fail(request, raw)
        with counted(request):
            answer = embeddings(_body(raw), emulator_of(request).models)
        return answer

    @get("/models")
    async def models(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        emu = emulator_of(request)
        created = emu.clock.ts()
        data = [{"id": m, "object": "model", "created": created, "owned_by": emu.name} for m in emu.models]
        return {"object": "list", "data": data}
