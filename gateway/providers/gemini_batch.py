"""Adapter for the Gemini API batch mode (``POST /v1beta/models/{model}:batchGenerateContent``, and
``:asyncBatchEmbedContent`` for embeddings).

A shard's OpenAI-format requests are translated by :mod:`gateway.translate.gemini` (chat) or
:mod:`gateway.translate.gemini_embeddings` (one text per embeddings request) into a temporary
JSONL file of ``{"key": custom_id, "request": ...}`` lines. A small shard is sent
inline in the create call; a larger one is uploaded through the resumable File API and named by
``input_config.file_name``. The batch's ``display_name`` carries the submit token, which is how
:meth:`GeminiBatchAdapter.find_submitted` finds a batch whose create answer was lost. A request that
cannot be translated is never sent: :meth:`GeminiBatchAdapter.fetch_results` writes its error line.
An embedding answer carries Gemini's ``tokenCount``, which the ledger prices.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast
from urllib.parse import quote

import httpx
import msgspec

from gateway import jsondepth
from gateway.providers.base import (
    HealthReport,
    PollResult,
    ProviderAuthFailed,
    ProviderBatchState,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    UnsupportedEndpoint,
)
from gateway.providers.gemini_wire import (
    DISPLAY_PREFIX,
    EMBEDDINGS,
    file_create_body,
    has_display_name,
    inline_create_body,
    inlined_responses,
    key_refused,
    map_batch_state,
    operation_end,
    operation_model,
    operation_output,
    parse_operation,
    rejected_envelope,
    result_envelope,
    retry_delay,
    translate_shard,
)
from gateway.providers.http import HttpAdapter, file_chunks
from gateway.providers.jsonl import encode_line

log = logging.getLogger(__name__)

API = "/v1beta"
CHAT_ENDPOINT = "/v1/chat/completions"
CREATE_METHODS = {CHAT_ENDPOINT: "batchGenerateContent", EMBEDDINGS: "asyncBatchEmbedContent"}
"""The model method that creates a batch of each endpoint's requests."""
DEFAULT_INLINE_MAX_BYTES = 10 * 1024**2
INLINE_LIMIT_BYTES = 20 * 1024**2 - 64 * 1024
"""Gemini refuses create calls of 20 MB or more; the margin covers the envelope around the requests."""


@dataclass
class GeminiHttpAdapter(HttpAdapter):
    """The Gemini API's ways on the HTTP base, shared by its batch and synchronous kinds: the key in
    ``x-goog-api-key``, ``base_url`` with or without ``/v1beta``, a 400 for an invalid key, ``RetryInfo``."""

    def _url(self, path: str) -> str:
        if "://" in path:
            return super()._url(path)
        return f"{self.config.base_url.removesuffix(API)}{path}"

    def _auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.api_key} if self.api_key else {}

    def _error_class(self, response: httpx.Response) -> type[ProviderError]:
        if response.status_code == 400 and key_refused(response.content):
            return ProviderAuthFailed
        return super()._error_class(response)

    def _retry_hint(self, response: httpx.Response) -> float | None:
        delay = retry_delay(response.content)
        return super()._retry_hint(response) if delay is None else delay


