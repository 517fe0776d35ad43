"""Synchronous fan-out to any OpenAI-compatible ``/v1/chat/completions`` or ``/v1/embeddings``.

For providers without a batch API (DeepSeek, OpenRouter, vLLM, Ollama, Together's sync API...)
the engine runs a shard's requests itself; this adapter sends one request at a time. It implements
only :meth:`OpenAISyncAdapter.execute` and :meth:`OpenAISyncAdapter.health`: the batch methods
raise :class:`~gateway.providers.base.CapabilityNotSupported` by the contract's default.

A request is retried as the official SDK does (408, 409, 429 and 5xx; a ``Retry-After`` waited
out up to two minutes), then its last answer becomes its output line. A 401/403 raises
:class:`~gateway.providers.base.ProviderAuthFailed`: every other request would fail the same way.

A request a shard placed at the ``flex`` service tier (``"service_tier":"flex"`` in its body) gets a
15-minute timeout, as flex answers can queue for minutes; flex's 429 for short capacity is unbilled and
retried like any 429, and a request still refused after its tries is moved to a follow-up shard.

Every try of every request waits for the provider's limits (concurrency, requests and tokens per
minute, a 429's pause) through the limiter the engine hands it (:meth:`OpenAISyncAdapter.use_limiter`;
:mod:`gateway.routing.limits`), shared by every replica on PostgreSQL. Until one is handed in, the
adapter keeps its limits in this process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import httpx

from gateway.providers.base import (
    HealthReport,
    ProviderAuthFailed,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    SyncRequest,
)
from gateway.providers.http import HttpAdapter, RetryPolicy
from gateway.providers.openai_wire import sync_output_line
from gateway.routing.limits import RequestLimiter, local_limiter

SYNC_RETRY = RetryPolicy(attempts=6, initial_s=0.5, max_s=30.0, retry_after_cap_s=120.0, wait_out_long_hints=True)
"""Six tries; a provider's ``Retry-After`` is waited out, two minutes at the most."""


FLEX_TIMEOUT_S = 900.0
"""Timeout of a ``service_tier: "flex"`` request: flex answers can take minutes (OpenAI advises 15)."""
_FLEX_FIELD = b'"service_tier":"flex"'
"""How the gateway's shard lines spell the flex tier (written compactly when the shard is placed)."""


class _RetryableAnswer(ProviderUnavailable):
    """An answer worth another try; kept so that it becomes the output line if the tries run out."""

    def __init__(self, error: ProviderError, response: httpx.Response, retry_after_s: float | None) -> None:
        super().__init__(str(error), retry_after_s=retry_after_s)
        self.response = response


@dataclass
class OpenAISyncAdapter(HttpAdapter):
    """Request-by-request execution on an OpenAI-compatible endpoint."""

    kind: ClassVar[str] = "openai_sync"
    executes_locally: ClassVar[bool] = True
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
        path = request.endpoint.removeprefix("/v1")
        try:
            response = await self._retrying(lambda: self._send_once(path, request))
        except _RetryableAnswer as exc:
            response = exc.response
        except ProviderUnavailable as exc:
            raise ProviderUnavailable(f"{exc} (unreachable after {self.retry.attempts} tries)") from None
        request_id = response.headers.get("x-request-id")
        return sync_output_line(request.custom_id, response.status_code, response.content, request_id, self._sanitise)

    async def health(self) -> HealthReport:
        """``GET /models``: any answer below 500 means the endpoint is up, unless it refuses the key."""
        return await self._probe(("/models", None), healthy=self._answers)

    def _answers(self, response: httpx.Response) -> bool:
        return response.status_code < 500 and not issubclass(self._error_class(response), ProviderAuthFailed)

    async def _send_once(self, path: str, request: SyncRequest) -> httpx.Response:
        # A flex request may queue for minutes before it is answered: it gets the long timeout flex asks for.
        flex = _FLEX_FIELD in request.body
        timeout = max(self.config.timeout_s, FLEX_TIMEOUT_S) if flex else self.config.timeout_s
        async with self._limiter.slot(request.estimated_tokens):
            response = await self._request(
                "POST", path, content=request.body, headers={"Content-Type": "application/json"}, timeout_s=timeout
            )
        if response.is_success:
            return response
        kind = self._error_class(response)
        if issubclass(kind, ProviderAuthFailed):
            raise self._status_error("POST", path, response)
        if issubclass(kind, ProviderUnavailable):
            hint = self._retry_hint(response)
            if issubclass(kind, ProviderRateLimited):
                await self._limiter.rate_limited(hint)
            raise _RetryableAnswer(self._status_error("POST", path, response), response, hint)
        return response  # refused for a reason of its own: the request's error line
