"""Stage 6 of the data path: collect a finished shard, joining its results on ``custom_id``.

``collect_shard`` turns one finished provider batch (or fan-out run) into the shard's success lines
and error lines, with exactly one line for every request of the shard: lines the provider sent for
unknown or already seen ids are dropped; requests that failed retryably or were never answered move
to a follow-up shard (:mod:`gateway.pipeline.failover`) or, when they may not, get an error line
saying why (cancelled, expired, provider failure). The same transaction closes the shard, adds its
follow-up shards, writes its ledger row (:mod:`gateway.pipeline.ledger`), decides a canary
(:mod:`gateway.pipeline.canary`) and, once no shard of the batch is open, hands the batch to the merge
stage. A collect cut short runs again: blob names derive from ids, and its database change is one
transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway import metrics
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, Shard, now_s
from gateway.pipeline import canary, failover, ledger
from gateway.pipeline.failover import retryable
from gateway.pipeline.lifecycle import (
    fanout_parts_prefix,
    gather_parts,
    moved_key,
    raw_result_key,
    shard_base,
    stop_reason,
)
from gateway.pipeline.route import iter_custom_ids
from gateway.providers.base import CapabilityNotSupported, ProviderRejected, ProviderUnavailable
from gateway.routing import health

log = logging.getLogger(__name__)

MISSING_RESULT_ERRORS = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "failed": ("provider_batch_failed", "The provider batch that held this request failed: {detail}"),
    "completed": ("result_missing", "The provider finished its batch without a valid result for this request."),
    "stalled": ("provider_stalled", "The provider batch that held this request made no progress: {detail}"),
    "abandoned": ("provider_unavailable", "The provider that held this request stayed unreachable: {detail}"),
    "rerouted": ("provider_unavailable", "No provider could take this request: {detail}"),
    "canary_failed": ("canary_failed", "This request was not run: {detail}"),
}


class _ResultLine(msgspec.Struct):
    custom_id: Any = None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class _IdLine(msgspec.Struct):
    custom_id: str = ""


_result_decoder = msgspec.json.Decoder(_ResultLine)
_id_decoder = msgspec.json.Decoder(_IdLine)
_encoder = msgspec.json.Encoder()


@dataclass
class ShardResults:
    """Counts and token usage of one collected shard."""

    completed: int = 0
    failed: int = 0
    moved: int = 0
    usage: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0, "cached": 0, "reasoning": 0})


def request_line_id(batch_id: str, custom_id: str) -> str:
    """A stable gateway id for one request's result line."""
    return "batch_req_" + hashlib.sha256(f"{batch_id}\0{custom_id}".encode()).hexdigest()[:24]


def split_results(
    batch_id: str,
    input_path: Path,
    raw_path: Path | None,
    output_path: Path,
    error_path: Path,
    moved_path: Path,
    end_reason: str,
    detail: str | None,
    provider: str,
    can_move: bool,
) -> ShardResults:
    """Write one output, error or moved line per request of the shard; see the module docstring.

    With ``can_move``, requests that failed retryably or were never answered go to ``moved_path``
    (their input lines) instead of the error file. Every output and error line names the
    ``provider`` that answered it.
    """
    pending = dict.fromkeys(iter_custom_ids(input_path))
    moved: set[str] = set()
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
                        continue  # the provider never ran it: handled below with the pending ones
                    del pending[item.custom_id]
                    status = (item.response or {}).get("status_code")
                    ok = item.error is None and isinstance(status, int) and 200 <= status < 300
                    if not ok and can_move and retryable(status, item.error):
                        moved.add(item.custom_id)
                        continue
                    record = {
                        "id": request_line_id(batch_id, item.custom_id),
                        "custom_id": item.custom_id,
                        "response": item.response,
                        "error": item.error,
                        "provider": provider,
                    }
                    if ok:
                        results.completed += 1
                        _add_usage(results.usage, (item.response or {}).get("body"))
                        out.write(_encoder.encode(record) + b"\n")
                    else:
                        results.failed += 1
                        err.write(_encoder.encode(record) + b"\n")
        code, message = MISSING_RESULT_ERRORS.get(end_reason, MISSING_RESULT_ERRORS["failed"])
        message = message.format(detail=detail or "no detail given")
        for custom_id in pending:
            if can_move:
                moved.add(custom_id)
                continue
            results.failed += 1
            err.write(error_line(batch_id, custom_id, code, message, provider) + b"\n")
    results.moved = len(moved)
    with input_path.open("rb") as source, moved_path.open("wb") as sink:
        if moved:
            for line in source:
                if line.strip() and _id_decoder.decode(line).custom_id in moved:
                    sink.write(line if line.endswith(b"\n") else line + b"\n")
    return results