@dataclass
class GeminiBatchAdapter(GeminiHttpAdapter):
    """A provider reached through the Gemini API's batch mode (``base_url`` without ``/v1beta``)."""

    kind: ClassVar[str] = "gemini"
    inline_max_bytes: int = DEFAULT_INLINE_MAX_BYTES
    """Shards whose translated requests are larger go through the File API."""
    max_list_pages: int = 20
    """Pages of ``GET /v1beta/batches`` searched by :meth:`find_submitted`."""
    list_page_size: int = 100

    def serves(self, endpoint: str) -> bool:
        """Chat and embeddings."""
        return endpoint in CREATE_METHODS

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Translate the shard, send it inline or as an uploaded file, and create the batch."""
        method = CREATE_METHODS.get(shard.endpoint)
        if method is None:
            raise UnsupportedEndpoint(f"provider {self.name}: Gemini batches serve {', '.join(CREATE_METHODS)}")
        display = DISPLAY_PREFIX + shard.submit_token
        file_name: str | None = None
        with tempfile.TemporaryDirectory(prefix="batchgw-gemini-") as folder:
            requests = Path(folder) / "requests.jsonl"
            translated = await asyncio.to_thread(translate_shard, shard.input_path, requests)
            if not translated.sent:
                first = translated.rejected[0][1] if translated.rejected else "the shard is empty"
                raise ProviderRejected(f"provider {self.name}: no request can be sent to Gemini: {first}", 400)
            body = None
            if translated.size <= self.inline_max_bytes:
                body = await asyncio.to_thread(inline_create_body, requests, display)
            if body is None or len(body) > INLINE_LIMIT_BYTES:
                file_name = await self._retrying(lambda: self._upload(requests, translated.size, display))
                body = file_create_body(file_name, display)
        model = quote(shard.provider_model.removeprefix("models/"), safe="")
        path = f"{API}/models/{model}:{method}"
        raw_body = msgspec.Raw(body)

        async def create() -> dict[str, Any]:
            return cast(dict[str, Any], await self._send_json("POST", path, json=raw_body))

        operation = await self._create_once(shard, create, lambda: self._find_batch(shard.submit_token, retrying=False))
        return SubmitResult(provider_batch_id=self._batch_name(operation, path), provider_file_id=file_name)

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        """The batch whose display name carries ``submit_token``, among :attr:`max_list_pages` pages."""
        operation = await self._find_batch(submit_token, retrying=True)
        if operation is None:
            return None
        config = (operation.get("metadata") or {}).get("inputConfig")
        file_name = config.get("fileName") if isinstance(config, dict) else None
        return SubmitResult(
            provider_batch_id=self._batch_name(operation, f"GET {API}/batches"),
            provider_file_id=file_name if isinstance(file_name, str) else None,
        )

    async def poll(self, provider_batch_id: str, *, fresh_after: float | None = None) -> PollResult:
        """Read the Operation: ``metadata.state`` (either spelling), ``batchStats`` and ``done``."""
        result = parse_operation(await self._operation(provider_batch_id))
        if map_batch_state(result.raw_status) is None and result.raw_status not in ("done", "running"):
            log.warning("provider %s: unknown batch state %r", self.name, result.raw_status)
        if result.error is not None:
            result = dataclasses.replace(result, error=self._sanitise(result.error))
        return result

    async def fetch_results(self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None) -> None:
        """Append one OpenAI output line per Gemini result, plus one per request that was never sent."""
        operation = await self._operation(provider_batch_id)
        output = operation_output(operation)
        envelope = functools.partial(
            result_envelope,
            batch_id=provider_batch_id,
            model=operation_model(operation),
            created=operation_end(operation),
        )
        shard = await asyncio.to_thread(translate_shard, input_path) if input_path else None
        if shard is not None:
            envelope = functools.partial(envelope, embeddings=shard.embeddings)
        inlined = inlined_responses(output)
        with dest.open("ab") as out:
            for position, item in enumerate(inlined or []):
                if jsondepth.TOO_DEEP in msgspec.json.encode(item):  # cut from an answer too deep to read whole
                    log.warning("provider %s: skipped inline result %d of batch %s: nested too deeply to read",
                                self.name, position + 1, provider_batch_id)  # fmt: skip
                    continue
                key = (item.get("metadata") or {}).get("key")
                if not isinstance(key, str) and shard and position < len(shard.sent):
                    key = shard.sent[position]  # inline responses are documented to keep the input order
                if isinstance(key, str):
                    out.write(encode_line(envelope(key, item)))
            if inlined is None and isinstance(output.get("responsesFile"), str):
                file_name = output["responsesFile"]
                path = f"/download{API}/{quote(file_name, safe='/')}:download"
                keep = functools.partial(self._result_line, file_name=file_name, envelope=envelope)
                await self._download_lines(path, out, keep, params={"alt": "media"})
            for custom_id, problem in shard.rejected if shard else []:
                out.write(encode_line(rejected_envelope(custom_id, problem, batch_id=provider_batch_id)))

    async def cancel(self, provider_batch_id: str) -> None:
        """Ask for cancellation; a refusal because the batch already ended is fine."""
        try:
            await self._call_json("POST", f"{self._batch_path(provider_batch_id)}:cancel")
        except ProviderRejected:
            state = parse_operation(await self._operation(provider_batch_id)).state
            if not (state.is_terminal or state is ProviderBatchState.CANCELLING):
                raise
            log.info("provider %s: batch %s is %s, cancel skipped", self.name, provider_batch_id, state)

    async def health(self) -> HealthReport:
        """``GET /v1beta/models?pageSize=1`` (the batches list where models is absent), without retries."""
        return await self._probe((f"{API}/models", {"pageSize": 1}), (f"{API}/batches", {"pageSize": 1}))

    # ----------------------------------------------------------------- helpers

    def _batch_path(self, provider_batch_id: str) -> str:
        return f"{API}/batches/{quote(provider_batch_id.removeprefix('batches/'), safe='')}"

    def _batch_name(self, operation: object, call: str) -> str:
        name = operation.get("name") if isinstance(operation, dict) else None
        if not isinstance(name, str) or not name:
            raise ProviderUnavailable(f"provider {self.name}: {call} answered an operation without a name")
        return name

    async def _operation(self, provider_batch_id: str) -> dict[str, Any]:
        operation = await self._call_json("GET", self._batch_path(provider_batch_id))
        if not isinstance(operation, dict):
            raise ProviderUnavailable(f"provider {self.name}: batch {provider_batch_id} is not a JSON object")
        return operation

    async def _find_batch(self, submit_token: str, *, retrying: bool) -> dict[str, Any] | None:
        display, page_token = DISPLAY_PREFIX + submit_token, ""
        send = self._call_json if retrying else self._send_json
        for _ in range(self.max_list_pages):
            params: dict[str, str | int] = {"pageSize": self.list_page_size}
            if page_token:
                params["pageToken"] = page_token
            answer = await send("GET", f"{API}/batches", params=params)
            answer = answer if isinstance(answer, dict) else {}
            for operation in answer.get("operations") or []:
                if has_display_name(operation, display):
                    return cast(dict[str, Any], operation)
            page_token = answer.get("nextPageToken") or ""
            if not isinstance(page_token, str) or not page_token:
                return None
        log.warning("provider %s: submit token not in the first %d batch pages", self.name, self.max_list_pages)
        return None

    async def _upload(self, path: Path, size: int, display: str) -> str:
        """Resumable upload: a start call names the upload URL, one ``upload, finalize`` call sends the bytes."""
        start = {
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(size),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        }
        where = f"/upload{API}/files"
        answer = await self._request("POST", where, json={"file": {"display_name": display}}, headers=start)
        url = answer.headers.get("x-goog-upload-url")
        if not answer.is_success:
            raise self._status_error("POST", where, answer)
        if not url:
            raise ProviderUnavailable(f"provider {self.name}: POST {where} answered without an upload URL")
        send = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0", "Content-Length": str(size)}
        uploaded = await self._send_json("POST", url, content=file_chunks(path), headers=send, label=where)
        name = uploaded.get("file", {}).get("name") if isinstance(uploaded, dict) else None
        if not isinstance(name, str) or not name:
            raise ProviderUnavailable(f"provider {self.name}: POST {where} answered without a file name")
        return name

    def _result_line(
        self, line: bytes, number: int, *, file_name: str, envelope: Callable[..., dict[str, Any]]
    ) -> Mapping[str, Any] | None:
        try:
            item = msgspec.json.decode(line)
        except msgspec.DecodeError:
            item = None
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            log.warning(
                "provider %s: skipped line %d of results file %s: no JSON with a key", self.name, number, file_name
            )
            return None
        return envelope(item["key"], item)
