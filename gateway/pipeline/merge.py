"""Stage 6 of the data path: join results on ``custom_id`` and build the client's files.

``collect_shard`` turns one finished provider batch into two blobs: the shard's success lines and
its error lines, with exactly one line for every request of the shard. Lines the provider sent
for unknown or already seen ids are dropped; requests it never answered get an error line saying
why (cancelled, expired, provider failure). ``run`` then concatenates the shards' blobs into the
batch's output and error files. Both steps can be rerun after a crash: blob names derive from
ids, and each step's database change is a single transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.context import GatewayContext
from gateway.crashpoints import crash_point
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, Shard, StoredFile, new_id, now_s
from gateway.pipeline.route import iter_custom_ids
from gateway.providers.base import CapabilityNotSupported, ProviderRejected

log = logging.getLogger(__name__)

MISSING_RESULT_ERRORS = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "failed": ("provider_batch_failed", "The provider batch that held this request failed: {detail}"),
    "completed": ("result_missing", "The provider finished its batch without a valid result for this request."),
}


class _ResultLine(msgspec.Struct):
    custom_id: Any = None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


_result_decoder = msgspec.json.Decoder(_ResultLine)
_encoder = msgspec.json.Encoder()


@dataclass
class ShardResults:
    """Counts and token usage of one collected shard."""

    completed: int = 0
    failed: int = 0
    usage: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0, "cached": 0, "reasoning": 0})


def raw_result_key(shard: Shard) -> str:
    """Blob holding a shard's results as the provider gave them (before the join)."""
    return f"shards/{shard.batch_id}/{shard.seq:05d}.raw.jsonl"


def batch_window_closed(batch: Batch) -> bool:
    """True once the batch's completion window has passed."""
    return batch.expires_at is not None and time.time() >= batch.expires_at


def stop_reason(batch: Batch) -> str | None:
    """Why the batch's unfinished work must stop (``cancelled``, ``expired``), or None to go on."""
    if batch.status == "cancelling":
        return "cancelled"
    return "expired" if batch_window_closed(batch) else None


def request_line_id(batch_id: str, custom_id: str) -> str:
    """A stable gateway id for one request's result line."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).hexdigest()[:24]


def split_results(
    batch_id: str,
    input_path: Path,
    raw_path: Path | None,
    output_path: Path,
    error_path: Path,
    end_reason: str,
    detail: str | None,
) -> ShardResults:
    """Write one output or error line per request of the shard; see the module docstring."""
    pending = dict.fromkeys(iter_custom_ids(input_path))
    results = ShardResults()
    with output_path.open("wb") as out, error_path.open("wb") as err:
        if raw_path is not None and raw_path.exists():
            with raw_path.open("rb") as raw:
                for number, line in enumerate(raw, 1):
                    try:
                        item = _result_decoder.decode(line)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        log.warning("skipping an unreadable result line %d of batch %s", number, batch_id)
                        continue
                    if not isinstance(item.custom_id, str) or item.custom_id not in pending:
                        continue
                    if item.response is None and _unexecuted(item.error):
                        continue  # the provider never ran it: reported below with the gateway's reason
                    del pending[item.custom_id]
                    record = {
                        "id": request_line_id(batch_id, item.custom_id),
                        "custom_id": item.custom_id,
                        "response": item.response,
                        "error": item.error,
                    }
                    status = (item.response or {}).get("status_code")
                    if item.error is None and isinstance(status, int) and 200 <= status < 300:
                        results.completed += 1
                        _add_usage(results.usage, (item.response or {}).get("body"))
                        out.write(_encoder.encode(record) + b"\n")
                    else:
                        results.failed += 1
                        err.write(_encoder.encode(record) + b"\n")
        code, message = MISSING_RESULT_ERRORS[end_reason]
        message = message.format(detail=detail or "no detail given")
        for custom_id in pending:
            results.failed += 1
            record = {
                "id": request_line_id(batch_id, custom_id),
                "custom_id": custom_id,
                "response": None,
                "error": {"code": code, "message": message},
            }
            err.write(_encoder.encode(record) + b"\n")
    return results


UNEXECUTED_CODES = frozenset({"batch_cancelled", "batch_expired"})


def _unexecuted(error: dict[str, Any] | None) -> bool:
    return isinstance(error, dict) and error.get("code") in UNEXECUTED_CODES


def _add_usage(totals: dict[str, int], body: Any) -> None:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return
    totals["input"] += int(usage.get("prompt_tokens") or 0)
    totals["output"] += int(usage.get("completion_tokens") or 0)
    totals["cached"] += int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    totals["reasoning"] += int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)


async def end_shard(
    context: GatewayContext, shard: Shard, batch: Batch, owner: str, *, reason: str, error: str | None = None
) -> None:
    """Finish a shard that will get no (more) provider results, then collect what it has."""
    async with context.sessions() as session:
        await shard_db.save_shard(
            session, shard, owner, state="collecting", end_reason=reason, last_error=error or shard.last_error
        )
        await session.commit()
    await collect_shard(context, shard, batch, owner)


async def collect_shard(context: GatewayContext, shard: Shard, batch: Batch, owner: str) -> None:
    """Shard entry for state ``collecting``: fetch results, split them, and close the shard."""
    base = f"shards/{shard.batch_id}/{shard.seq:05d}"
    raw_key = raw_result_key(shard)
    # Fan-out shards wrote their results as they ran; batch shards fetch them now.
    raw_available = context.blobs.exists(raw_key) and not shard.provider_batch_id
    if shard.provider_batch_id:
        raw_available = await _fetch_results(context, shard, raw_key)
    output_key, error_key = f"{base}.out.jsonl", f"{base}.err.jsonl"
    with (
        context.blobs.local_path(shard.input_key) as input_path,
        context.blobs.writer_path(output_key) as output_tmp,
        context.blobs.writer_path(error_key) as error_tmp,
    ):
        if raw_available:
            with context.blobs.local_path(raw_key) as raw_path:
                results = await _split(batch, shard, input_path, raw_path, output_tmp, error_tmp)
        else:
            results = await _split(batch, shard, input_path, None, output_tmp, error_tmp)
        crash_point("collect.after_split")
    async with context.sessions() as session:
        saved = await shard_db.save_shard(
            session,
            shard,
            owner,
            state="done",
            result_completed=results.completed,
            result_failed=results.failed,
            progress_completed=0,
            progress_failed=0,
            input_tokens=results.usage["input"],
            output_tokens=results.usage["output"],
            cached_tokens=results.usage["cached"],
            reasoning_tokens=results.usage["reasoning"],
            output_key=output_key,
            error_key=error_key,
            finished_at=time.time(),
        )
        if not saved:
            await session.rollback()
            return
        await shard_db.lock_batch(session, shard.batch_id)
        await shard_db.refresh_batch_progress(session, shard.batch_id)
        if await shard_db.open_shard_count(session, shard.batch_id) == 0:
            await _to_merge(session, batch.id)
        await session.commit()
    context.blobs.delete(raw_key)
    log.info("shard %s collected: %d ok, %d failed", shard.id, results.completed, results.failed)


async def _fetch_results(context: GatewayContext, shard: Shard, raw_key: str) -> bool:
    """Download a provider batch's results; False if the provider refuses for good (then none come)."""
    assert shard.provider_batch_id
    adapter = context.providers.get(shard.provider)
    try:
        with context.blobs.writer_path(raw_key) as tmp, context.blobs.local_path(shard.input_key) as input_path:
            await adapter.fetch_results(shard.provider_batch_id, tmp, input_path=input_path)
            tmp.touch()
    except (ProviderRejected, CapabilityNotSupported) as exc:
        # Transient failures propagate and the step is retried; a refusal will not change.
        log.warning("shard %s: %s refused its results: %s", shard.id, shard.provider, exc)
        return False
    return True


