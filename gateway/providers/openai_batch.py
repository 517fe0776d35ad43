"""Adapter for every provider that speaks OpenAI's Files + Batches protocol.

One class serves OpenAI, Azure OpenAI (``/openai/v1``), Groq (``/openai/v1``) and Together: the
``base_url`` of the provider's configuration selects the service, and the wire dialects are
reconciled by the pure transforms in :mod:`gateway.providers.openai_wire`.

Each HTTP call is retried a few times (exponential backoff with jitter, a short ``Retry-After``
honoured) when it fails transiently; anything longer-term is the engine's job.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar
from urllib.parse import quote

import httpx
import msgspec
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from gateway.providers.base import (
    HealthReport,
    PollResult,
    ProviderAdapter,
    ProviderBatchState,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
)
from gateway.providers.openai_wire import (
    LineSplitter,
    MalformedLine,
    batch_error_summary,
    cancel_refusal_is_benign,
    encode_line,
    error_message_from_body,
    find_batch_with_token,
    map_batch_status,
    normalise_output_line,
    parse_batch_page,
    parse_request_counts,
    submit_metadata,
    unwrap_batch,
)
from gateway.providers.retry_after import parse_retry_after

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_STATUS = frozenset({408})
_CANCEL_REFUSED_STATUS = frozenset({400, 409})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retry of one HTTP call on :class:`ProviderUnavailable`."""

    attempts: int = 3
    """Tries in total, the first included."""
    initial_s: float = 0.5
    max_s: float = 8.0
    retry_after_cap_s: float = 10.0
    """A 429 asking to wait longer than this is raised at once for the engine to schedule."""


