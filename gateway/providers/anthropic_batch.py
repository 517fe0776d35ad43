"""Adapter for Anthropic's Message Batches API (``kind = "anthropic"``).

Clients keep speaking OpenAI: each shard line's chat completion body is translated into Messages
``params`` (:mod:`gateway.translate.anthropic`) and the results are translated back. A line that cannot
be translated is not sent; it gets an OpenAI-format 400 line when the results are fetched. ``custom_id``s
Anthropic would refuse are replaced by a hash and recovered from the shard input at fetch time.

Crash reconciliation (:meth:`AnthropicBatchAdapter.find_submitted`) is weaker than for OpenAI, by
necessity. A Message Batch has no metadata, and neither listing nor retrieving it returns anything of
what was submitted (no ``custom_id``, no ``params``; so a tag in ``params.metadata.user_id`` could never
be read back either); results, the only echo, exist only once the batch has ended. A listing can
therefore only match on request count and creation time, and two shards of equal size created at the
same moment by two workers are indistinguishable: adopting the wrong one would hand one client another
client's answers under matching ``custom_id``s. So the adapter adopts only what it knows for certain: a
token whose create call was answered in this process (e.g. the engine then failed to record it). After a
process restart, or when the create answer was lost, it reports nothing and the engine submits again;
the price is a possible duplicate batch (billed, its results ignored), never a wrong one. The official
SDK accepts the same risk when it retries a create that timed out.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from gateway.providers.base import (
    HealthReport,
    PollResult,
    ProviderBatchState,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
)
from gateway.providers.openai_batch import OpenAIBatchAdapter
from gateway.providers.openai_wire import LineSplitter, encode_line, error_message_from_body
from gateway.providers.retry_after import parse_retry_after
from gateway.translate.anthropic import (
    DEFAULT_MAX_TOKENS,
    MalformedResult,
    TranslationError,
    chat_to_messages,
    envelope,
    provider_custom_id,
    result_to_envelope,
    translation_error_response,
)

log = logging.getLogger(__name__)

BATCHES = "/v1/messages/batches"
CHAT = "/v1/chat/completions"
API_VERSION = "2023-06-01"
MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024**2
LOCAL_BATCH_PREFIX = "local-empty-"
"""Id of a "batch" whose every request failed translation: nothing is sent, all its lines are 400s."""
STATE_TABLE: dict[str, ProviderBatchState] = {
    "in_progress": ProviderBatchState.RUNNING,
    "canceling": ProviderBatchState.CANCELLING,
    "ended": ProviderBatchState.COMPLETED,
}
"""``processing_status`` -> state; ``ended`` becomes CANCELLED or EXPIRED by :func:`ended_state`."""
_TRANSIENT_STATUS = frozenset({408})
_CANCEL_REFUSED_STATUS = frozenset({400, 409})
_LEDGER_SIZE = 10_000
_CHUNK = 1024 * 1024


class _InputLine(msgspec.Struct):
    custom_id: str
    body: dict[str, Any]


_input_decoder = msgspec.json.Decoder(_InputLine)


def iter_shard(path: Path, default_max_tokens: int) -> Iterator[tuple[str, dict[str, Any] | TranslationError]]:
    """``(custom_id, params or the reason it cannot be sent)`` for each line of an OpenAI-format shard."""
    with path.open("rb") as lines:  # binary iteration splits on b"\n" only, never inside a JSON string
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                line = _input_decoder.decode(raw)
            except msgspec.MsgspecError:
                log.warning("shard input %s: line %d is not a request line, skipped", path.name, number)
                continue
            try:
                yield line.custom_id, chat_to_messages(line.body, default_max_tokens=default_max_tokens)
            except TranslationError as err:
                yield line.custom_id, err


@dataclass(frozen=True)
class CreateBody:
    """A create call's JSON body, written to a temporary file."""

    path: Path
    size: int
    count: int