def error_line(batch_id: str, custom_id: str, code: str, message: str, provider: str | None) -> bytes:
    """An error-file line for a request that got no answer."""
    record = {
        "id": request_line_id(batch_id, custom_id),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
        "provider": provider,
    }
    return _encoder.encode(record)


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
    """Shard entry for state ``collecting``: fetch results, split them, move what did not finish, close.

    One transaction closes the shard, adds its follow-up shards and routing decision (see
    :mod:`gateway.pipeline.failover`), records its spend, decides a canary, and hands the batch to the
    merge stage once none of its shards is open.
    """
    base = shard_base(shard)
    raw_key = raw_result_key(shard)
    if shard.provider_batch_id:
        raw_available = await _fetch_results(context, batch, shard, raw_key, owner)
    else:
        # Fan-out shards published their answers in parts as they ran.
        async with context.blobs.staged(raw_key) as raw_tmp:
            raw_available = await gather_parts(context.blobs, fanout_parts_prefix(shard), raw_tmp) > 0
    output_key, error_key, moved_blob = f"{base}.out.jsonl", f"{base}.err.jsonl", moved_key(shard)
    can_move = failover.may_move(stop_reason(batch) is not None, shard, context.settings.routing.max_request_attempts)
    move: failover.Move | None = None
    async with (
        context.blobs.local_copy(shard.input_key) as input_path,
        context.blobs.staged(output_key) as output_tmp,
        context.blobs.staged(error_key) as error_tmp,
        context.blobs.staged(moved_blob) as moved_tmp,
    ):
        async with contextlib.AsyncExitStack() as stack:
            raw_path = await stack.enter_async_context(context.blobs.local_copy(raw_key)) if raw_available else None
            results = await asyncio.to_thread(
                split_results,
                batch.id,
                input_path,
                raw_path,
                output_tmp,
                error_tmp,
                moved_tmp,
                shard.end_reason or "completed",
                shard.last_error,
                shard.provider,
                can_move,
            )
        if results.moved:
            move = await failover.plan_move(context, batch, shard, moved_tmp, results.moved)
            if move.error is not None:
                shard.last_error = move.error
                await asyncio.to_thread(_fail_moved, batch.id, moved_tmp, error_tmp, move.error, shard.provider)
                results.failed += results.moved
                results.moved = 0
        crash_point("collect.after_split")
    async with context.sessions() as session:
        saved = await shard_db.save_shard(
            session,
            shard,
            owner,
            state="done",
            result_completed=results.completed,
            result_failed=results.failed,
            result_moved=results.moved,
            progress_completed=0,
            progress_failed=0,
            input_tokens=results.usage["input"],
            output_tokens=results.usage["output"],
            cached_tokens=results.usage["cached"],
            reasoning_tokens=results.usage["reasoning"],
            output_key=output_key,
            error_key=error_key,
            finished_at=time.time(),
            end_reason=shard.end_reason,
            last_error=shard.last_error,
        )
        if not saved:
            await session.rollback()
            return
        await shard_db.lock_batch(session, shard.batch_id)
        if move is not None:
            session.add(move.decision)
            for child in move.shards(batch.id, shard, await shard_db.next_seq(session, batch.id)):
                session.add(child)
        spend = await ledger.record(session, context, batch, shard, results.completed, results.usage)
        if shard.canary:
            await canary.evaluate(session, context, batch)
        if await shard_db.open_shard_count(session, shard.batch_id) == 0:
            await _to_merge(session, batch.id)
        await session.commit()
    await context.blobs.delete(raw_key)
    await context.blobs.delete(moved_blob)
    await context.blobs.delete_prefix(fanout_parts_prefix(shard))
    ledger.count(shard, spend, results.completed, results.failed, results.moved, results.usage)
    if move is not None and move.decision.kind == "failover":
        metrics.record_failover(shard.provider, move.decision.chosen_provider, shard.end_reason or "failed")
    if spend.wake_workers:
        context.work_available.set()
    log.info(
        "shard %s collected: %d ok, %d failed, %d moved; $%.6f",
        shard.id,
        results.completed,
        results.failed,
        results.moved,
        spend.cost_usd,
    )


def _fail_moved(batch_id: str, moved_path: Path, error_path: Path, message: str, provider: str) -> None:
    """Requests that could be moved nowhere get error lines."""
    with moved_path.open("rb") as source, error_path.open("ab") as err:
        for line in source:
            if line.strip():
                custom_id = _id_decoder.decode(line).custom_id
                err.write(error_line(batch_id, custom_id, "provider_unavailable", message, provider) + b"\n")


async def _fetch_results(context: GatewayContext, batch: Batch, shard: Shard, raw_key: str, owner: str) -> bool:
    """Download a provider batch's results; False if none will come (the provider refuses for good,
    or stayed unreachable past ``routing.provider_down_failover_s`` while another provider could take the
    requests: the shard is then abandoned)."""
    assert shard.provider_batch_id
    adapter = context.providers.get(shard.provider)
    try:
        async with context.blobs.staged(raw_key) as tmp, context.blobs.local_copy(shard.input_key) as input_path:
            await adapter.fetch_results(shard.provider_batch_id, tmp, input_path=input_path)
    except (ProviderRejected, CapabilityNotSupported) as exc:
        log.warning("shard %s: %s refused its results: %s", shard.id, shard.provider, exc)
        return False
    except ProviderUnavailable as exc:
        await health.call_failed(context, shard.provider, exc)
        since = shard.unavailable_since or time.time()
        down_too_long = time.time() - since >= context.settings.routing.provider_down_failover_s
        if not down_too_long or not await failover.give_up_on_provider(context, batch, shard):
            async with context.sessions() as session:
                await shard_db.save_shard(session, shard, owner, unavailable_since=since)
                await session.commit()
            raise  # the step is retried shortly
        shard.end_reason, shard.last_error = "abandoned", f"{shard.provider} unreachable for its results: {exc}"
        return False
    return True


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
