"""Adapter for OpenRouter's batch API (``kind = "openrouter"``; ``base_url`` ends in ``/api/v1``).

A shard becomes one create call with every request inline (:mod:`gateway.providers.openrouter_wire`), streamed
from a temporary file; OpenRouter answers 202 while it validates. Results arrive inline on ``GET /batches/{id}``
once the batch has ended, in OpenAI's output-line shape; each answer carries what OpenRouter billed for it
(``billed_usd``), so the ledger records OpenRouter's ``usage.cost``, not tokens at a catalog price.

What this adapter cannot do, because OpenRouter's batch API does not offer it:

* **Find a batch by tag after a crash.** A batch holds no metadata and its requests are not readable until it
  ends, so, as for Anthropic, only a create answered in this process is adopted
  (:class:`gateway.providers.base.CreatesAnsweredHere`); otherwise the shard is submitted again.
* **Cancel.** OpenRouter documents no cancel operation; a cancelled client batch waits for its OpenRouter
  batches to end (most end within minutes) and keeps what they answered.

Caps: 5,000 requests and 200 MB a batch, one model and one endpoint, ``completion_window`` ``24h`` only;
they are this kind's default limits (:data:`gateway.providers.config.KIND_CAPS`).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

import msgspec

from gateway import jsondepth
from gateway.providers.base import (
    LOCAL_BATCH_PREFIX,
    CapabilityNotSupported,
    CreatesAnsweredHere,
    HealthReport,
    PollResult,
    ProviderBatchState,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    UnsupportedEndpoint,
)
from gateway.providers.http import HttpAdapter
from gateway.providers.jsonl import encode_line
from gateway.providers.openai_wire import batch_error_summary, map_batch_status, parse_request_counts, rejected_line
from gateway.providers.openrouter_wire import (
    BATCHES,
    CHAT,
    EMBEDDINGS,
    ENDPOINTS,
    MAX_BODY_BYTES,
    MAX_REQUESTS,
    BatchResults,
    BatchStatus,
    result_lines,
    results_decoder,
    status_decoder,
    unsent_requests,
    write_create_body,
)

log = logging.getLogger(__name__)

TARGET = "OpenRouter"
S = TypeVar("S", BatchStatus, BatchResults)


@dataclass
class OpenRouterBatchAdapter(HttpAdapter):
    """A provider reached through OpenRouter's ``/batches`` endpoints."""

    kind: ClassVar[str] = "openrouter"
    upstream_providers: list[str] = field(default_factory=list)
    """OpenRouter provider slugs a batch may run on (``provider.only``); empty: OpenRouter's cheapest."""
    _created: CreatesAnsweredHere = field(default_factory=CreatesAnsweredHere, init=False, repr=False)

    # ----------------------------------------------------------------- adapter contract

    def serves(self, endpoint: str) -> bool:
        """Chat and embeddings."""
        return endpoint in ENDPOINTS

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Create one batch holding the shard's requests inline."""
        if not self.serves(shard.endpoint):
            raise UnsupportedEndpoint(
                f"provider {self.name}: OpenRouter batches here serve {CHAT} and {EMBEDDINGS}", status_code=400
            )
        with tempfile.NamedTemporaryFile(prefix="batchgw-openrouter-", suffix=".json") as out:
            body = await asyncio.to_thread(
                write_create_body, shard.input_path, out, shard.endpoint, shard.provider_model, self._routing()
            )
            caps = (MAX_REQUESTS, MAX_BODY_BYTES)
            return await self._create_inline(
                shard, body, path=BATCHES, caps=caps, batch="an OpenRouter batch", created=self._created
            )

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        """The batch created for ``submit_token`` if this process saw its create answered (module docstring)."""
        return self._created.find(submit_token, self.name)

    async def poll(self, provider_batch_id: str, *, fresh_after: float | None = None) -> PollResult:
        """Read the batch's status and counts (its inline results are skipped, not decoded)."""
        if provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
            return PollResult(state=ProviderBatchState.COMPLETED, raw_status="completed")
        batch = await self._retrieve(provider_batch_id, status_decoder)
        state = map_batch_status(batch.status)
        raw = {"status": batch.status, "request_counts": batch.request_counts, "error": batch.error}
        counts = parse_request_counts(raw)
        error = batch_error_summary(raw) if state is ProviderBatchState.FAILED else None
        result = PollResult(
            state=state or ProviderBatchState.RUNNING,
            raw_status=str(batch.status),
            total=counts.total,
            completed=counts.completed,
            failed=counts.failed,
            error=error,
        )
        return self._poll_result(result, state is not None)

    async def fetch_results(self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None) -> None:
        """Append the ended batch's inline results (each answer with ``billed_usd``), then a 400 line per
        request never sent."""
        with dest.open("ab") as out:
            if not provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
                batch = await self._retrieve(provider_batch_id, results_decoder)
                self._check_results(batch, provider_batch_id)
                found = await asyncio.to_thread(result_lines, batch, provider_batch_id)
                for position, why in found.skipped:
                    log.warning("provider %s: skipped result %d of batch %s: %s",
                                self.name, position, provider_batch_id, why)  # fmt: skip
                if found.unassigned_usd:
                    log.warning("provider %s: batch %s billed $%.6f but answered nothing successfully; "
                                "that charge is not in the ledger", self.name, provider_batch_id,
                                found.unassigned_usd)  # fmt: skip
                for line in found.lines:
                    out.write(encode_line(line))
            if input_path is not None:
                for custom_id, problem in await asyncio.to_thread(lambda: list(unsent_requests(input_path))):
                    line = rejected_line(custom_id, problem, batch_id=provider_batch_id, target=TARGET)
                    out.write(encode_line(line))

    async def cancel(self, provider_batch_id: str) -> None:
        """OpenRouter offers no cancel operation: the batch runs to its end (module docstring)."""
        raise CapabilityNotSupported(
            f"provider {self.name} (openrouter) cannot cancel a batch: OpenRouter's batch API has no cancel "
            "operation; the batch runs to its end and what it answered is kept"
        )

    async def health(self) -> HealthReport:
        """``GET /batches?limit=1``, without retries."""
        return await self._probe((BATCHES, {"limit": 1}))

    # ----------------------------------------------------------------- helpers

    def _check_results(self, batch: BatchResults, provider_batch_id: str) -> None:
        """Raise unless ``batch`` holds its results, or ended without answering anything."""
        if batch.results is not None:
            return
        state = map_batch_status(batch.status)
        if state is None or not state.is_terminal:
            raise ProviderUnavailable(
                f"provider {self.name}: batch {provider_batch_id} has no results yet ({batch.status})"
            )
        if state is ProviderBatchState.COMPLETED:
            # OpenRouter deletes a batch's requests and results 30 days after its creation (or when asked to):
            # nothing will come back, and waiting would hold the shard forever.
            raise ProviderRejected(
                f"provider {self.name}: batch {provider_batch_id} completed but its results are gone (deleted)"
            )
        # A failed, expired or cancelled batch without results answered nothing: its requests are unanswered.

    def _routing(self) -> dict[str, Any] | None:
        if not self.upstream_providers:
            return None
        return {"only": list(self.upstream_providers), "allow_fallbacks": False}

    async def _retrieve(self, provider_batch_id: str, decoder: msgspec.json.Decoder[S]) -> S:
        path = f"{BATCHES}/{quote(provider_batch_id, safe='')}"
        label = f"{BATCHES}/{{id}}"

        async def once() -> S:
            response = await self._request("GET", path, label=label)
            if not response.is_success:
                raise self._status_error("GET", label, response)
            try:
                batch, cut = jsondepth.decode_within(decoder.decode, response.content)
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise ProviderUnavailable(f"provider {self.name}: GET {label} answered no batch object") from None
            if cut:  # a result nested too deeply: the others are read, it is skipped (and runs again)
                self._warn_too_deep("GET", label)
            return batch

        return await self._retrying(once)
