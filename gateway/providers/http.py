"""The one base of every adapter that talks HTTP to its provider.

:class:`HttpAdapter` holds what the kinds share: the bounded retry of one call (tenacity, backoff
with jitter, a provider's retry hint honoured), request helpers (JSON, streamed bodies, multipart
uploads), the streamed line download that starts again cleanly when a try is cut off, error
hygiene, and the table that turns an HTTP status into an exception of :mod:`gateway.providers.base`.

A kind overrides hooks, never the machinery:

- :meth:`HttpAdapter._auth_headers` (default ``Authorization: Bearer``) and :meth:`HttpAdapter._url`;
- :attr:`HttpAdapter.STATUS_ERRORS` or :meth:`HttpAdapter._error_class` (e.g. Gemini's 400 for an
  invalid key), :meth:`HttpAdapter._error_detail` (e.g. Anthropic's error types) and
  :meth:`HttpAdapter._retry_hint` (e.g. Gemini's ``RetryInfo``).

Error hygiene: whatever a provider says goes through :func:`gateway.providers.error_text.sanitise`
before it can reach an exception, a log line or a client.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

import httpx
import msgspec
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from gateway import jsondepth
from gateway.providers.base import (
    LOCAL_BATCH_PREFIX,
    CreatesAnsweredHere,
    HealthReport,
    PollResult,
    ProviderAdapter,
    ProviderAuthFailed,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    SubmitWithdrawn,
)
from gateway.providers.error_text import error_message_from_body, sanitise, shorten
from gateway.providers.jsonl import LineSplitter, encode_line
from gateway.providers.openai_wire import normalised_output_line
from gateway.providers.retry_after import parse_retry_after
from gateway.providers.send_fence import sending_only_while
from gateway.translate import MalformedResult

__all__ = ["HttpAdapter", "Multipart", "RetryPolicy", "file_chunks"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_BYTES = 1024 * 1024

Params = Mapping[str, str | int]
KeepLine = Callable[[bytes, int], Mapping[str, Any] | bytes | None]
"""Turns one downloaded line (and its 1-based number) into an output envelope (or the envelope's JSON bytes,
without newline), or None to skip it."""


# --------------------------------------------------------------------------- retry policy


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retry of one HTTP call on :class:`ProviderUnavailable` (429 included)."""

    attempts: int = 3
    """Tries in total, the first included."""
    initial_s: float = 0.5
    max_s: float = 8.0
    retry_after_cap_s: float = 10.0
    """A provider hint to wait longer than this ends the retries at once, for the engine to schedule."""
    wait_out_long_hints: bool = False
    """Wait ``retry_after_cap_s`` on a longer hint instead of giving up (request-by-request kinds)."""

    def backoff(self, attempt: int) -> float:
        """Seconds before try ``attempt + 1`` when the provider gave no hint: exponential, with jitter."""
        return min(self.max_s, self.initial_s * 2 ** (attempt - 1)) + random.uniform(0, self.initial_s)


# --------------------------------------------------------------------------- request bodies


@dataclass(frozen=True)
class Multipart:
    """A ``multipart/form-data`` body whose file part streams from disk (opened anew on each try)."""

    path: Path
    filename: str
    content_type: str
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CreateBody:
    """A create call's JSON body holding a batch's requests inline, written to a temporary file."""

    path: Path
    size: int
    count: int
    """Requests in the body."""


async def file_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
    """A file's bytes for a streamed request body; a new iterator is needed for each try."""
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            yield chunk


class RequestOptions(TypedDict, total=False):
    """What a call may carry besides its method and path."""

    params: Params | None
    json: Any
    """Encoded as the JSON body."""
    content: bytes | AsyncIterator[bytes]
    """The body as is; a file streams through :func:`file_chunks` (give its ``Content-Length`` in headers)."""
    multipart: Multipart
    headers: Mapping[str, str]
    label: str
    """Names the call in errors instead of the path (for URLs the provider handed out)."""
    timeout_s: float
    """This call's timeout instead of the provider's ``timeout_s``."""


# --------------------------------------------------------------------------- the base


