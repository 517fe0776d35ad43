"""Adapter for every provider that speaks OpenAI's Files + Batches protocol.

One class serves OpenAI, Azure OpenAI (``/openai/v1``), Groq (``/openai/v1``) and Together: the
``base_url`` of the provider's configuration selects the service, and the wire dialects are
reconciled by the pure transforms in :mod:`gateway.providers.openai_wire`. Retries, downloads and
error hygiene come from :class:`gateway.providers.http.HttpAdapter`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

from gateway.providers.base import (
    HealthReport,
    PollResult,
    ProviderBatchState,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
)
from gateway.providers.http import HttpAdapter, Multipart
from gateway.providers.openai_wire import (
    batch_error_summary,
    cancel_refusal_is_benign,
    find_batch_with_token,
    map_batch_status,
    normalise_output_line,
    parse_batch_page,
    parse_request_counts,
    submit_metadata,
    unwrap_batch,
)
from gateway.translate import MalformedResult

log = logging.getLogger(__name__)

_CANCEL_REFUSED_STATUS = frozenset({400, 409})


@dataclass
class OpenAIBatchAdapter(HttpAdapter):
    """A provider reached through OpenAI's ``/files`` and ``/batches`` endpoints."""

    kind: ClassVar[str] = "openai"
    max_list_pages: int = 20
    """Pages of ``GET /batches`` (100 each, newest first) searched by :meth:`find_submitted`."""

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Upload the shard file, then create a batch tagged with the shard's submit token."""
        upload = Multipart(
            shard.input_path, f"{shard.input_path.stem}.jsonl", "application/jsonl", {"purpose": "batch"}
        )
        uploaded = await self._call_json("POST", "/files", multipart=upload)
        file_id = uploaded.get("id") if isinstance(uploaded, dict) else None
        if not isinstance(file_id, str) or not file_id:
            raise ProviderUnavailable(f"provider {self.name}: POST /files answered without a file id")
        body = {
            "input_file_id": file_id,
            "endpoint": shard.endpoint,
            "completion_window": shard.completion_window,
            "metadata": submit_metadata(shard.submit_token, shard.shard_id),
        }

        async def create() -> dict[str, Any]:
            return unwrap_batch(await self._send_json("POST", "/batches", json=body))

        batch = await self._create_once(shard, create, lambda: self._find_batch(shard.submit_token, retrying=False))
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
        error = batch_error_summary(batch) if state is ProviderBatchState.FAILED else None
        return PollResult(
            state=state,
            raw_status=str(raw_status),
            total=counts.total,
            completed=counts.completed,
            failed=counts.failed,
            error=self._sanitise(error) if error is not None else None,
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
                path = f"/files/{quote(file_id, safe='')}/content"

                def keep(line: bytes, number: int, file_id: str = file_id) -> Mapping[str, Any] | None:
                    return self._result_line(line, number, file_id, provider_batch_id)

                await self._download_lines(path, out, keep)

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
        return await self._probe(("/models", None), ("/batches", {"limit": 1}))

    # ----------------------------------------------------------------- helpers

    async def _retrieve(self, provider_batch_id: str) -> dict[str, Any]:
        return unwrap_batch(await self._call_json("GET", f"/batches/{quote(provider_batch_id, safe='')}"))

    async def _find_batch(self, submit_token: str, *, retrying: bool) -> dict[str, Any] | None:
        after: str | None = None
        send = self._call_json if retrying else self._send_json
        for _ in range(self.max_list_pages):
            params: dict[str, str | int] = {"limit": 100}
            if after is not None:
                params["after"] = after
            page = parse_batch_page(await send("GET", "/batches", params=params))
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

    def _result_line(self, line: bytes, number: int, file_id: str, provider_batch_id: str) -> Mapping[str, Any] | None:
        try:
            return normalise_output_line(line, provider_batch_id)
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
