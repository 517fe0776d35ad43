"""What the emulators' synchronous endpoints share, whatever their protocol: counting calls, the
``fail_fraction`` fault, and service tiers.

``fail_fraction`` fails the requests whose body hashes under it with a 500, deterministically.

A synchronous call asks for the standard, flex or priority tier in its protocol's own words (OpenAI
``service_tier``, Gemini ``serviceTier``, Anthropic ``service_tier``); the protocol maps that to one of
:data:`TIERS` and asks :func:`serve_tier` which tier serves it. The fault knobs apply to every protocol:
``flex_unavailable_next`` / ``flex_unavailable_rate`` refuse flex calls for short capacity (unbilled, and
counted in ``stats.flex_refused``), ``priority_downgrade_rate`` serves priority calls at the standard tier.
:func:`bill` counts an answer's tokens under the tier that served it, the invoice's ``sync_by_tier``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from litestar import Request

from gateway.simulator.errors import ApiError
from gateway.simulator.model import hash_fraction
from gateway.simulator.state import EmulatorState, emulator_of

Tier = Literal["standard", "flex", "priority"]
TIERS: tuple[Tier, ...] = ("standard", "flex", "priority")


class FlexUnavailable(Exception):
    """Flex capacity is short: the protocol answers its own unbilled refusal."""


def serve_tier(emu: EmulatorState, asked: Tier) -> Tier:
    """The tier that serves a call asking for ``asked``; raises :class:`FlexUnavailable` when flex is short."""
    faults = emu.faults
    if asked == "flex":
        if faults.flex_unavailable_next > 0 or emu.rng.random() < faults.flex_unavailable_rate:
            faults.flex_unavailable_next = max(0, faults.flex_unavailable_next - 1)
            emu.stats.flex_refused += 1
            raise FlexUnavailable
        return "flex"
    if asked == "priority" and emu.rng.random() < faults.priority_downgrade_rate:
        return "standard"
    return asked


def bill(emu: EmulatorState, tier: str, input_tokens: int, output_tokens: int) -> None:
    """Count one answer's tokens under the tier (the protocol's name for it) that served it."""
    billed = emu.stats.usage_by_tier.setdefault(tier, {"input": 0, "output": 0})
    billed["input"] += input_tokens
    billed["output"] += output_tokens


@contextmanager
def counted(request: Request[Any, Any, Any]) -> Iterator[None]:
    """Count the request answered in the block: failed if it raises an ``ApiError``, else succeeded."""
    try:
        yield
    except ApiError:
        count(request, succeeded=False)
        raise
    count(request, succeeded=True)


def count(request: Request[Any, Any, Any], succeeded: bool) -> None:
    """Count one synchronous request in the emulator's stats."""
    stats = emulator_of(request).stats
    stats.requests_processed += 1
    if succeeded:
        stats.requests_succeeded += 1
    else:
        stats.requests_failed += 1


def maybe_fail(request: Request[Any, Any, Any], raw: bytes) -> None:
    """Fail the request with a 500 when its body hashes under ``fail_fraction``."""
    key = hashlib.sha256(raw).hexdigest()
    if hash_fraction(key) < emulator_of(request).faults.fail_fraction:
        count(request, succeeded=False)
        raise ApiError(500, "The server had an error while processing your request.", type="server_error")