def write_create_body(shard_path: Path, out: IO[bytes], default_max_tokens: int) -> CreateBody:
    """Write ``{"requests": [...]}`` for the translatable lines of a shard; one request in memory at a time."""
    count = 0
    out.write(b'{"requests":[')
    for custom_id, params in iter_shard(shard_path, default_max_tokens):
        if isinstance(params, TranslationError):
            continue
        out.write(
            (b"," if count else b"")
            + msgspec.json.encode({"custom_id": provider_custom_id(custom_id), "params": params})
        )
        count += 1
    out.write(b"]}")
    out.flush()
    return CreateBody(Path(out.name), out.tell(), count)


@dataclass
class ShardIndex:
    """What fetching results needs from the shard input: the id map and the lines that were never sent."""

    reverse: dict[str, str] = field(default_factory=dict)
    rejected: list[tuple[str, TranslationError]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, default_max_tokens: int) -> ShardIndex:
        index = cls()
        for custom_id, params in iter_shard(path, default_max_tokens):
            mapped = provider_custom_id(custom_id)
            if mapped != custom_id:
                index.reverse[mapped] = custom_id
            if isinstance(params, TranslationError):
                index.rejected.append((custom_id, params))
        return index


def ended_state(batch: dict[str, Any]) -> ProviderBatchState:
    """An ended batch: CANCELLED after a cancel, EXPIRED if the 24h window cut requests off, else COMPLETED."""
    if batch.get("cancel_initiated_at"):
        return ProviderBatchState.CANCELLED
    counts = batch.get("request_counts")
    if isinstance(counts, dict) and _count(counts.get("expired")):
        return ProviderBatchState.EXPIRED
    return ProviderBatchState.COMPLETED


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _unix(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _stable(prefix: str, *parts: str) -> str:
    return prefix + hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:24]


