"""Adapter for Mistral's batch API: ``/files`` uploads and ``/batch/jobs`` (``base_url`` ends in ``/v1``).

A shard's OpenAI lines become Mistral's ``{"custom_id", "body"}`` lines (:mod:`gateway.translate.mistral`);
shards of up to :attr:`MistralBatchAdapter.inline_max_requests` requests go inline in the create call, larger
ones as an uploaded file. Each job carries the gateway's submit token in ``metadata`` and a ``timeout_hours``
that fits what is left of the client's window. Output and error files hold OpenAI's output envelope.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import quote

from gateway import jsondepth
from gateway.providers.base import (
    HealthReport,
    PollResult,
    ProviderBatchState,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    UnsupportedEndpoint,
)
from gateway.providers.http import HttpAdapter, Multipart
from gateway.providers.jsonl import encode_line
from gateway.providers.mistral_wire import (
    INLINE_LIMIT,
    JOB_STATUS,
    parse_job,
    read_requests,
    timeout_hours,
    translate_shard,
)
from gateway.providers.openai_wire import (
    find_batch_with_token,
    parse_batch_page,
    rejected_line,
    submit_metadata,
)
from gateway.translate.mistral import CHAT, EMBEDDINGS

log = logging.getLogger(__name__)

JOBS = "/batch/jobs"
TARGET = "a Mistral model"


@dataclass
class MistralBatchAdapter(HttpAdapter):
    """A provider reached through Mistral's batch jobs API."""

    kind: ClassVar[str] = "mistral"
    inline_max_requests: int = 100
    """Shards of at most this many requests go inline in the create call (Mistral takes fewer than 10,000)."""
    max_list_pages: int = 20
    """Pages of ``GET /batch/jobs`` (100 each, newest first) searched by :meth:`find_submitted`."""

    def serves(self, endpoint: str) -> bool:
        """Chat and embeddings."""
        return endpoint in (CHAT, EMBEDDINGS)

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Translate the shard, then create a job on it, inline or on an uploaded file."""
        if not self.serves(shard.endpoint):
            raise UnsupportedEndpoint(f"provider {self.name}: Mistral batches here serve {CHAT} and {EMBEDDINGS}")
        body: dict[str, Any] = {
            "endpoint": shard.endpoint,
            "model": shard.provider_model,
            "metadata": submit_metadata(shard.submit_token, shard.shard_id),
            "timeout_hours": timeout_hours(shard.window_s),
        }
        file_id: str | None = None
        with tempfile.TemporaryDirectory(prefix="batchgw-mistral-") as folder:
            lines = Path(folder) / f"batchgw-{shard.submit_token}.jsonl"
            translated = await asyncio.to_thread(translate_shard, shard.input_path, shard.endpoint, lines)
            if not translated.sent:
                first = translated.rejected[0][1] if translated.rejected else "the shard is empty"
                raise ProviderRejected(f"provider {self.name}: no request can be sent to Mistral: {first}", 400)
            if len(translated.sent) <= min(self.inline_max_requests, INLINE_LIMIT - 1):
                body["requests"] = await asyncio.to_thread(read_requests, lines)
            else:
                upload = Multipart(lines, lines.name, "application/jsonl", {"purpose": "batch"})
                uploaded = await self._call_json("POST", "/files", multipart=upload)
                file_id = uploaded.get("id") if isinstance(uploaded, dict) else None
                if not isinstance(file_id, str) or not file_id:
                    raise ProviderUnavailable(f"provider {self.name}: POST /files answered without a file id")
                body["input_files"] = [file_id]

            async def create() -> dict[str, Any]:
                return self._job(await self._send_json("POST", JOBS, json=body), "POST /batch/jobs")

            async def find() -> dict[str, Any] | None:
                return await self._find_job(shard.submit_token, retrying=False)

            job = await self._create_once(shard, create, find)
        return SubmitResult(provider_batch_id=job["id"], provider_file_id=file_id)

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        """The job tagged with ``submit_token`` among the newest :attr:`max_list_pages` pages."""
        job = await self._find_job(submit_token, retrying=True)
        if job is None:
            return None
        files = job.get("input_files")
        file_id = files[0] if isinstance(files, list) and files and isinstance(files[0], str) else None
        return SubmitResult(provider_batch_id=job["id"], provider_file_id=file_id)

    async def poll(self, provider_batch_id: str, *, fresh_after: float | None = None) -> PollResult:
        """Read the job's status and counts."""
        return self._poll_result(*parse_job(await self._retrieve(provider_batch_id)))

    async def fetch_results(self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None) -> None:
        """Append the output and error files' lines to ``dest`` (or, for a job that ran requests but names
        neither file, its inline ``outputs``), then a 400 line per request never sent."""
        job = await self._retrieve(provider_batch_id)
        endpoint = job.get("endpoint") if isinstance(job.get("endpoint"), str) else CHAT
        shard = await asyncio.to_thread(translate_shard, input_path, str(endpoint)) if input_path else None
        named = [job.get(key) for key in ("output_file", "error_file")]
        files: list[str] = [file_id for file_id in named if isinstance(file_id, str) and file_id]
        with dest.open("ab") as out:
            for file_id in files:

                def keep(line: bytes, number: int, file_id: str = file_id) -> bytes | None:
                    return self._output_line(line, number, file_id, provider_batch_id)

                await self._download_lines(f"/files/{quote(file_id, safe='')}/content", out, keep)
            if not files and _ran(job):
                # Both files may be null (the API's schema allows it): the results are then read inline.
                await self._write_inline_outputs(provider_batch_id, out)
            for custom_id, problem in shard.rejected if shard else []:
                out.write(encode_line(rejected_line(custom_id, problem, batch_id=provider_batch_id, target=TARGET)))

    async def cancel(self, provider_batch_id: str) -> None:
        """Ask for cancellation; a refusal because the job already ended (or is cancelling) is fine."""
        try:
            await self._call_json("POST", f"{JOBS}/{quote(provider_batch_id, safe='')}/cancel")
        except ProviderRejected:
            status = (await self._retrieve(provider_batch_id)).get("status")
            state = JOB_STATUS.get(status) if isinstance(status, str) else None
            if state is None or not (state.is_terminal or state is ProviderBatchState.CANCELLING):
                raise
            log.info("provider %s: job %s is %s, cancel skipped", self.name, provider_batch_id, status)

    async def health(self) -> HealthReport:
        """``GET /models`` (``GET /batch/jobs?page_size=1`` where models is absent), without retries."""
        return await self._probe(("/models", None), (JOBS, {"page_size": 1}))

    # ----------------------------------------------------------------- helpers

    async def _write_inline_outputs(self, provider_batch_id: str, out: IO[bytes]) -> None:
        """Append the ``outputs`` of ``GET /batch/jobs/{id}?inline=true`` (output-line shaped) to ``out``."""
        path = f"{JOBS}/{quote(provider_batch_id, safe='')}"
        job = self._job(await self._call_json("GET", path, params={"inline": "true"}), "GET job inline")
        outputs = job.get("outputs")
        if not isinstance(outputs, list):
            raise ProviderUnavailable(f"provider {self.name}: job {provider_batch_id} ran requests but names no "
                                      "result file and answers no inline outputs")  # fmt: skip
        for number, item in enumerate(outputs, 1):
            line = encode_line(item)
            if jsondepth.TOO_DEEP in line:  # cut from an answer too deep to read whole: it runs again
                log.warning("provider %s: skipped inline output %d of job %s: nested too deeply to read",
                            self.name, number, provider_batch_id)  # fmt: skip
                continue
            kept = self._output_line(line, number, "inline outputs", provider_batch_id)
            if kept is not None:
                out.write(kept + b"\n")

    async def _retrieve(self, provider_batch_id: str) -> dict[str, Any]:
        return self._job(await self._call_json("GET", f"{JOBS}/{quote(provider_batch_id, safe='')}"), "GET job")

    def _job(self, answer: object, call: str) -> dict[str, Any]:
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), str) or not answer["id"]:
            raise ProviderUnavailable(f"provider {self.name}: {call} answered without a job id")
        return answer

    async def _find_job(self, submit_token: str, *, retrying: bool) -> dict[str, Any] | None:
        send = self._call_json if retrying else self._send_json
        seen = 0
        for page in range(self.max_list_pages):
            params: dict[str, str | int] = {"page": page, "page_size": 100, "order_by": "-created"}
            answer = await send("GET", JOBS, params=params)
            jobs = parse_batch_page(answer).batches
            found = find_batch_with_token(jobs, submit_token)
            if found is not None:
                return found
            seen += len(jobs)
            total = answer.get("total") if isinstance(answer, dict) else None
            # ``total`` ends the search; without it, a short page does (a server may page by fewer than 100).
            if not jobs or (seen >= total if isinstance(total, int) else len(jobs) < 100):
                return None
        log.warning("provider %s: submit token not in the newest %d job pages", self.name, self.max_list_pages)
        return None


def _ran(job: dict[str, Any]) -> bool:
    """Whether a job reports requests that succeeded or failed."""
    counts = (job.get("succeeded_requests"), job.get("failed_requests"))
    return any(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in counts)