@dataclass
class HttpAdapter(ProviderAdapter):
    """An adapter whose provider is an HTTP API at ``config.base_url``.

    Subclasses call :meth:`_call_json` (retried) or :meth:`_send_json` (one try) for JSON calls,
    :meth:`_request` for anything else, :meth:`_download_lines` for result files and :meth:`_probe`
    for health; every failure arrives as a sanitised :class:`ProviderError`.
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)

    STATUS_ERRORS: ClassVar[Mapping[int, type[ProviderError]]] = {
        401: ProviderAuthFailed,
        403: ProviderAuthFailed,
        408: ProviderUnavailable,
        429: ProviderRateLimited,
    }
    """Exception by HTTP status. Any other status from 500 up is ProviderUnavailable, any other 4xx
    ProviderRejected."""

    # ----------------------------------------------------------------- hooks of a kind

    def _auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a call (and any the protocol wants on every call)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _signed(
        self, method: str, url: str, params: Params | None, body: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]:
        """The headers of one call once authenticated; a kind that signs each request (AWS SigV4) overrides this.
        ``body`` is the exact bytes sent (``b""`` without a body), None for a streamed or multipart body."""
        return headers

    def _url(self, path: str) -> str:
        """The URL of an API path; an absolute URL must be on the configured origin (the key goes nowhere else)."""
        if "://" not in path:
            return f"{self.config.base_url}{path}"
        if not self._same_origin(path):
            raise ProviderRejected(f"provider {self.name}: answered a URL on another host; the key is not sent there")
        return path

    def _error_class(self, response: httpx.Response) -> type[ProviderError]:
        """Which exception a non-2xx answer raises."""
        status = response.status_code
        found = self.STATUS_ERRORS.get(status)
        if found is not None:
            return found
        return ProviderUnavailable if status >= 500 else ProviderRejected

    def _error_detail(self, response: httpx.Response) -> str:
        """The provider's explanation of an error answer (not yet sanitised or shortened)."""
        return error_message_from_body(response.content, limit=None)

    def _retry_hint(self, response: httpx.Response) -> float | None:
        """Seconds the provider asks to wait: ``retry-after-ms``, then ``retry-after`` (seconds or a date)."""
        return parse_retry_after(response.headers)

    # ----------------------------------------------------------------- errors

    def _same_origin(self, url: str) -> bool:
        """True if ``url`` has the scheme and host of the configured base URL."""
        ours, theirs = urlsplit(self.config.base_url), urlsplit(url)
        return (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)

    def _sanitise(self, text: str) -> str:
        """Provider text without key material, URLs or hosts (see :func:`sanitise`)."""
        return sanitise(text, provider=self.name, secret=self.api_key, base_url=self.config.base_url)

    def _key_hint(self) -> str:
        """What an operator should check when the provider refuses the key; names the variable, never the key."""
        env = self.config.api_key_env
        if env and not self.api_key:
            return f"check the key in {env} (it is not set)"
        if env:
            return f"check the key in {env}"
        if self.api_key:
            return "check the provider's API key"
        return "no API key is configured (set api_key_env)"

    def _status_error(self, method: str, path: str, response: httpx.Response) -> ProviderError:
        """The exception of a non-2xx answer, its message sanitised."""
        status = response.status_code
        where = f"provider {self.name}: {method} {self._sanitise(path)}"
        detail = shorten(self._sanitise(self._error_detail(response)))
        kind = self._error_class(response)
        if issubclass(kind, ProviderAuthFailed):
            message = f"{where}: authentication failed (HTTP {status}): {self._key_hint()}; the provider said: {detail}"
            return kind(message, status_code=status)
        message = f"{where} answered HTTP {status}: {detail}"
        if issubclass(kind, ProviderUnavailable):
            return kind(message, retry_after_s=self._retry_hint(response))
        if issubclass(kind, ProviderRejected):
            return kind(message, status_code=status)
        return kind(message)

    def _transport_error(self, method: str, path: str, exc: httpx.HTTPError) -> ProviderUnavailable:
        """The exception of a call that got no answer (refused, reset, timed out)."""
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ProviderUnavailable(
            f"provider {self.name}: {method} {self._sanitise(path)} failed: {self._sanitise(detail)}"
        )

    # ----------------------------------------------------------------- retries

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, tried again on :class:`ProviderUnavailable` as :attr:`retry` says; the last error is raised."""
        policy = self.retry

        def hinted(state: RetryCallState) -> float | None:
            exc = state.outcome.exception() if state.outcome is not None else None
            return exc.retry_after_s if isinstance(exc, ProviderUnavailable) else None

        def stop(state: RetryCallState) -> bool:
            delay = hinted(state)
            too_long = delay is not None and delay > policy.retry_after_cap_s and not policy.wait_out_long_hints
            return state.attempt_number >= policy.attempts or too_long

        def wait(state: RetryCallState) -> float:
            delay = hinted(state)
            return policy.backoff(state.attempt_number) if delay is None else min(delay, policy.retry_after_cap_s)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            sleep = state.next_action.sleep if state.next_action is not None else 0.0
            # Waiting as the provider asked is routine; any other retry is worth a warning.
            level = logging.INFO if hinted(state) is not None else logging.WARNING
            log.log(level, "%s; try %d, retrying in %.2fs", exc, state.attempt_number, sleep)

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

    async def _create_once(
        self,
        shard: ShardSubmission,
        create: Callable[[], Awaitable[T]],
        find: Callable[[], Awaitable[T | None]] | None,
    ) -> T:
        """A retried create call: before each retry, ``find`` looks for what the failed try may have created
        (an answer lost, or a 5xx after the provider committed), so a kind that can look never creates twice.
        A kind that cannot look passes ``None``: a try whose answer was lost may then leave a second batch
        (billed, its results ignored). Each try first asks ``shard.may_create``, and asks it again before each
        write of its request (:mod:`gateway.providers.send_fence`)."""
        tries = 0

        async def attempt() -> T:
            nonlocal tries
            tries += 1
            if tries > 1 and find is not None and (found := await find()) is not None:
                return found

            def withdrawn() -> SubmitWithdrawn:
                return SubmitWithdrawn(f"provider {self.name}: shard {shard.shard_id}'s create call withdrawn, unsent")

            if not shard.may_create():
                raise withdrawn()
            # Asked again right before each write of the request: a worker frozen after this check, or between
            # two writes, resumes with the rest unsent instead of creating what the shard's new owner creates too.
            with sending_only_while(shard.may_create, withdrawn):
                return await create()

        return await self._retrying(attempt)

    async def _create_inline(
        self,
        shard: ShardSubmission,
        body: CreateBody,
        *,
        path: str,
        caps: tuple[int, int],
        batch: str,
        created: CreatesAnsweredHere,
    ) -> SubmitResult:
        """Create one batch whose requests travel inline in ``body`` (``POST path``, streamed from its file), for
        kinds whose batches carry no tag to be found by (see :class:`CreatesAnsweredHere`, which notes the id).

        A body without requests (every one failed translation) creates nothing; one over ``caps`` (requests,
        bytes; ``batch`` names such a batch in the message) is refused with a 413 before any call."""
        if body.count == 0:
            return SubmitResult(provider_batch_id=LOCAL_BATCH_PREFIX + shard.submit_token)
        if body.count > caps[0] or body.size > caps[1]:
            raise ProviderRejected(
                f"provider {self.name}: the shard makes {body.count} requests and {body.size} bytes; "
                f"{batch} holds at most {caps[0]} requests and {caps[1]} bytes",
                status_code=413,
            )

        async def create() -> str:
            # An explicit Content-Length keeps httpx from chunking the streamed body.
            headers = {"Content-Type": "application/json", "Content-Length": str(body.size)}
            answer = await self._send_json("POST", path, content=file_chunks(body.path), headers=headers)
            batch_id = answer.get("id") if isinstance(answer, dict) else None
            if not isinstance(batch_id, str) or not batch_id:
                raise ProviderUnavailable(f"provider {self.name}: POST {path} answered a batch without an id")
            return batch_id

        # Nothing of such a batch can be read back to find it: a retry cannot look first.
        batch_id = await self._create_once(shard, create, None)
        created.remember(shard.submit_token, batch_id)
        return SubmitResult(provider_batch_id=batch_id)

    def _output_line(self, line: bytes, number: int, file_id: str, provider_batch_id: str) -> bytes | None:
        """A result-file line in OpenAI's output envelope, normalised (JSON bytes); None (and a warning) if
        unusable."""
        try:
            return normalised_output_line(line, provider_batch_id)
        except MalformedResult as exc:
            log.warning(
                "provider %s: skipped line %d of result file %s of batch %s: %s",
                self.name,
                number,
                file_id,
                provider_batch_id,
                exc,
            )
            return None

    def _poll_result(self, result: PollResult, known: bool) -> PollResult:
        """A status read parsed by a kind's table: an unknown status (read as running) is logged, and the
        provider's error text sanitised."""
        if not known:
            log.warning("provider %s: unknown job status %r, treated as running", self.name, result.raw_status)
        if result.error is None:
            return result
        return dataclasses.replace(result, error=self._sanitise(result.error))

    # ----------------------------------------------------------------- calls

    async def _request(self, method: str, path: str, **options: Unpack[RequestOptions]) -> httpx.Response:
        """One call, whatever it answers; only a call without an answer raises (ProviderUnavailable)."""
        url = self._url(path)
        params, content, multipart = options.get("params"), options.get("content"), options.get("multipart")
        sent = {**self._auth_headers(), **options.get("headers", {})}
        if "json" in options:
            content = msgspec.json.encode(options["json"])
            sent["Content-Type"] = "application/json"
        signed_body = content if isinstance(content, bytes) else b"" if content is None and multipart is None else None
        sent = await self._signed(method, url, params, signed_body, sent)
        timeout = options.get("timeout_s", self.config.timeout_s)
        try:
            if multipart is None:
                return await self.http.request(
                    method, url, params=params, content=content, headers=sent, timeout=timeout
                )
            # httpx reads the open file in chunks while sending: the file is never held in memory.
            with multipart.path.open("rb") as handle:
                return await self.http.request(
                    method,
                    url,
                    params=params,
                    headers=sent,
                    timeout=timeout,
                    data=dict(multipart.fields),
                    files={"file": (multipart.filename, handle, multipart.content_type)},
                )
        except httpx.HTTPError as exc:
            raise self._transport_error(method, options.get("label") or path, exc) from None

    async def _send_json(self, method: str, path: str, **options: Unpack[RequestOptions]) -> Any:
        """One call whose answer must be 2xx JSON."""
        response = await self._request(method, path, **options)
        label = options.get("label") or path
        if not response.is_success:
            raise self._status_error(method, label, response)
        try:
            answer, cut = jsondepth.decode_within(msgspec.json.decode, response.content)
        except msgspec.DecodeError:
            raise ProviderUnavailable(
                f"provider {self.name}: {method} {self._sanitise(label)} answered HTTP {response.status_code}, not JSON"
            ) from None
        if cut:
            self._warn_too_deep(method, label)
        return answer

    def _warn_too_deep(self, method: str, label: str) -> None:
        log.warning("provider %s: %s %s answered JSON nested deeper than %d levels; the deeper values are left out",
                    self.name, method, self._sanitise(label), jsondepth.MAX_ANSWER_DEPTH)  # fmt: skip

    async def _call_json(self, method: str, path: str, **options: Unpack[RequestOptions]) -> Any:
        """:meth:`_send_json`, retried as the policy says."""
        return await self._retrying(lambda: self._send_json(method, path, **options))

    async def _download_lines(
        self,
        path: str,
        out: IO[bytes],
        keep: KeepLine | None,
        *,
        params: Params | None = None,
        label: str | None = None,
    ) -> None:
        """Append the lines of a provider file to ``out``, each as ``keep`` turns it, retried as the policy says;
        with ``keep`` None, the file's bytes as they come (ending in a newline), not split into lines at all.

        A try that fails part-way removes what it appended before the next try starts the file
        again, so ``out`` never holds a partial or repeated line.
        """
        download = functools.partial(self._download_once, path, out, keep, params, label or path)
        await self._retrying(download)

    async def _download_once(
        self, path: str, out: IO[bytes], keep: KeepLine | None, params: Params | None, label: str
    ) -> None:
        start = out.tell()
        try:
            url = self._url(path)
            headers = await self._signed("GET", url, params, b"", self._auth_headers())
            async with self.http.stream(
                "GET", url, params=params, headers=headers, timeout=self.config.timeout_s
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._status_error("GET", label, response)
                if keep is None:
                    await _copy_lines(response, out)
                    return
                splitter, number, source = LineSplitter(), 0, f"provider {self.name}, {label}"
                async for chunk in response.aiter_bytes():
                    for line in splitter.feed(chunk):
                        number += 1
                        _write_kept(out, keep, line, number, source)
                for line in splitter.flush():
                    number += 1
                    _write_kept(out, keep, line, number, source)
        except BaseException as exc:
            out.truncate(start)
            out.seek(start)
            if isinstance(exc, httpx.HTTPError):
                raise self._transport_error("GET", label, exc) from None
            raise

    async def _probe(
        self, *calls: tuple[str, Params | None], healthy: Callable[[httpx.Response], bool] | None = None
    ) -> HealthReport:
        """A health check without retries: ``GET`` the first path, the next one where a path answers 404.

        Healthy when ``healthy`` says so (default: a 2xx answer).
        """
        started = time.monotonic()
        path = ""
        try:
            for path, params in calls:
                response = await self._request("GET", path, params=params)
                if response.status_code != 404:
                    break
        except ProviderError as exc:
            return HealthReport(healthy=False, detail=str(exc), latency_s=time.monotonic() - started)
        latency = time.monotonic() - started
        if (healthy or _is_success)(response):
            return HealthReport(healthy=True, detail=f"GET {path}: HTTP {response.status_code}", latency_s=latency)
        return HealthReport(healthy=False, detail=str(self._status_error("GET", path, response)), latency_s=latency)


def _is_success(response: httpx.Response) -> bool:
    return response.is_success


async def _copy_lines(response: httpx.Response, out: IO[bytes]) -> None:
    """The body's bytes appended to ``out`` as they come, with a newline after the last line if it has none (the
    next file's first line then starts a line of its own)."""
    last = b"\n"
    async for chunk in response.aiter_bytes():
        if chunk:
            out.write(chunk)
            last = chunk[-1:]
    if last != b"\n":
        out.write(b"\n")


def _write_kept(out: IO[bytes], keep: KeepLine, line: bytes, number: int, source: str) -> None:
    if not line.strip():
        return
    try:
        envelope = keep(line, number)
    except RecursionError:  # nested deeper than the JSON decoder goes: skipped like any other unusable line
        log.warning("%s: skipped line %d: nested too deeply to read", source, number)
        return
    if envelope is not None:
        out.write(envelope + b"\n" if isinstance(envelope, bytes) else encode_line(envelope))
