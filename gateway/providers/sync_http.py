"""The base of the kinds without a batch API: one request at a time, on the shared HTTP base.

:class:`SyncHttpAdapter` sends one shard request per :meth:`~SyncHttpAdapter.execute` call. A kind says what
to send (:meth:`~SyncHttpAdapter._call`: path, body, whether it may queue for minutes) and how the answer
reads as an OpenAI output line (:meth:`~SyncHttpAdapter._answer_line`); the rest is here:

- the retry of the official SDKs (408, 409, 429 and 5xx; a ``Retry-After`` waited out up to two minutes),
  after which the last answer becomes the request's output line;
- a 401/403 (or the kind's equivalent) raises :class:`~gateway.providers.base.ProviderAuthFailed`: every
  other request would fail the same way;
- every try waits for the provider's limits (concurrency, requests and tokens per minute, a 429's pause)
  through the limiter the engine hands in (:meth:`~SyncHttpAdapter.use_limiter`,
  :mod:`gateway.routing.limits`), shared by every replica on PostgreSQL; until then the limits are kept in
  this process;
- a request placed at the ``flex`` service tier gets a 15-minute timeout, as flex answers can queue for
  minutes; flex's 429 for short capacity is unbilled and retried like any 429, and a request still refused
  after its tries is moved to a follow-up shard by the engine.

A shard placed at a service tier carries it in OpenAI's words (``"service_tier": "flex"`` or ``"priority"``
in each body, :func:`asked_tier`); each kind asks its provider for that tier in its own words and reports the
tier that served each answer as ``service_tier`` in the answer's body, which the ledger prices.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import msgspec

from gateway.providers.base import (
    ProviderAuthFailed,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    SyncRequest,
)
from gateway.providers.http import HttpAdapter, RetryPolicy
from gateway.routing.limits import RequestLimiter, local_limiter

SYNC_RETRY = RetryPolicy(attempts=6, initial_s=0.5, max_s=30.0, retry_after_cap_s=120.0, wait_out_long_hints=True)
"""Six tries; a provider's ``Retry-After`` is waited out, two minutes at the most."""

FLEX_TIMEOUT_S = 900.0
"""Timeout of a flex request: flex answers can take minutes (OpenAI and Google advise 15)."""

PLACED_TIERS = frozenset({"flex", "priority"})
"""The tiers a shard's requests can be placed at besides the standard one."""


def asked_tier(body: Any) -> str:
    """The service tier a shard request's OpenAI body asks for: ``flex``, ``priority`` or ``standard``."""
    tier = body.get("service_tier") if isinstance(body, dict) else None
    return tier if isinstance(tier, str) and tier in PLACED_TIERS else "standard"


def json_object(raw: bytes) -> dict[str, Any] | None:
    """``raw`` decoded, if it is a JSON object."""
    try:
        decoded = msgspec.json.decode(raw) if raw else None
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested too deeply to read
        return None
    return decoded if isinstance(decoded, dict) else None


def now_s() -> int:
    """The ``created`` time of an answer translated now."""
    return int(time.time())


@dataclass(frozen=True)
class SyncCall:
    """One provider call for one shard request."""

    path: str
    body: bytes
    slow: bool = False
    """True for a flex request, which may queue for minutes: it gets :data:`FLEX_TIMEOUT_S`."""
    headers: dict[str, str] = field(default_factory=dict)


def flex_capacity_refusal(response: httpx.Response) -> bool:
    """Whether a 429 is flex processing short of capacity (unbilled, retried with backoff) rather than a rate
    limit: OpenAI's ``resource_unavailable`` code or "Resource Unavailable" message (the exact shape is
    undocumented, so either is taken)."""
    if response.status_code != 429:
        return False
    text = response.text.lower()
    return "resource_unavailable" in text or "resource unavailable" in text


class _RetryableAnswer(ProviderUnavailable):
    """An answer worth another try; kept so that it becomes the output line if the tries run out."""

    def __init__(self, error: ProviderError, response: httpx.Response, retry_after_s: float | None) -> None:
        super().__init__(str(error), retry_after_s=retry_after_s)
        self.response = response


@dataclass
class SyncHttpAdapter(HttpAdapter):
    """Request-by-request execution of a shard; a kind supplies :meth:`_call` and :meth:`_answer_line`."""

    executes_locally: ClassVar[bool] = True
    service_tiers: ClassVar[frozenset[str]] = PLACED_TIERS
    STATUS_ERRORS = {**HttpAdapter.STATUS_ERRORS, 409: ProviderUnavailable}
    retry: RetryPolicy = field(default_factory=lambda: SYNC_RETRY)
    _limiter: RequestLimiter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._limiter = local_limiter(self.name, self.config.limits)

    @property
    def limiter(self) -> RequestLimiter:
        """What paces this adapter's requests."""
        return self._limiter

    def use_limiter(self, limiter: RequestLimiter) -> None:
        """Pace every request, retries included, with ``limiter`` (the engine's, shared between replicas)."""
        self._limiter = limiter

    async def execute(self, request: SyncRequest) -> bytes:
        """Send one request; return its output line. Raises ProviderUnavailable if unreachable,
        ProviderAuthFailed if the provider refuses the key."""
        call = self._call(request)
        if isinstance(call, bytes):
            return call
        try:
            response = await self._retrying(lambda: self._send_once(call, request.estimated_tokens))
        except _RetryableAnswer as exc:
            response = exc.response
        except ProviderUnavailable as exc:
            raise ProviderUnavailable(f"{exc} (unreachable after {self.retry.attempts} tries)") from None
        return self._answer_line(request, response)

    def _answers(self, response: httpx.Response) -> bool:
        """Health: any answer below 500 means the provider is up, unless it refuses the key."""
        return response.status_code < 500 and not issubclass(self._error_class(response), ProviderAuthFailed)

    # ----------------------------------------------------------------- hooks of a synchronous kind

    @abc.abstractmethod
    def _call(self, request: SyncRequest) -> SyncCall | bytes:
        """The provider call for ``request``, or its output line when it cannot be sent (never translatable)."""

    @abc.abstractmethod
    def _answer_line(self, request: SyncRequest, response: httpx.Response) -> bytes:
        """The OpenAI output line (without newline) of the provider's last answer, success or error."""

    # ----------------------------------------------------------------- machinery

    async def _send_once(self, call: SyncCall, estimated_tokens: int) -> httpx.Response:
        timeout = max(self.config.timeout_s, FLEX_TIMEOUT_S) if call.slow else self.config.timeout_s
        headers = {"Content-Type": "application/json", **call.headers}
        async with self._limiter.slot(estimated_tokens):
            response = await self._request("POST", call.path, content=call.body, headers=headers, timeout_s=timeout)
        if response.is_success:
            return response
        kind = self._error_class(response)
        if issubclass(kind, ProviderAuthFailed):
            raise self._status_error("POST", call.path, response)
        if issubclass(kind, ProviderUnavailable):
            hint = self._retry_hint(response)
            if issubclass(kind, ProviderRateLimited) and not (call.slow and flex_capacity_refusal(response)):
                # A flex capacity refusal is this call's alone: the provider's other traffic goes on.
                await self._limiter.rate_limited(hint)
            raise _RetryableAnswer(self._status_error("POST", call.path, response), response, hint)
        return response  # refused for a reason of its own: the request's error line
