"""Synchronous fan-out to any OpenAI-compatible ``/v1/chat/completions`` or ``/v1/embeddings``.

For providers without a batch API (DeepSeek, OpenRouter, vLLM, Ollama, Together's sync API...)
the engine runs a shard's requests itself; this adapter sends one request at a time. It implements
only :meth:`OpenAISyncAdapter.execute` and :meth:`OpenAISyncAdapter.health`: the batch methods
raise :class:`~gateway.providers.base.CapabilityNotSupported` by the contract's default.

A request is retried as the official SDK does (408, 409, 429 and 5xx; a ``Retry-After`` waited
out up to two minutes), then its last answer becomes its output line. A 401/403 raises
:class:`~gateway.providers.base.ProviderAuthFailed`: every other request would fail the same way.

The provider's concurrency, requests- and tokens-per-minute limits and the pause a 429 asks for
are applied in this process by :class:`LocalRateLimits`, the one place of this module that knows
about them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

import httpx
from aiolimiter import AsyncLimiter

from gateway.providers.base import (
    HealthReport,
    ProviderAuthFailed,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    SyncRequest,
)
from gateway.providers.config import ProviderLimits
from gateway.providers.http import HttpAdapter, RetryPolicy
from gateway.providers.openai_wire import sync_output_line

log = logging.getLogger(__name__)

SYNC_RETRY = RetryPolicy(attempts=6, initial_s=0.5, max_s=30.0, retry_after_cap_s=120.0, wait_out_long_hints=True)
"""Six tries; a provider's ``Retry-After`` is waited out, two minutes at the most."""


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
    _limits: LocalRateLimits = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._limits = LocalRateLimits.of(self.config.limits, self.name)

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
        async with self._limits.slot(request.estimated_tokens):
            response = await self._request(
                "POST", path, content=request.body, headers={"Content-Type": "application/json"}
            )
        if response.is_success:
            return response
        kind = self._error_class(response)
        if issubclass(kind, ProviderAuthFailed):
            raise self._status_error("POST", path, response)
        if issubclass(kind, ProviderUnavailable):
            hint = self._retry_hint(response)
            if issubclass(kind, ProviderRateLimited):
                self._limits.pause(hint)
            raise _RetryableAnswer(self._status_error("POST", path, response), response, hint)
        return response  # refused for a reason of its own: the request's error line


# --------------------------------------------------------------------------- local rate limits


DEFAULT_RATE_LIMIT_PAUSE_S = 5.0
MAX_PAUSE_S = 120.0


def _minute_limiter(per_minute: int | None) -> AsyncLimiter | None:
    """A smooth limiter: ``per_minute`` spread over the minute rather than one burst."""
    if per_minute is None:
        return None
    if per_minute >= 60:
        return AsyncLimiter(per_minute / 60, 1.0)
    return AsyncLimiter(1, 60.0 / per_minute)


@dataclass
class LocalRateLimits:
    """One provider's limits as this process applies them: at most ``max_concurrency`` requests in flight,
    ``requests_per_minute`` and ``tokens_per_minute`` as smooth rates, and a 429's ``Retry-After``
    pausing every request to the provider."""

    provider: str
    concurrency: asyncio.Semaphore
    requests: AsyncLimiter | None
    tokens: AsyncLimiter | None
    paused_until: float = 0.0

    @classmethod
    def of(cls, limits: ProviderLimits, provider: str) -> LocalRateLimits:
        """The limits of a provider's configuration."""
        tokens = AsyncLimiter(limits.tokens_per_minute, 60.0) if limits.tokens_per_minute else None
        return cls(
            provider, asyncio.Semaphore(limits.max_concurrency), _minute_limiter(limits.requests_per_minute), tokens
        )

    @contextlib.asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[None]:
        """Wait out a pause and the rates, then hold one of the concurrent slots while the request runs."""
        while (delay := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self.requests is not None:
            await self.requests.acquire()
        if self.tokens is not None:
            await self.tokens.acquire(min(max(estimated_tokens, 1), self.tokens.max_rate))
        async with self.concurrency:
            yield

    def pause(self, seconds: float | None) -> None:
        """Hold every request to the provider for ``seconds`` (a default when the 429 named no time)."""
        seconds = seconds or DEFAULT_RATE_LIMIT_PAUSE_S
        until = time.monotonic() + min(seconds, MAX_PAUSE_S)
        if until > self.paused_until:
            log.warning("provider %s asked to slow down: pausing %.1fs", self.provider, seconds)
            self.paused_until = until
