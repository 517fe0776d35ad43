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
import contextlib
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway import metrics
from gateway.billing import alerts
from gateway.billing.estimate import cost_usd
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point
from gateway.db import billing as billing_db
from gateway.db import repo
from gateway.db import shards as shard_db
from gateway.db.models import Batch, LedgerEntry, Shard, StoredFile, new_id, now_s
from gateway.pipeline import canary, failover
from gateway.pipeline.failover import retryable
from gateway.pipeline.route import iter_custom_ids
from gateway.providers.base import CapabilityNotSupported, ProviderRejected, ProviderUnavailable
from gateway.routing import health
from gateway.routing.placement import batch_hints

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
    :mod:`gateway.pipeline.failover`), writes its ledger row and updates the batch's totals.
    """
    base = f"shards/{shard.batch_id}/{shard.seq:05d}"
    raw_key = raw_result_key(shard)
    # Fan-out shards wrote their results as they ran; batch shards fetch them now.
    raw_available = context.blobs.exists(raw_key) and not shard.provider_batch_id
    if shard.provider_batch_id:
        raw_available = await _fetch_results(context, shard, raw_key, owner)
    output_key, error_key, moved_key = f"{base}.out.jsonl", f"{base}.err.jsonl", failover.moved_key(shard)
    can_move = failover.may_move(stop_reason(batch) is not None, shard, context.settings.routing.max_request_attempts)
    move: failover.Move | None = None
    with (
        context.blobs.local_path(shard.input_key) as input_path,
        context.blobs.writer_path(output_key) as output_tmp,
        context.blobs.writer_path(error_key) as error_tmp,
        context.blobs.writer_path(moved_key) as moved_tmp,
    ):
        with contextlib.ExitStack() as stack:
            raw_path = stack.enter_context(context.blobs.local_path(raw_key)) if raw_available else None
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
    cost = cost_usd(results.usage["input"], results.usage["output"], (shard.input_per_mtok, shard.output_per_mtok))
    list_cost = cost_usd(
        results.usage["input"], results.usage["output"], (shard.list_input_per_mtok, shard.list_output_per_mtok)
    )
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
        session.add(
            LedgerEntry(
                shard_id=shard.id,
                batch_id=batch.id,
                team_id=batch.team_id,
                api_key_id=batch.api_key_id,
                provider=shard.provider,
                model=shard.model,
                provider_model=shard.provider_model,
                mode=shard.mode,
                requests=results.completed,
                input_tokens=results.usage["input"],
                output_tokens=results.usage["output"],
                cached_tokens=results.usage["cached"],
                cost_usd=cost,
                list_cost_usd=list_cost,
            )
        )
        await session.flush()
        await shard_db.refresh_batch_progress(session, shard.batch_id)
        if shard.canary:
            await canary.evaluate(session, context, batch)
        new_alerts = await alerts.after_spend(session, batch.team_id, batch.id, context.settings.billing)
        over_cap = await _cost_cap_reached(session, batch)
        if await shard_db.open_shard_count(session, shard.batch_id) == 0:
            await _to_merge(session, batch.id)
        team = await billing_db.team_name(session, batch.team_id) or batch.team_id
        await session.commit()
    context.blobs.delete(raw_key)
    context.blobs.delete(moved_key)
    _count(shard, results, team, cost, list_cost, move)
    if over_cap or new_alerts:
        context.work_available.set()
    log.info(
        "shard %s collected: %d ok, %d failed, %d moved; $%.6f",
        shard.id,
        results.completed,
        results.failed,
        results.moved,
        cost,
    )


def _count(
    shard: Shard, results: ShardResults, team: str, cost: float, list_cost: float, move: failover.Move | None
) -> None:
    """Metrics of a collected shard, counted once its transaction committed."""
    halted = shard.end_reason in ("cancelled", "expired")
    unanswered = results.failed if halted else 0
    metrics.record_shard_collected(
        provider=shard.provider,
        model=shard.model,
        team=team,
        succeeded=results.completed,
        failed=results.failed - unanswered,
        expired=unanswered if shard.end_reason == "expired" else 0,
        cancelled=unanswered if shard.end_reason == "cancelled" else 0,
        retried=results.moved,
        input_tokens=results.usage["input"],
        output_tokens=results.usage["output"],
        cost_usd=cost,
        list_cost_usd=list_cost,
        turnaround_s=(time.time() - shard.submitted_at) if shard.submitted_at else None,
    )
    if move is not None and move.decision.kind == "failover":
        metrics.record_failover(shard.provider, move.decision.chosen_provider, shard.end_reason or "failed")


def _fail_moved(batch_id: str, moved_path: Path, error_path: Path, message: str, provider: str) -> None:
    """Requests that could be moved nowhere get error lines."""
    with moved_path.open("rb") as source, error_path.open("ab") as err:
        for line in source:
            if line.strip():
                custom_id = _id_decoder.decode(line).custom_id
                err.write(error_line(batch_id, custom_id, "provider_unavailable", message, provider) + b"\n")


async def _cost_cap_reached(session: Any, batch: Batch) -> bool:
    """Stop a batch whose spend reached its own ``max_cost_usd``: it is cancelled with an error saying so."""
    cap = batch_hints(batch).max_cost_usd
    if cap is None:
        return False
    current = await repo.get_batch(session, None, batch.id)
    if current is None or current.cost_usd < cap or current.status != "in_progress":
        return False
    error = {
        "code": "max_cost_reached",
        "message": f"Spend reached the batch's max_cost_usd of ${cap:.4f} (${current.cost_usd:.4f}); "
        "its remaining requests were not run.",
        "param": "metadata.max_cost_usd",
        "line": None,
    }
    # Only the batch row: its shards notice at their next step (touching them here, under the batch
    # lock, would take locks in the opposite order to other workers).
    return await repo.update_batch_if(
        session,
        batch.id,
        expected_status="in_progress",
        values={"status": "cancelling", "cancelling_at": now_s(), "errors": [*(current.errors or []), error]},
    )


async def _fetch_results(context: GatewayContext, shard: Shard, raw_key: str, owner: str) -> bool:
    """Download a provider batch's results; False if none will come (the provider refuses for good,
    or stayed unreachable past ``routing.provider_down_failover_s``: the shard is then abandoned)."""
    assert shard.provider_batch_id
    adapter = context.providers.get(shard.provider)
    try:
        with context.blobs.writer_path(raw_key) as tmp, context.blobs.local_path(shard.input_key) as input_path:
            await adapter.fetch_results(shard.provider_batch_id, tmp, input_path=input_path)
            tmp.touch()
    except (ProviderRejected, CapabilityNotSupported) as exc:
        log.warning("shard %s: %s refused its results: %s", shard.id, shard.provider, exc)
        return False
    except ProviderUnavailable as exc:
        await health.call_failed(context, shard.provider, str(exc))
        since = shard.unavailable_since or time.time()
        if time.time() - since < context.settings.routing.provider_down_failover_s:
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
    final = final_status(batch, shards)
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
    served = Counter({s.provider: s.result_completed for s in shards if s.result_completed})
    if served:
        metrics.record_batch_finished(served.most_common(1)[0][0], time.time() - batch.created_at)
    log.info("batch %s %s", batch.id, final["status"])


def final_status(batch: Batch, shards: list[Shard]) -> dict[str, Any]:
    """How a batch whose shards are all done ends.

    ``cancelled`` after a cancel (or its own cost cap), ``expired`` when its window closed first,
    ``failed`` when no request succeeded because providers failed (with their errors), else
    ``completed``; partial failures are in the error file either way, as with OpenAI.
    """
    now = now_s()
    if batch.status == "cancelling":
        return {"status": "cancelled", "cancelled_at": now}
    if batch_window_closed(batch) and any(s.end_reason == "expired" for s in shards):
        return {"status": "expired", "expired_at": now}
    if any(error.get("code") == "canary_failed" for error in batch.errors or []):
        return {"status": "failed", "failed_at": now}
    provider_failed = [s for s in shards if s.end_reason in failover.PROVIDER_FAILURES and s.result_failed]
    if provider_failed and not any(s.result_completed for s in shards):
        errors = [
            {
                "code": "provider_unavailable",
                "message": s.last_error or f"provider {s.provider} failed",
                "param": None,
                "line": None,
            }
            for s in provider_failed[:10]
        ]
        return {"status": "failed", "failed_at": now, "errors": [*(batch.errors or []), *errors]}
    return {"status": "completed", "completed_at": now}


async def _concat(context: GatewayContext, keys: list[str]) -> Any:
    for key in keys:
        async for chunk in context.blobs.iter_bytes(key):
            yield chunk