@dataclass
class OpenAIBatchAdapter(ProviderAdapter):
    """A provider reached through OpenAI's ``/files`` and ``/batches`` endpoints."""

    kind: ClassVar[str] = "openai"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_list_pages: int = 20
    """Pages of ``GET /batches`` (100 each, newest first) searched by :meth:`find_submitted`."""

    # ----------------------------------------------------------------- adapter contract

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Upload the shard file, then create a batch tagged with the shard's submit token."""
        uploaded = await self._call_json("POST", "/files", upload=shard.input_path)
        file_id = uploaded.get("id") if isinstance(uploaded, dict) else None
        if not isinstance(file_id, str) or not file_id:
            raise ProviderUnavailable(f"provider {self.name}: POST /files answered without a file id")
        body = {
            "input_file_id": file_id,
            "endpoint": shard.endpoint,
            "completion_window": shard.completion_window,
            "metadata": submit_metadata(shard.submit_token, shard.shard_id),
        }
        attempts = 0

        async def create() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                # The failed try may have created the batch (lost answer, 5xx after commit).
                found = await self._find_batch(shard.submit_token, retrying=False)
                if found is not None:
                    return found
            return unwrap_batch(await self._send_json("POST", "/batches", json=body))

        batch = await self._retrying(create)
        return SubmitResult(provider_batch_id=self._batch_id(batch, "POST /batches"), provider_file_id=file_id)

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        """The batch tagged with ``submit_token`` among the newest :attr:`max_list_pages` pages."""
        batch = await self._find_batch(submit_token, retrying=True)
        if batch is None:
            return None
        file_id = batch.get("input_file_id")
        return SubmitResult(
            provider_batch_id=self._batch_id(batch, "GET /batches"),
            provider_file_id=file_id if isinstance(file_id, str) else None,
        )

    async def poll(self, provider_batch_id: str) -> PollResult:
        """Retrieve the batch and translate its status and request counts."""
        batch = await self._retrieve(provider_batch_id)
        raw_status = batch.get("status")
        state = map_batch_status(raw_status)
        if state is None:
            log.warning("provider %s: unknown batch status %r, treated as running", self.name, raw_status)
            state = ProviderBatchState.RUNNING
        counts = parse_request_counts(batch)
        return PollResult(
            state=state,
            raw_status=str(raw_status),
            total=counts.total,
            completed=counts.completed,
            failed=counts.failed,
            error=batch_error_summary(batch) if state is ProviderBatchState.FAILED else None,
        )

    async def fetch_results(self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None) -> None:
        """Append the output and error files' lines to ``dest`` as OpenAI output envelopes."""
        batch = await self._retrieve(provider_batch_id)
        file_ids: list[str] = []
        for key in ("output_file_id", "error_file_id"):
            value = batch.get(key)
            if isinstance(value, str) and value and value not in file_ids:
                file_ids.append(value)
        with dest.open("ab") as out:
            for file_id in file_ids:
                await self._retrying(functools.partial(self._download, file_id, provider_batch_id, out))

    async def cancel(self, provider_batch_id: str) -> None:
        """Ask for cancellation; a refusal because the batch already ended (or is finalizing) is fine."""
        path = f"/batches/{quote(provider_batch_id, safe='')}/cancel"
        try:
            await self._call_json("POST", path)
        except ProviderRejected as exc:
            if exc.status_code not in _CANCEL_REFUSED_STATUS:
                raise
            status = (await self._retrieve(provider_batch_id)).get("status")
            if not cancel_refusal_is_benign(status):
                raise
            log.info("provider %s: batch %s is %s, cancel skipped", self.name, provider_batch_id, status)

    async def health(self) -> HealthReport:
        """``GET /models`` (``GET /batches?limit=1`` where models is absent), without retries."""
        started = time.monotonic()
        path = "/models"
        try:
            response = await self._request("GET", path)
            if response.status_code == 404:
                path = "/batches"
                response = await self._request("GET", path, params={"limit": 1})
        except ProviderError as exc:
            return HealthReport(healthy=False, detail=str(exc), latency_s=time.monotonic() - started)
        latency = time.monotonic() - started
        if response.is_success:
            return HealthReport(healthy=True, detail=f"GET {path}: HTTP {response.status_code}", latency_s=latency)
        error = self._status_error("GET", path, response)
        return HealthReport(healthy=False, detail=str(error), latency_s=latency)

    # ----------------------------------------------------------------- helpers

    async def _retrieve(self, provider_batch_id: str) -> dict[str, Any]:
        return unwrap_batch(await self._call_json("GET", f"/batches/{quote(provider_batch_id, safe='')}"))

    async def _find_batch(self, submit_token: str, *, retrying: bool) -> dict[str, Any] | None:
        after: str | None = None
        for _ in range(self.max_list_pages):
            params: dict[str, str | int] = {"limit": 100}
            if after is not None:
                params["after"] = after
            if retrying:
                answer = await self._call_json("GET", "/batches", params=params)
            else:
                answer = await self._send_json("GET", "/batches", params=params)
            page = parse_batch_page(answer)
            found = find_batch_with_token(page.batches, submit_token)
            if found is not None:
                return found
            if not page.has_more or page.last_id is None or page.last_id == after:
                return None
            after = page.last_id
        log.warning("provider %s: submit token not in the newest %d batch pages", self.name, self.max_list_pages)
        return None

    def _batch_id(self, batch: dict[str, Any], call: str) -> str:
        batch_id = batch.get("id")
        if not isinstance(batch_id, str) or not batch_id:
            raise ProviderUnavailable(f"provider {self.name}: {call} answered a batch without an id")
        return batch_id

    async def _download(self, file_id: str, provider_batch_id: str, out: IO[bytes]) -> None:
        path = f"/files/{quote(file_id, safe='')}/content"
        start = out.tell()
        try:
            async with self.http.stream(
                "GET", self._url(path), headers=self._headers(), timeout=self.config.timeout_s
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._status_error("GET", path, response)
                splitter = LineSplitter()
                number = 0
                async for chunk in response.aiter_bytes():
                    for line in splitter.feed(chunk):
                        number += 1
                        self._keep_line(line, number, file_id, provider_batch_id, out)
                for line in splitter.flush():
                    number += 1
                    self._keep_line(line, number, file_id, provider_batch_id, out)
        except BaseException as exc:
            # A retry starts the file again: drop what this try appended.
            out.truncate(start)
            out.seek(start)
            if isinstance(exc, httpx.HTTPError):
                raise self._transport_error("GET", path, exc) from None
            raise

    def _keep_line(self, line: bytes, number: int, file_id: str, provider_batch_id: str, out: IO[bytes]) -> None:
        if not line.strip():
            return
        try:
            envelope = normalise_output_line(line, provider_batch_id)
        except MalformedLine as exc:
            log.warning(
                "provider %s: skipped line %d of result file %s of batch %s: %s",
                self.name,
                number,
                file_id,
                provider_batch_id,
                exc,
            )
            return
        out.write(encode_line(envelope))

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        policy = self.retry

        def hinted_delay(state: RetryCallState) -> float | None:
            exc = state.outcome.exception() if state.outcome is not None else None
            return exc.retry_after_s if isinstance(exc, ProviderRateLimited) else None

        def stop(state: RetryCallState) -> bool:
            delay = hinted_delay(state)
            too_long = delay is not None and delay > policy.retry_after_cap_s
            return state.attempt_number >= policy.attempts or too_long

        def wait(state: RetryCallState) -> float:
            delay = hinted_delay(state)
            if delay is not None:
                return delay
            backoff = min(policy.max_s, policy.initial_s * 2 ** (state.attempt_number - 1))
            return backoff + random.uniform(0, policy.initial_s)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            sleep = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning("%s; try %d, retrying in %.2fs", exc, state.attempt_number, sleep)

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception_type(ProviderUnavailable),
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await call()
        raise AssertionError("unreachable: the retry loop returns or raises")

    async def _call_json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        upload: Path | None = None,
    ) -> Any:
        return await self._retrying(lambda: self._send_json(method, path, params=params, upload=upload))

    async def _send_json(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        json: Any = None,
        upload: Path | None = None,
    ) -> Any:
        response = await self._request(method, path, params=params, json=json, upload=upload)
        if not response.is_success:
            raise self._status_error(method, path, response)
        try:
            return msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise ProviderUnavailable(
                f"provider {self.name}: {method} {path} answered HTTP {response.status_code}, not JSON"
            ) from None

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        json: Any = None,
        upload: Path | None = None,
    ) -> httpx.Response:
        headers = self._headers()
        content: bytes | None = None
        if json is not None:
            content = msgspec.json.encode(json)
            headers["Content-Type"] = "application/json"
        try:
            if upload is None:
                return await self.http.request(
                    method,
                    self._url(path),
                    params=params,
                    content=content,
                    headers=headers,
                    timeout=self.config.timeout_s,
                )
            # httpx reads the open file in chunks while sending: the shard is never held in memory.
            with upload.open("rb") as handle:
                return await self.http.request(
                    method,
                    self._url(path),
                    headers=headers,
                    timeout=self.config.timeout_s,
                    data={"purpose": "batch"},
                    files={"file": (f"{upload.stem}.jsonl", handle, "application/jsonl")},
                )
        except httpx.HTTPError as exc:
            raise self._transport_error(method, path, exc) from None

    def _url(self, path: str) -> str:
        return f"{self.config.base_url}{path}"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def _transport_error(self, method: str, path: str, exc: httpx.HTTPError) -> ProviderUnavailable:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ProviderUnavailable(self._redact(f"provider {self.name}: {method} {path} failed: {detail}"))

    def _status_error(self, method: str, path: str, response: httpx.Response) -> ProviderError:
        status = response.status_code
        detail = error_message_from_body(response.content)
        message = self._redact(f"provider {self.name}: {method} {path} answered HTTP {status}: {detail}")
        if status == 429:
            return ProviderRateLimited(message, retry_after_s=parse_retry_after(response.headers))
        if status >= 500 or status in _TRANSIENT_STATUS:
            return ProviderUnavailable(message)
        return ProviderRejected(message, status_code=status)
