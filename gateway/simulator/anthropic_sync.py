"""Anthropic's synchronous ``POST /v1/messages``, with its service tiers.

Answered at once by the same deterministic model as the Message Batches. ``service_tier`` is ``auto`` (the
default: Priority Tier capacity when there is some, else standard) or ``standard_only``; the answer's
``usage.service_tier`` names the tier that served it (``priority`` or ``standard``). This emulator has
Priority capacity for every ``auto`` call unless ``priority_downgrade_rate`` serves it at ``standard`` (1.0:
an organisation without a Priority commitment). Anthropic has no flex tier.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from litestar import Request, post

from gateway.simulator.anthropic_protocol import invalid, simulate_message
from gateway.simulator.anthropic_routes import require_version
from gateway.simulator.state import emulator_of
from gateway.simulator.sync_calls import Tier, bill, counted, maybe_fail, serve_tier

MESSAGES = "/v1/messages"
ANTHROPIC_TIERS: dict[str, Tier] = {"auto": "priority", "standard_only": "standard"}
"""``service_tier`` -> the tier asked for (``auto`` takes Priority capacity where there is some)."""


@post(MESSAGES, status_code=200, before_request=require_version)
async def create_message(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """One Messages request answered now."""
    raw = await request.body()
    maybe_fail(request, raw)
    emu = emulator_of(request)
    with counted(request):
        try:
            params = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise invalid("The request body is not valid JSON.") from None
        asked = params.pop("service_tier", "auto") if isinstance(params, dict) else "auto"
        if not isinstance(asked, str) or asked not in ANTHROPIC_TIERS:
            raise invalid("service_tier: Input should be 'auto' or 'standard_only'")
        if isinstance(params, dict) and params.get("stream"):
            raise invalid("stream: this emulator answers without streaming")
        message_id = "msg_" + hashlib.sha256(raw).hexdigest()[:24]
        message = simulate_message(params, emu.models, message_id)
        served = serve_tier(emu, ANTHROPIC_TIERS[asked])
    usage = message["usage"]
    usage["service_tier"] = served
    bill(emu, served, usage["input_tokens"], usage["output_tokens"])
    return message
