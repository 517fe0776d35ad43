"""Stage 3 of the data path: choose where each request runs and cut the batch into shards.

The file is read once to estimate each model's requests and tokens (:mod:`gateway.billing.estimate`,
learned from the team's past requests where it has them); the batch's policy then ranks the offers of each model
(:mod:`gateway.routing.placement`), and every decision is stored with its candidates and reason.
A second pass writes the shard inputs: lines of one model for one provider, within that provider's
request and byte limits, ``body.model`` rewritten to the provider's model id; a policy that splits
a model across providers gives each its share of the lines.

Shard inputs are written to the blob store first (under names derived from the batch id, so a rerun
overwrites them), then the shard rows, the decisions, the budget reservation and the batch's move
to ``run`` are committed in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from gateway.billing import budgets
from gateway.billing.estimate import Estimator, cache_rates, cost_usd, estimate_file, team_estimator
from gateway.context import GatewayContext
from gateway.crashpoints import crash_point, freeze_point
from gateway.db import repo
from gateway.db.leases import Lease
from gateway.db.models import Batch, RoutingDecision, Shard
from gateway.db.unit_of_work import Rollback, reading, transaction
from gateway.pipeline.lifecycle import end_unstarted, fail_batch, shard_input_key
from gateway.providers.config import ProviderLimits
from gateway.routing.offers import UnknownModel
from gateway.routing.placement import Choice, NoUsableProvider, rank, split_shares
from gateway.storage import BlobStore
from gateway.storage.local import scratch_file
from router_policies.base import PolicyError

log = logging.getLogger(__name__)


class _Head(msgspec.Struct):
    custom_id: str = ""
    body: msgspec.Raw = msgspec.Raw(b"")


class _BodyModel(msgspec.Struct):
    model: str = ""


_head_decoder = msgspec.json.Decoder(_Head)
_model_decoder = msgspec.json.Decoder(_BodyModel)


@dataclass(frozen=True)
class Placement:
    """Where (a share of) the requests of one model go, and at what price."""

    provider: str
    provider_model: str
    model: str
    """The logical model."""
    mode: str
    limits: ProviderLimits
    paid_rates: tuple[float, float]
    list_rates: tuple[float, float]
    cache_rates: tuple[float | None, float | None] = (None, None)
    """USD per MTok of cached and cache-write input (None: the input rate)."""
    pinned: bool = False
    start_at: float | None = None
    share: float = 1.0

    @classmethod
    def of(cls, context: GatewayContext, choice: Choice, pinned: bool, baseline: tuple[float, float]) -> Placement:
        """The placement for a ranked choice; ``baseline`` is the synchronous rates savings are measured against."""
        offer = choice.candidate.offer
        start = choice.candidate.start_at
        return cls(
            provider=offer.provider,
            provider_model=offer.provider_model,
            model=offer.model,
            mode=offer.mode,
            limits=context.providers.get(offer.provider).config.limits,
            paid_rates=choice.priced.paid_rates,
            list_rates=baseline,
            cache_rates=cache_rates(choice.priced.source, offer.mode == "batch"),
            pinned=pinned,
            start_at=start.timestamp() if start else None,
            share=choice.candidate.share,
        )


@dataclass
class ShardPlan:
    """A shard being written."""

    seq: int
    placement: Placement
    key: str
    path: Path
    """The shard input being written, in the blob store's scratch folder until :func:`publish_shards`."""
    handle: IO[bytes]
    canary: bool = False
    request_count: int = 0
    byte_size: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    expected_output: float = 0.0
    """Output tokens expected, before rounding into ``output_tokens``."""

    def shard(self, batch_id: str, generation: int = 0, parent_id: str | None = None, held: bool = False) -> Shard:
        """The row for this plan; ``held`` shards wait for their batch's canary."""
        place = self.placement
        return Shard(
            state="held" if held else "queued",
            canary=self.canary,
            batch_id=batch_id,
            seq=self.seq,
            provider=place.provider,
            model=place.model,
            provider_model=place.provider_model,
            mode=place.mode,
            pinned=place.pinned,
            generation=generation,
            parent_id=parent_id,
            request_count=self.request_count,
            byte_size=self.byte_size,
            estimated_input_tokens=self.input_tokens,
            estimated_output_tokens=self.output_tokens,
            input_per_mtok=place.paid_rates[0],
            output_per_mtok=place.paid_rates[1],
            cached_input_per_mtok=place.cache_rates[0],
            cache_write_per_mtok=place.cache_rates[1],
            list_input_per_mtok=place.list_rates[0],
            list_output_per_mtok=place.list_rates[1],
            estimated_cost_usd=cost_usd(self.input_tokens, self.output_tokens, place.paid_rates),
            input_key=self.key,
            next_action_at=max(time.time(), place.start_at or 0.0),
        )