@dataclass
class AnthropicBatchAdapter(OpenAIBatchAdapter):
    """A provider reached through Anthropic's ``/v1/messages/batches`` endpoints.

    Retries, transport error handling and key redaction are inherited from the OpenAI adapter; every
    contract method is Anthropic's own.
    """

    kind: ClassVar[str] = "anthropic"
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    """``max_tokens`` for requests that set neither ``max_tokens`` nor ``max_completion_tokens``."""
    api_version: str = API_VERSION
    _ledger: OrderedDict[str, str] = field(default_factory=OrderedDict, init=False, repr=False)

    # ----------------------------------------------------------------- adapter contract

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Translate the shard and create one Message Batch from it."""
        if shard.endpoint != CHAT:
            raise ProviderRejected(f"provider {self.name}: Anthropic batches serve only {CHAT}", status_code=400)
        with tempfile.NamedTemporaryFile(prefix="batchgw-anthropic-", suffix=".json") as out:
            body = await asyncio.to_thread(write_create_body, shard.input_path, out, self.default_max_tokens)
            if body.count == 0:
                return SubmitResult(provider_batch_id=LOCAL_BATCH_PREFIX + shard.submit_token)
            if body.count > MAX_REQUESTS or body.size > MAX_BODY_BYTES:
                raise ProviderRejected(
                    f"provider {self.name}: the shard translates to {body.count} requests and {body.size} bytes; "
                    f"a Message Batch holds at most {MAX_REQUESTS} requests and {MAX_BODY_BYTES} bytes",
                    status_code=413,
                )
            batch = await self._retrying(functools.partial(self._create, body))
        batch_id = self._batch_id(batch, f"POST {BATCHES}")
        self._ledger[shard.submit_token] = batch_id
        while len(self._ledger) > _LEDGER_SIZE:
            self._ledger.popitem(last=False)
        return SubmitResult(provider_batch_id=batch_id)

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        """The batch created for ``submit_token`` if this process saw its create answered (module docstring)."""
        batch_id = self._ledger.get(submit_token)
        if batch_id is None:
            log.info("provider %s: no record of submit token %s; Anthropic batches cannot be found by tag",
                     self.name, submit_token)  # fmt: skip
            return None
        return SubmitResult(provider_batch_id=batch_id)

    async def poll(self, provider_batch_id: str) -> PollResult:
        """Retrieve the batch; counts are all ``processing`` until it ends (Anthropic's semantics)."""
        if provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
            return PollResult(state=ProviderBatchState.COMPLETED, raw_status="ended")
        batch = await self._retrieve(provider_batch_id)
        raw_status = batch.get("processing_status")
        state = STATE_TABLE.get(raw_status) if isinstance(raw_status, str) else None
        if state is None:
            log.warning("provider %s: unknown processing_status %r, treated as running", self.name, raw_status)
            state = ProviderBatchState.RUNNING
        elif state is ProviderBatchState.COMPLETED:
            state = ended_state(batch)
        counts = batch.get("request_counts")
        counts = counts if isinstance(counts, dict) else {}
        names = ("processing", "succeeded", "errored", "canceled", "expired")
        processing, succeeded, errored, canceled, expired = (_count(counts.get(name)) for name in names)
        return PollResult(
            state=state,
            raw_status=str(raw_status),
            total=processing + succeeded + errored + canceled + expired,
            completed=succeeded,
            failed=errored + canceled + expired,
        )

    async def fetch_results(self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None) -> None:
        """Append every result as an OpenAI output line under its client ``custom_id``, then the unsent lines."""
        index = ShardIndex()
        if input_path is not None:
            index = await asyncio.to_thread(ShardIndex.read, input_path, self.default_max_tokens)
        with dest.open("ab") as out:
            if not provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
                batch = await self._retrieve(provider_batch_id)
                url = self._results_url(batch, provider_batch_id)
                created = _unix(batch.get("ended_at")) or _unix(batch.get("created_at")) or int(time.time())
                download = functools.partial(self._download_results, url, provider_batch_id, index, created, out)
                await self._retrying(download)
            for custom_id, err in index.rejected:
                line_id = _stable("batch_req_", provider_batch_id, custom_id)
                response = {**translation_error_response(err), "request_id": _stable("req_", line_id)}
                out.write(encode_line(envelope(line_id, custom_id, response, None)))

    async def cancel(self, provider_batch_id: str) -> None:
        """Ask for cancellation; a refusal because the batch already ended (or is canceling) is fine."""
        if provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
            return
        try:
            await self._call_json("POST", f"{BATCHES}/{quote(provider_batch_id, safe='')}/cancel")
        except ProviderRejected as exc:
            if exc.status_code not in _CANCEL_REFUSED_STATUS:
                raise
            status = (await self._retrieve(provider_batch_id)).get("processing_status")
            if status not in ("ended", "canceling"):
                raise
            log.info("provider %s: batch %s is %s, cancel skipped", self.name, provider_batch_id, status)

    async def health(self) -> HealthReport:
        """``GET /v1/messages/batches?limit=1``, without retries."""
        started = time.monotonic()
        try:
            response = await self._request("GET", BATCHES, params={"limit": 1})
        except ProviderError as exc:
            return HealthReport(healthy=False, detail=str(exc), latency_s=time.monotonic() - started)
        latency = time.monotonic() - started
        if response.is_success:
            return HealthReport(healthy=True, detail=f"GET {BATCHES}: HTTP {response.status_code}", latency_s=latency)
        return HealthReport(healthy=False, detail=str(self._status_error("GET", BATCHES, response)), latency_s=latency)

    # ----------------------------------------------------------------- helpers

    async def _retrieve(self, provider_batch_id: str) -> dict[str, Any]:
        batch = await self._call_json("GET", f"{BATCHES}/{quote(provider_batch_id, safe='')}")
        if not isinstance(batch, dict):
            raise ProviderUnavailable(f"provider {self.name}: GET {BATCHES}/{{id}} answered no batch object")
        return batch

    async def _create(self, body: CreateBody) -> dict[str, Any]:
        async def chunks() -> AsyncIterator[bytes]:
            with body.path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk

        # An explicit Content-Length keeps httpx from chunking the streamed body.
        headers = {**self._headers(), "Content-Type": "application/json", "Content-Length": str(body.size)}
        try:
            response = await self.http.request(
                "POST", self._url(BATCHES), content=chunks(), headers=headers, timeout=self.config.timeout_s
            )
        except httpx.HTTPError as exc:
            raise self._transport_error("POST", BATCHES, exc) from None
        if not response.is_success:
            raise self._status_error("POST", BATCHES, response)
        try:
            batch = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            batch = None
        if not isinstance(batch, dict):
            raise ProviderUnavailable(
                f"provider {self.name}: POST {BATCHES} answered HTTP {response.status_code}, not a batch"
            )
        return batch

    def _results_url(self, batch: dict[str, Any], provider_batch_id: str) -> str:
        url = batch.get("results_url")
        if not isinstance(url, str) or not url:
            status = batch.get("processing_status")
            raise ProviderUnavailable(f"provider {self.name}: batch {provider_batch_id} has no results yet ({status})")
        ours, theirs = urlsplit(self.config.base_url), urlsplit(url)
        if (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc):
            return url
        # The API key goes only to the configured host.
        log.warning("provider %s: results_url on another host; using the configured base URL", self.name)
        return self._url(f"{BATCHES}/{quote(provider_batch_id, safe='')}/results")

    async def _download_results(
        self, url: str, provider_batch_id: str, index: ShardIndex, created: int, out: IO[bytes]
    ) -> None:
        start = out.tell()
        path = f"{BATCHES}/{{id}}/results"
        try:
            async with self.http.stream("GET", url, headers=self._headers(), timeout=self.config.timeout_s) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._status_error("GET", path, response)
                splitter, number = LineSplitter(), 0
                async for chunk in response.aiter_bytes():
                    for line in splitter.feed(chunk):
                        number += 1
                        self._keep_result(line, number, provider_batch_id, index, created, out)
                for line in splitter.flush():
                    number += 1
                    self._keep_result(line, number, provider_batch_id, index, created, out)
        except BaseException as exc:
            # A retry starts the stream again: drop what this try appended.
            out.truncate(start)
            out.seek(start)
            if isinstance(exc, httpx.HTTPError):
                raise self._transport_error("GET", path, exc) from None
            raise

    def _keep_result(
        self, raw: bytes, number: int, provider_batch_id: str, index: ShardIndex, created: int, out: IO[bytes]
    ) -> None:
        if not raw.strip():
            return
        try:
            line = msgspec.json.decode(raw)
            sent_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(sent_id, str) or not sent_id:
                raise MalformedResult("no string custom_id")
            custom_id = index.reverse.get(sent_id, sent_id)
            line_id = _stable("batch_req_", provider_batch_id, custom_id)
            translated = result_to_envelope(
                line.get("result"), custom_id=custom_id, line_id=line_id,
                request_id=_stable("req_", line_id), created=created,
            )  # fmt: skip
        except (msgspec.DecodeError, MalformedResult) as exc:
            reason = "not valid JSON" if isinstance(exc, msgspec.DecodeError) else str(exc)
            log.warning(
                "provider %s: skipped result line %d of batch %s: %s", self.name, number, provider_batch_id, reason
            )
            return
        out.write(encode_line(translated))

    def _headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.api_version}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def _status_error(self, method: str, path: str, response: httpx.Response) -> ProviderError:
        status = response.status_code
        message = self._redact(f"provider {self.name}: {method} {path} answered HTTP {status}: {_detail(response)}")
        if status == 429:
            return ProviderRateLimited(message, retry_after_s=parse_retry_after(response.headers))
        if status >= 500 or status in _TRANSIENT_STATUS:  # 529 overloaded_error included
            return ProviderUnavailable(message)
        return ProviderRejected(message, status_code=status)


def _detail(response: httpx.Response) -> str:
    """``<error type>: <message>`` of an Anthropic error body (``{"type":"error","error":{type,message}}``)."""
    message = error_message_from_body(response.content)
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return message
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return f"{kind}: {message}" if isinstance(kind, str) and kind else message
