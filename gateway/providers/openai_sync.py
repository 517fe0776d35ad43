"""Synchronous fan-out to any OpenAI-compatible ``/v1/chat/completions`` or ``/v1/embeddings``.

For providers without a batch API (DeepSeek, OpenRouter, vLLM, Ollama, Together's sync API...)
the engine runs a shard's requests itself; this adapter sends one request at a time within the
provider's limits: at most ``max_concurrency`` in flight, ``requests_per_minute`` and
``tokens_per_minute`` as smooth rates, a 429's ``Retry-After`` pausing every request of this
provider in this process, and transient failures retried with backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import msgspec
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from gateway.providers.base import (
    CapabilityNotSupported,
    HealthReport,
    PollResult,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    SyncRequest,
)
from gateway.providers.openai_batch import OpenAIBatchAdapter
from gateway.providers.retry_after import parse_retry_after

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
DEFAULT_RATE_LIMIT_PAUSE_S = 5.0
MAX_RETRY_AFTER_S = 120.0


class _Retryable(Exception):
    """A try that may succeed if repeated; carries the last response, if there was one."""

    def __init__(self, status: int | None, body: bytes, request_id: str | None, retry_after_s: float | None) -> None:
        super().__init__(f"HTTP {status}" if status else "no response")
        self.status = status
        self.body = body
        self.request_id = request_id
        self.retry_after_s = retry_after_s


def _minute_limiter(per_minute: int | None) -> AsyncLimiter | None:
    """A smooth limiter: ``per_minute`` spread over the minute rather than one burst."""
    if per_minute is None:
        return None
    if per_minute >= 60:
        return AsyncLimiter(per_minute / 60, 1.0)
    return AsyncLimiter(1, 60.0 / per_minute)


@dataclass
class OpenAISyncAdapter(OpenAIBatchAdapter):
    """Request-by-request execution on an OpenAI-compatible endpoint."""

    kind: ClassVar[str] = "openai_sync"
    executes_locally: ClassVar[bool] = True
    max_attempts: int = 6
    _semaphore: asyncio.Semaphore = field(init=False, repr=False)
    _rpm: AsyncLimiter | None = field(init=False, repr=False)
    _tpm: AsyncLimiter | None = field(init=False, repr=False)
    _paused_until: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        limits = self.config.limits
        self._semaphore = asyncio.Semaphore(limits.max_concurrency)
        self._rpm = _minute_limiter(limits.requests_per_minute)
        self._tpm = AsyncLimiter(limits.tokens_per_minute, 60.0) if limits.tokens_per_minute else None

    async def execute(self, request: SyncRequest) -> bytes:
        """Send one request; return its output line. Raises ProviderUnavailable if unreachable."""
        path = request.endpoint.removeprefix("/v1")
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    status, body, request_id = await self._send_once(path, request)
        except _Retryable as exc:
            if exc.status is None:
                raise ProviderUnavailable(
                    f"provider {self.name}: POST {path} unreachable after {self.max_attempts} tries"
                ) from None
            status, body, request_id = exc.status, exc.body, exc.request_id
        return _output_line(request.custom_id, status, body, request_id)

    async def _send_once(self, path: str, request: SyncRequest) -> tuple[int, bytes, str | None]:
        await self._respect_pause()
        if self._rpm is not None:
            await self._rpm.acquire()
        if self._tpm is not None:
            await self._tpm.acquire(min(max(request.estimated_tokens, 1), self._tpm.max_rate))
        headers = self._headers() | {"Content-Type": "application/json"}
        async with self._semaphore:
            try:
                response = await self.http.post(
                    self._url(path), content=request.body, headers=headers, timeout=self.config.timeout_s
                )
            except httpx.HTTPError as exc:
                log.warning("%s", self._transport_error("POST", path, exc))
                raise _Retryable(None, b"", None, None) from None
        request_id = response.headers.get("x-request-id")
        if response.status_code in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers)
            if response.status_code == 429:
                self._pause(retry_after or DEFAULT_RATE_LIMIT_PAUSE_S)
            raise _Retryable(response.status_code, response.content, request_id, retry_after)
        return response.status_code, response.content, request_id

    def _pause(self, seconds: float) -> None:
        until = time.monotonic() + min(seconds, MAX_RETRY_AFTER_S)
        if until > self._paused_until:
            log.warning("provider %s asked to slow down: pausing %.1fs", self.name, seconds)
            self._paused_until = until

    async def _respect_pause(self) -> None:
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Retryable) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, MAX_RETRY_AFTER_S)
        backoff = min(30.0, 0.5 * 2 ** (state.attempt_number - 1))
        return backoff * random.uniform(0.5, 1.5)

    # Batch capabilities this kind does not have.

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        raise CapabilityNotSupported(f"provider {self.name} has no batch API")

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        raise CapabilityNotSupported(f"provider {self.name} has no batch API")

    async def poll(self, provider_batch_id: str) -> PollResult:
        raise CapabilityNotSupported(f"provider {self.name} has no batch API")

    async def fetch_results(self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None) -> None:
        raise CapabilityNotSupported(f"provider {self.name} has no batch API")

    async def cancel(self, provider_batch_id: str) -> None:
        raise CapabilityNotSupported(f"provider {self.name} has no batch API")

    async def health(self) -> HealthReport:
        """``GET /models``: any HTTP answer below 500 means the endpoint is up."""
        started = time.monotonic()
        try:
            response = await self._request("GET", "/models")
        except ProviderUnavailable as exc:
            return HealthReport(healthy=False, detail=str(exc), latency_s=time.monotonic() - started)
        return HealthReport(
            healthy=response.status_code < 500,
            detail=f"GET /models: HTTP {response.status_code}",
            latency_s=time.monotonic() - started,
        )


def _output_line(custom_id: str, status: int, body: bytes, request_id: str | None) -> bytes:
    try:
        decoded: Any = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        text = body[:500].decode("utf-8", "replace")
        decoded = {"error": {"message": f"HTTP {status}: {text}", "type": "server_error", "param": None, "code": None}}
    envelope = {
        "id": "",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id or "", "body": decoded},
        "error": None,
    }
    return msgspec.json.encode(envelope)