class _ModelLines:
    """Assigns the lines of one model to its placements by share: the first n1 lines to the first, ..."""

    def __init__(self, placements: list[Placement], counts: list[int]) -> None:
        self.placements = placements
        self.ends = list(itertools.accumulate(counts))
        self.seen = 0
        self.index = 0

    def next_placement(self) -> int:
        """Index of the placement that takes the next line."""
        while self.index < len(self.ends) - 1 and self.seen >= self.ends[self.index]:
            self.index += 1
        self.seen += 1
        return self.index


def share_counts(total: int, shares: list[float]) -> list[int]:
    """Split ``total`` requests by ``shares`` (largest remainder), so the counts sum to ``total``."""
    raw = [total * share for share in shares]
    counts = [int(value) for value in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def split_into_shards(
    input_path: Path,
    batch_id: str,
    endpoint: str,
    placements: dict[str, list[Placement]],
    counts: dict[str, int],
    scratch: Path,
    key_of: Any = shard_input_key,
    canary_lines: int = 0,
    estimator: Estimator | None = None,
) -> list[ShardPlan]:
    """Write shard inputs for the lines of ``input_path`` (blank lines skipped) into ``scratch``.

    ``placements`` maps the model named in ``body.model`` to where its lines go; ``counts`` gives
    each model's request count (to split by share). ``key_of(batch_id, seq)`` names the blobs the
    files become once :func:`publish_shards` stores them. The first ``canary_lines`` requests go to
    shards of their own, marked ``canary``. Each shard's tokens are estimated by ``estimator`` (default:
    no history).
    """
    estimator = estimator or Estimator(endpoint)
    done: list[ShardPlan] = []
    assign = {
        model: _ModelLines(places, share_counts(counts[model], [p.share for p in places]))
        for model, places in placements.items()
    }
    open_shards: dict[tuple[str, int, bool], ShardPlan] = {}
    written: list[Path] = []
    with contextlib.ExitStack() as stack:

        def new_shard(placement: Placement, canary: bool) -> ShardPlan:
            seq = len(done) + len(open_shards)
            key = key_of(batch_id, seq)
            path = scratch_file(scratch, suffix=".jsonl")
            written.append(path)
            handle = stack.enter_context(path.open("wb"))
            return ShardPlan(seq=seq, placement=placement, key=key, path=path, handle=handle, canary=canary)

        try:
            requests = 0
            with input_path.open("rb") as source:
                for raw in source:
                    line = raw.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    requests += 1
                    canary = requests <= canary_lines
                    body = bytes(_head_decoder.decode(line).body)
                    name = _model_decoder.decode(body).model
                    lines = assign[name]
                    index = lines.next_placement()
                    placement = lines.placements[index]
                    expected = estimator.request(body)
                    if name != placement.provider_model:
                        line = rewrite_model(line, placement.provider_model)
                    size = len(line) + 1
                    slot = (name, index, canary)
                    shard = open_shards.get(slot)
                    limits = placement.limits
                    if shard is not None and (
                        shard.request_count >= limits.max_requests_per_batch
                        or shard.byte_size + size > limits.max_bytes_per_batch
                    ):
                        done.append(open_shards.pop(slot))
                        shard = None
                    if shard is None:
                        shard = open_shards[slot] = new_shard(placement, canary)
                    shard.handle.write(line + b"\n")
                    shard.request_count += 1
                    shard.byte_size += size
                    shard.input_tokens += expected.input_tokens
                    shard.expected_output += expected.output_tokens
                    shard.output_tokens = round(shard.expected_output)
            done.extend(open_shards.values())
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        for shard in done:
            shard.handle.close()
    return sorted(done, key=lambda s: s.seq)


async def publish_shards(blobs: BlobStore, plans: list[ShardPlan]) -> None:
    """Store the shard inputs :func:`split_into_shards` wrote under their keys (scratch files consumed)."""
    try:
        for plan in plans:
            await blobs.put_file(plan.key, plan.path)
    finally:
        for plan in plans:
            plan.path.unlink(missing_ok=True)


def rewrite_model(line: bytes, provider_model: str) -> bytes:
    """The request line with ``body.model`` set to the provider's model id."""
    request: dict[str, Any] = msgspec.json.decode(line)
    request["body"]["model"] = provider_model
    return msgspec.json.encode(request)


async def run(context: GatewayContext, batch: Batch, lease: Lease) -> None:
    """Stage entry: rank offers for each model of a validated batch and create its shards."""
    if batch.status == "cancelling":
        await end_unstarted(context, batch, lease, status="cancelled")
        return
    async with reading(context.sessions) as session:
        input_file = await repo.get_file(session, batch.team_id, batch.input_file_id)
    if input_file is None:
        message = f"The input file '{batch.input_file_id}' was deleted."
        await fail_batch(context, batch, lease, "input_file_missing", message)
        return
    estimator = await team_estimator(context, batch.team_id, batch.endpoint)
    async with context.blobs.local_copy(input_file.storage_key) as path:
        estimates = await asyncio.to_thread(estimate_file, path, batch.endpoint, estimator)
        placements: dict[str, list[Placement]] = {}
        decisions: list[RoutingDecision] = []
        estimated_cost = 0.0
        policy = None
        for name, estimate in estimates.items():
            try:
                resolved = context.offers.resolve(name)
                ranking = await rank(
                    context,
                    batch,
                    resolved,
                    requests=estimate.requests,
                    input_tokens=estimate.input_tokens,
                    output_tokens=estimate.output_tokens,
                )
            except UnknownModel as exc:
                message = f"Line {estimate.first_line}: {exc}."
                await fail_batch(context, batch, lease, "model_not_found", message, estimate.first_line)
                return
            except NoUsableProvider as exc:
                await fail_batch(context, batch, lease, "provider_unavailable", f"Cannot route model {name!r}: {exc}.")
                return
            except PolicyError as exc:
                await fail_batch(context, batch, lease, "routing_refused", f"Cannot route model {name!r}: {exc}.")
                return
            policy = ranking.policy
            taken = split_shares(ranking)
            baseline = context.offers.sync_baseline(resolved.model, estimate.input_tokens, estimate.output_tokens)
            pinned = resolved.pinned_provider is not None
            placements[name] = [Placement.of(context, choice, pinned, baseline) for choice in taken]
            estimated_cost += sum(choice.candidate.estimated_cost_usd for choice in taken)
            decisions.append(ranking.decision)
        counts = {name: estimate.requests for name, estimate in estimates.items()}
        canary = canary_size(context, batch, sum(counts.values()))
        plans = await asyncio.to_thread(
            split_into_shards,
            path,
            batch.id,
            batch.endpoint,
            placements,
            counts,
            context.blobs.scratch,
            functools.partial(shard_input_key, attempt=lease.token),
            canary,
            estimator,
        )
    crash_point("route.after_shards_written")
    freeze_point("route.after_shards_written")
    await publish_shards(context.blobs, plans)
    changed = False
    async with transaction(context.sessions) as session:
        refusal = await budgets.reserve(session, batch.team_id, batch.id, estimated_cost)
        if refusal is not None:
            raise Rollback
        for plan in plans:
            session.add(plan.shard(batch.id, held=canary > 0 and not plan.canary))
        for decision in decisions:
            session.add(decision)
        changed = await repo.update_batch_if(
            session,
            batch.id,
            expected_status="in_progress",
            values={"stage": "run", "policy": policy, "estimated_cost_usd": estimated_cost, "stage_attempts": 0},
            lease=lease,
        )
        if not changed:
            raise Rollback
    if not changed:
        await _discard(context, plans)
        if refusal is not None:
            await fail_batch(context, batch, lease, "budget_exceeded", refusal)
        return
    log.info("batch %s routed into %d shards (%s)", batch.id, len(plans), ", ".join(d.reason for d in decisions))


async def _discard(context: GatewayContext, plans: list[ShardPlan]) -> None:
    """Remove shard inputs this attempt published but no row will name."""
    for plan in plans:
        await context.blobs.delete(plan.key)


async def give_up(context: GatewayContext, batch: Batch, lease: Lease, code: str, message: str) -> None:
    """End a batch whose routing cannot run (its input is gone or unreadable); nothing was spent."""
    if code == "content_missing":
        code, message = "input_file_missing", f"The content of input file '{batch.input_file_id}' is missing."
    await fail_batch(context, batch, lease, code, f"Routing could not run: {message}")


def canary_size(context: GatewayContext, batch: Batch, requests: int) -> int:
    """Requests to run first as a canary: the batch's ``canary`` hint, else the deployment's default for
    large jobs; 0 when the job is not larger than the canary."""
    asked = (batch.metadata_ or {}).get("canary")
    routing = context.settings.routing
    if asked is not None:
        size = int(asked)
    elif routing.canary_requests and requests >= routing.canary_min_requests:
        size = routing.canary_requests
    else:
        size = 0
    return size if 0 < size < requests else 0