async def _split(
    batch: Batch, shard: Shard, input_path: Path, raw_path: Path | None, output_tmp: Path, error_tmp: Path
) -> ShardResults:
    return await asyncio.to_thread(
        split_results,
        batch.id,
        input_path,
        raw_path,
        output_tmp,
        error_tmp,
        shard.end_reason or "completed",
        shard.last_error,
    )


async def _to_merge(session: Any, batch_id: str) -> None:
    """All shards are done: the batch goes to ``finalizing`` (unless cancelling) and to the merge stage."""
    now = now_s()
    if not await repo.update_batch_if(
        session,
        batch_id,
        expected_status="in_progress",
        values={"status": "finalizing", "finalizing_at": now, "stage": "merge"},
    ):
        await repo.update_batch_if(session, batch_id, expected_status="cancelling", values={"stage": "merge"})


async def run(context: GatewayContext, batch: Batch) -> None:
    """Batch entry for stage ``merge``: write the output and error files and end the batch."""
    async with context.sessions() as session:
        shards = list(await shard_db.batch_shards(session, batch.id))
    files: dict[str, StoredFile] = {}
    for kind, attr in (("output", "output_key"), ("error", "error_key")):
        keys = [getattr(s, attr) for s in shards if getattr(s, attr) and context.blobs.size(getattr(s, attr)) > 0]
        if not keys:
            continue
        file_id = new_id("file-")
        # Named after the batch, not the new id: a merge cut short and run again overwrites its blobs.
        storage_key = f"outputs/{batch.id}/{kind}.jsonl"
        size = await context.blobs.write_stream(storage_key, _concat(context, keys))
        files[kind] = StoredFile(
            id=file_id,
            team_id=batch.team_id,
            filename=f"{batch.id}_{kind}.jsonl",
            purpose="batch_output",
            bytes=size,
            storage_key=storage_key,
        )
    crash_point("merge.after_files_written")
    now = now_s()
    if batch.status == "cancelling":
        final = {"status": "cancelled", "cancelled_at": now}
    elif any(s.end_reason == "expired" for s in shards):
        final = {"status": "expired", "expired_at": now}
    else:
        final = {"status": "completed", "completed_at": now}
    async with context.sessions() as session:
        for row in files.values():
            session.add(row)
        changed = await repo.update_batch_if(
            session,
            batch.id,
            expected_status=batch.status,
            values={
                **final,
                "stage": "done",
                "output_file_id": files["output"].id if "output" in files else None,
                "error_file_id": files["error"].id if "error" in files else None,
            },
        )
        if not changed:
            await session.rollback()
            for row in files.values():
                context.blobs.delete(row.storage_key)
            return
        await session.commit()
    for shard in shards:
        for key in (shard.output_key, shard.error_key):
            if key:
                context.blobs.delete(key)
    log.info("batch %s %s", batch.id, final["status"])


async def _concat(context: GatewayContext, keys: list[str]) -> Any:
    for key in keys:
        async for chunk in context.blobs.iter_bytes(key):
            yield chunk
