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
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx
import msgspec

from gateway.providers.anthropic_wire import (
    API_VERSION,
    BATCHES,
    CANCEL_IS_MOOT,
    CHAT,
    MAX_BODY_BYTES,
    MAX_REQUESTS,
    ShardIndex,
    error_detail,
    parse_batch,
    rejected_line,
    result_line,
    write_create_body,
)
from gateway.providers.base import (
    LOCAL_BATCH_PREFIX,
    CreatesAnsweredHere,
    HealthReport,
    PollResult,
    ProviderBatchState,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    UnsupportedEndpoint,
    unix_time,
)
from gateway.providers.http import HttpAdapter
from gateway.providers.jsonl import encode_line
from gateway.providers.status_board import StatusBoard
from gateway.translate.anthropic import DEFAULT_MAX_TOKENS, MalformedResult

__all__ = ["LOCAL_BATCH_PREFIX", "AnthropicBatchAdapter"]

log = logging.getLogger(__name__)

_CANCEL_REFUSED_STATUS = frozenset({400, 409})


@dataclass
class AnthropicHttpAdapter(HttpAdapter):
    """Anthropic's ways on the HTTP base, shared by its batch and synchronous kinds: the key in ``x-api-key``
    with the ``anthropic-version`` header, and error types in error messages."""

    api_version: str = API_VERSION

    def _auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.api_version}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def _error_detail(self, response: httpx.Response) -> str:
        return error_detail(response.content)


@dataclass
class AnthropicBatchAdapter(AnthropicHttpAdapter):
    """A provider reached through Anthropic's ``/v1/messages/batches`` endpoints."""

    kind: ClassVar[str] = "anthropic"
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    """``max_tokens`` for requests that set neither ``max_tokens`` nor ``max_completion_tokens``."""
    _created: CreatesAnsweredHere = field(default_factory=CreatesAnsweredHere, init=False, repr=False)
    board: StatusBoard = field(default_factory=StatusBoard, repr=False, compare=False)
    """Recent status answers: the polls of one tick share one list page."""

    # ----------------------------------------------------------------- adapter contract

    def serves(self, endpoint: str) -> bool:
        """Chat only: Anthropic has no embeddings."""
        return endpoint == CHAT

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Translate the shard and create one Message Batch from it."""
        if shard.endpoint != CHAT:
            raise UnsupportedEndpoint(f"provider {self.name}: Anthropic batches serve only {CHAT}", status_code=400)
        with tempfile.NamedTemporaryFile(prefix="batchgw-anthropic-", suffix=".json") as out:
            body = await asyncio.to_thread(write_create_body, shard.input_path, out, self.default_max_tokens)
            caps = (MAX_REQUESTS, MAX_BODY_BYTES)
            return await self._create_inline(
                shard, body, path=BATCHES, caps=caps, batch="a Message Batch", created=self._created
            )

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        """The batch created for ``submit_token`` if this process saw its create answered (module docstring)."""
        return self._created.find(submit_token, self.name)

    async def poll(self, provider_batch_id: str, *, fresh_after: float | None = None) -> PollResult:
        """Read the batch (from the page listed for this tick's polls, else retrieved); counts are all
        ``processing`` until it ends (Anthropic's semantics)."""
        if provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
            return PollResult(state=ProviderBatchState.COMPLETED, raw_status="ended")
        batch = await self.board.read(
            provider_batch_id,
            lambda: self._retrieve(provider_batch_id),
            self._newest_batches,
            _has_ended,
            self.name,
            fresh_after=fresh_after,
        )
        result = parse_batch(batch)
        if result is None:
            raw_status = batch.get("processing_status")
            log.warning("provider %s: unknown processing_status %r, treated as running", self.name, raw_status)
            result = PollResult(state=ProviderBatchState.RUNNING, raw_status=str(raw_status))
        return result

    async def fetch_results(self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None) -> None:
        """Append every result as an OpenAI output line under its client ``custom_id``, then the unsent lines."""
        index = ShardIndex()
        if input_path is not None:
            index = await asyncio.to_thread(ShardIndex.read, input_path, self.default_max_tokens)
        with dest.open("ab") as out:
            if not provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
                batch = self.board.ended(provider_batch_id, _has_ended) or await self._retrieve(provider_batch_id)
                url = self._results_url(batch, provider_batch_id)
                created = unix_time(batch.get("ended_at")) or unix_time(batch.get("created_at")) or int(time.time())

                def keep(raw: bytes, number: int) -> Mapping[str, Any] | None:
                    try:
                        return result_line(raw, provider_batch_id=provider_batch_id, index=index, created=created)
                    except (msgspec.DecodeError, MalformedResult) as exc:
                        reason = "not valid JSON" if isinstance(exc, msgspec.DecodeError) else str(exc)
                        log.warning("provider %s: skipped result line %d of batch %s: %s",
                                    self.name, number, provider_batch_id, reason)  # fmt: skip
                        return None

                await self._download_lines(url, out, keep, label=f"{BATCHES}/{{id}}/results")
            for custom_id, err in index.rejected:
                out.write(encode_line(rejected_line(custom_id, err, provider_batch_id=provider_batch_id)))

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
            if status not in CANCEL_IS_MOOT:
                raise
            log.info("provider %s: batch %s is %s, cancel skipped", self.name, provider_batch_id, status)

    async def health(self) -> HealthReport:
        """``GET /v1/messages/batches?limit=1``, without retries."""
        return await self._probe((BATCHES, {"limit": 1}))

    # ----------------------------------------------------------------- helpers

    def take_seen_ended(self) -> list[str]:
        """Batches a shared list page showed ended (see :class:`StatusBoard`)."""
        return self.board.take_ended()

    async def _newest_batches(self) -> list[dict[str, Any]]:
        page = await self._call_json("GET", BATCHES, params={"limit": 100})
        data = page.get("data") if isinstance(page, dict) else None
        return [batch for batch in data if isinstance(batch, dict)] if isinstance(data, list) else []

    async def _retrieve(self, provider_batch_id: str) -> dict[str, Any]:
        batch = await self._call_json("GET", f"{BATCHES}/{quote(provider_batch_id, safe='')}")
        if not isinstance(batch, dict):
            raise ProviderUnavailable(f"provider {self.name}: GET {BATCHES}/{{id}} answered no batch object")
        return batch

    def _results_url(self, batch: dict[str, Any], provider_batch_id: str) -> str:
        url = batch.get("results_url")
        if not isinstance(url, str) or not url:
            status = batch.get("processing_status")
            raise ProviderUnavailable(f"provider {self.name}: batch {provider_batch_id} has no results yet ({status})")
        if self._same_origin(url):
            return url
        # The API key goes only to the configured host.
        log.warning("provider %s: results_url on another host; using the configured base URL", self.name)
        return self._url(f"{BATCHES}/{quote(provider_batch_id, safe='')}/results")


def _has_ended(batch: dict[str, Any]) -> bool:
    return batch.get("processing_status") == "ended"
