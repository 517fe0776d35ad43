"""Stage 3 of the data path: choose where each request runs and cut the batch into shards.

A shard is one provider batch: lines of one model, for one provider, within that provider's
request and byte limits. Shard inputs are written to the blob store first (under names derived
from the batch id, so a rerun overwrites them), then the shard rows are inserted and the batch
moves on, in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.models import Batch, Shard, now_s
from gateway.pipeline.validate import finish_unstarted, iter_lines
from gateway.providers.config import ProviderLimits
from gateway.storage import BlobStore

log = logging.getLogger(__name__)

BYTES_PER_TOKEN_ESTIMATE = 4
"""Input tokens are estimated from request bytes until the spend estimator replaces this."""


class _Head(msgspec.Struct):
    body: msgspec.Raw = msgspec.Raw(b"")


class _BodyModel(msgspec.Struct):
    model: str = ""


_head_decoder = msgspec.json.Decoder(_Head)
_model_decoder = msgspec.json.Decoder(_BodyModel)


@dataclass(frozen=True)
class Placement:
    """Where requests for one model go."""

    provider: str
    provider_model: str
    limits: ProviderLimits


@dataclass
class ShardPlan:
    """A shard being written."""

    seq: int
    model: str
    placement: Placement
    key: str
    handle: IO[bytes]
    request_count: int = 0
    byte_size: int = 0


@dataclass
class RoutePlan:
    """The shards a batch was cut into."""

    shards: list[ShardPlan] = field(default_factory=list)


class NoProviderForModel(LookupError):
    """No configured provider serves a model the batch asks for."""


def shard_key(batch_id: str, seq: int) -> str:
    """Blob name of a shard's input."""
    return f"shards/{batch_id}/{seq:05d}.in.jsonl"


def split_into_shards(
    input_path: Path,
    batch_id: str,
    placements: dict[str, Placement],
    blobs: BlobStore,
    max_line_bytes: int,
) -> list[ShardPlan]:
    """Write the shard inputs of a batch; rewrites ``body.model`` to the provider's model id."""
    done: list[ShardPlan] = []
    open_by_model: dict[str, ShardPlan] = {}
    with contextlib.ExitStack() as stack:

        def new_shard(model: str) -> ShardPlan:
            seq = len(done) + len(open_by_model)
            key = shard_key(batch_id, seq)
            path = stack.enter_context(blobs.writer_path(key))
            handle = stack.enter_context(path.open("wb"))
            return ShardPlan(seq=seq, model=model, placement=placements[model], key=key, handle=handle)

        for _, raw in iter_lines(input_path, max_line_bytes):
            if raw is None or not raw.strip():
                continue
            line = raw.rstrip(b"\r")
            model = _model_decoder.decode(_head_decoder.decode(line).body).model
            if model not in placements:
                raise NoProviderForModel(model)
            placement = placements[model]
            if placement.provider_model != model:
                line = _rewrite_model(line, placement.provider_model)
            size = len(line) + 1
            shard = open_by_model.get(model)
            limits = placement.limits
            if shard is not None and (
                shard.request_count >= limits.max_requests_per_batch
                or shard.byte_size + size > limits.max_bytes_per_batch
            ):
                done.append(open_by_model.pop(model))
                shard = None
            if shard is None:
                shard = open_by_model[model] = new_shard(model)
            shard.handle.write(line + b"\n")
            shard.request_count += 1
            shard.byte_size += size
        done.extend(open_by_model.values())
        for shard in done:
            shard.handle.close()
    return sorted(done, key=lambda s: s.seq)


def _rewrite_model(line: bytes, provider_model: str) -> bytes:
    request: dict[str, Any] = msgspec.json.decode(line)
    request["body"]["model"] = provider_model
    return msgspec.json.encode(request)


def iter_custom_ids(path: Path) -> Iterator[str]:
    """The custom_ids of a shard input, in order."""

    class _Id(msgspec.Struct):
        custom_id: str

    decoder = msgspec.json.Decoder(_Id)
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield decoder.decode(line).custom_id


async def run(context: GatewayContext, batch: Batch) -> None:
    """Stage entry: route a validated batch and create its shards."""
    if batch.status == "cancelling":
        await finish_unstarted(context, batch, status="cancelled")
        return
    registry = context.providers
    placements = {
        model: Placement(adapter.name, registry.provider_model(adapter.name, model), adapter.config.limits)
        for model in registry.models()
        for adapter in [registry.for_model(model)]
    }
    async with context.sessions() as session:
        input_file = await repo.get_file(session, batch.team_id, batch.input_file_id)
    if input_file is None:
        await _fail(context, batch, "input_file_missing", f"The input file '{batch.input_file_id}' was deleted.")
        return
    try:
        with context.blobs.local_path(input_file.storage_key) as path:
            plans = await asyncio.to_thread(
                split_into_shards, path, batch.id, placements, context.blobs, context.settings.limits.max_line_bytes
            )
    except NoProviderForModel as exc:
        known = ", ".join(sorted(placements)) or "none configured"
        await _fail(
            context, batch, "model_not_found", f"No configured provider serves model '{exc.args[0]}'. Known: {known}."
        )
        return
    async with context.sessions() as session:
        for plan in plans:
            session.add(
                Shard(
                    batch_id=batch.id,
                    seq=plan.seq,
                    provider=plan.placement.provider,
                    model=plan.model,
                    provider_model=plan.placement.provider_model,
                    request_count=plan.request_count,
                    byte_size=plan.byte_size,
                    estimated_input_tokens=plan.byte_size // BYTES_PER_TOKEN_ESTIMATE,
                    input_key=plan.key,
                )
            )
        changed = await repo.update_batch_if(session, batch.id, expected_status="in_progress", values={"stage": "run"})
        if not changed:
            await session.rollback()
            return
        await session.commit()
    log.info("batch %s routed into %d shards", batch.id, len(plans))


async def _fail(context: GatewayContext, batch: Batch, code: str, message: str) -> None:
    async with context.sessions() as session:
        await repo.update_batch_if(
            session,
            batch.id,
            expected_status=batch.status,
            values={
                "status": "failed",
                "failed_at": now_s(),
                "stage": "done",
                "errors": [{"code": code, "message": message, "param": None, "line": None}],
            },
        )
        await session.commit()
