"""Adapter for every provider that speaks OpenAI's Files + Batches protocol.

One class serves OpenAI, Azure OpenAI (``/openai/v1``), Groq (``/openai/v1``) and Together: the
``base_url`` of the provider's configuration selects the service, its ``dialect`` option names
where the service departs from OpenAI's format (a row of
:data:`gateway.providers.openai_wire.DIALECTS`), and the pure transforms of that module read every
dialect's answers. Retries, downloads and error hygiene come from
:class:`gateway.providers.http.HttpAdapter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote

from gateway.providers.base import (
    BatchUsage,
    HealthReport,
    PollResult,
    ProviderBatchState,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    SubmitWithdrawn,
    UnsupportedEndpoint,
)
from gateway.providers.http import HttpAdapter, Multipart
from gateway.providers.openai_wire import (
    DIALECTS,
    UPLOAD_TTL_S,
    BatchPage,
    Dialect,
    DialectName,
    batch_error_summary,
    cancel_refusal_is_benign,
    find_batch_on_file,
    find_batch_with_token,
    find_upload_of,
    map_batch_status,
    parse_batch_page,
    parse_batch_usage,
    parse_progress,
    parse_request_counts,
    submit_metadata,
    unwrap_batch,
    upload_name,
)
from gateway.providers.status_board import StatusBoard
from gateway.translate.custom_ids import custom_id_of, provider_custom_id, reverse_custom_ids, with_custom_id

log = logging.getLogger(__name__)

T = TypeVar("T")

_CANCEL_REFUSED_STATUS = frozenset({400, 409})


@dataclass
class OpenAIBatchAdapter(HttpAdapter):
    """A provider reached through OpenAI's ``/files`` and ``/batches`` endpoints."""

    kind: ClassVar[str] = "openai"
    results_as_sent: ClassVar[bool] = True
    dialect: DialectName = "openai"
    """Where the provider departs from OpenAI's format: ``azure``, ``groq`` or ``together``."""
    max_list_pages: int = 20
    """Pages of ``GET /batches`` (100 each, newest first) searched by :meth:`find_submitted`."""
    board: StatusBoard = field(default_factory=StatusBoard, repr=False, compare=False)
    """Recent status answers: the polls of one tick share one ``GET /batches`` page."""

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            known = ", ".join(DIALECTS)
            raise ValueError(f"provider {self.name}: unknown dialect {self.dialect!r}; dialects: {known}")
        self.board.lists = self.wire.lists_newest_first

    @property
    def wire(self) -> Dialect:
        """This provider's row of the dialect table."""
        return DIALECTS[self.dialect]

    def serves(self, endpoint: str) -> bool:
        """Whether the provider's batches take ``endpoint`` (Groq and Together: chat only)."""
        return endpoint in self.wire.endpoints

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Upload the shard file under a name that carries its submit token, then create a batch tagged
        with the token (where the provider keeps ``metadata``)."""
        if not self.serves(shard.endpoint):
            served = ", ".join(sorted(self.wire.endpoints))
            raise UnsupportedEndpoint(f"provider {self.name}: its batches serve {served} only", status_code=400)
        fields = {"purpose": self.wire.upload_purpose}
        if self.wire.upload_expiry_fields is not None:
            anchor, seconds = self.wire.upload_expiry_fields
            fields |= {anchor: "created_at", seconds: str(UPLOAD_TTL_S)}
        with contextlib.ExitStack() as stack:
            source = shard.input_path
            if self.wire.maps_custom_ids and await asyncio.to_thread(_needs_mapped_ids, source):
                try:
                    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="batchgw-ids-")))
                    source = await asyncio.to_thread(_with_provider_ids, source, folder / "shard.jsonl")
                except OSError as exc:  # a full or missing temporary folder passes
                    failure = f"provider {self.name}: mapping the shard's custom_ids failed: {exc}"
                    raise ProviderUnavailable(failure) from None
            upload = Multipart(source, upload_name(shard.submit_token), "application/jsonl", fields)
            uploaded = await self._call_json("POST", "/files", multipart=upload)
        file_id = uploaded.get("id") if isinstance(uploaded, dict) else None
        if not isinstance(file_id, str) or not file_id:
            raise ProviderUnavailable(f"provider {self.name}: POST /files answered without a file id")
        body: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": shard.endpoint,
            "completion_window": self.wire.completion_window(shard.window_s),
        }
        if self.wire.keeps_metadata:
            body["metadata"] = submit_metadata(shard.submit_token, shard.shard_id)

        async def create() -> dict[str, Any]:
            return unwrap_batch(await self._send_json("POST", "/batches", json=body))

        async def find() -> dict[str, Any] | None:
            return await self._find_batch(shard.submit_token, retrying=False, file_id=file_id)

        try:
            batch = await self._create_once(shard, create, find)
        except (ProviderRejected, ProviderRateLimited, SubmitWithdrawn):
            # Refused, or never sent: the next try uploads again, under a fresh token.
            await self._discard_upload(file_id, find)
            raise
        return SubmitResult(provider_batch_id=self._batch_id(batch, "POST /batches"), provider_file_id=file_id)

    async def _discard_upload(self, file_id: str, find: Callable[[], Awaitable[dict[str, Any] | None]]) -> None:
        """Delete an upload no batch reads: looked for first, since an earlier try of the create whose answer was
        lost may have made one. One try each (the provider's expiry takes what this misses)."""
        try:
            if await find() is None:
                await self._send_json("DELETE", f"/files/{quote(file_id, safe='')}")
        except ProviderError as exc:
            log.info("provider %s: deleting the unused upload %s failed: %s", self.name, file_id, exc)

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

    async def poll(self, provider_batch_id: str, *, fresh_after: float | None = None) -> PollResult:
        """Read the batch (from the page of batches listed for this tick's polls, else retrieved) and translate
        its status and request counts."""
        batch = await self.board.read(
            provider_batch_id,
            lambda: self._retrieve(provider_batch_id),
            self._newest_batches,
            _has_ended,
            self.name,
            fresh_after=fresh_after,
        )
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
            progress=parse_progress(batch) if "request_counts" not in batch else None,
        )

    async def fetch_results(
        self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None
    ) -> BatchUsage | None:
        """Append the output and error files' lines to ``dest`` as the provider wrote them (the file ids from the
        poll that saw the batch end, where this process made it): collection reads each line once, normalising
        the few that are not plain envelopes (:attr:`results_as_sent`). Where ``custom_id``s were sent mapped,
        each line is normalised here, its id mapped back. Returns the batch object's ``usage``, where it has one."""
        batch = self.board.ended(provider_batch_id, _has_ended) or await self._retrieve(provider_batch_id)
        file_ids: list[str] = []
        for key in ("output_file_id", "error_file_id"):
            value = batch.get(key)
            if isinstance(value, str) and value and value not in file_ids:
                file_ids.append(value)
        reverse: dict[str, str] = {}
        if self.wire.maps_custom_ids and input_path is not None:  # without it, lines keep the ids sent (billing)
            reverse = await asyncio.to_thread(_reverse_ids, input_path)
        with dest.open("ab") as out:
            for file_id in file_ids:
                path = f"/files/{quote(file_id, safe='')}/content"

                def keep(line: bytes, number: int, file_id: str = file_id) -> bytes | None:
                    kept = self._output_line(line, number, file_id, provider_batch_id)
                    if kept is None or not reverse:
                        return kept
                    sent = custom_id_of(kept)
                    return with_custom_id(kept, reverse[sent]) if sent in reverse else kept

                await self._download_lines(path, out, keep if reverse else None)
        return parse_batch_usage(batch)

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

    def _auth_headers(self) -> dict[str, str]:
        if self.wire.key_header and self.api_key:
            return {self.wire.key_header: self.api_key}
        return super()._auth_headers()

    async def health(self) -> HealthReport:
        """``GET /models`` (``GET /batches?limit=1`` where models is absent), without retries."""
        return await self._probe(("/models", None), ("/batches", {"limit": 1}))

    # ----------------------------------------------------------------- helpers

    def take_seen_ended(self) -> list[str]:
        """Batches a shared list page showed ended (see :class:`StatusBoard`)."""
        return self.board.take_ended()

    async def _newest_batches(self) -> list[dict[str, Any]]:
        return parse_batch_page(await self._call_json("GET", "/batches", params={"limit": 100})).batches

    async def _retrieve(self, provider_batch_id: str) -> dict[str, Any]:
        return unwrap_batch(await self._call_json("GET", f"/batches/{quote(provider_batch_id, safe='')}"))

    async def _find_batch(
        self, submit_token: str, *, retrying: bool, file_id: str | None = None
    ) -> dict[str, Any] | None:
        """The batch of ``submit_token``: tagged with it, or (where ``metadata`` is dropped) created on the
        file uploaded for it, ``file_id`` when the caller knows it."""
        send = self._call_json if retrying else self._send_json
        if self.wire.keeps_metadata:
            return await self._search("/batches", send, lambda page: find_batch_with_token(page.batches, submit_token))
        upload = file_id or await self._search("/files", send, lambda page: find_upload_of(page.batches, submit_token))
        if upload is None:
            return None
        return await self._search("/batches", send, lambda page: find_batch_on_file(page.batches, upload))

    async def _search(
        self, path: str, send: Callable[..., Awaitable[Any]], match: Callable[[BatchPage], T | None]
    ) -> T | None:
        """The first match in the newest :attr:`max_list_pages` pages of a list endpoint."""
        after: str | None = None
        for _ in range(self.max_list_pages):
            params: dict[str, str | int] = {"limit": 100}
            if after is not None:
                params["after"] = after
            page = parse_batch_page(await send("GET", path, params=params))
            found = match(page)
            if found is not None:
                return found
            if not page.has_more or page.last_id is None or page.last_id == after:
                return None
            after = page.last_id
        log.warning("provider %s: submit token not in the newest %d pages of %s", self.name, self.max_list_pages, path)
        return None

    def _batch_id(self, batch: dict[str, Any], call: str) -> str:
        batch_id = batch.get("id")
        if not isinstance(batch_id, str) or not batch_id:
            raise ProviderUnavailable(f"provider {self.name}: {call} answered a batch without an id")
        return batch_id


def _has_ended(batch: dict[str, Any]) -> bool:
    state = map_batch_status(batch.get("status"))
    return state is not None and state.is_terminal


def _needs_mapped_ids(shard_path: Path) -> bool:
    """Whether a shard holds a ``custom_id`` the provider cannot take as it is; blocking, so run it in a thread."""
    with shard_path.open("rb") as lines:
        return any((found := custom_id_of(raw)) is not None and provider_custom_id(found) != found for raw in lines)


def _with_provider_ids(shard_path: Path, dest: Path) -> Path:
    """``dest``: the shard with every ``custom_id`` the provider cannot take mapped; blocking, so run it in a
    thread."""
    with shard_path.open("rb") as lines, dest.open("wb") as out:
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            custom_id = custom_id_of(line) if line.strip() else None
            if custom_id is not None and (sent := provider_custom_id(custom_id)) != custom_id:
                line = with_custom_id(line, sent)
            out.write(line + b"\n")
    return dest


def _reverse_ids(shard_path: Path) -> dict[str, str]:
    """Sent id -> client id for the shard's mapped ``custom_id``s; blocking, so run it in a thread."""
    with shard_path.open("rb") as lines:
        return reverse_custom_ids(found for raw in lines if (found := custom_id_of(raw)) is not None)
