"""Shard plans: where the requests of a model go (:class:`Placement`) and the shard inputs written for them.

Both first placement (:mod:`gateway.pipeline.route`) and moving unfinished requests
(:mod:`gateway.pipeline.failover`) cut request lines into shards with :func:`split_into_shards`, which writes
each shard's input to a scratch file, and store them with :func:`publish_shards`; the row of each shard is
built from its plan (:meth:`ShardPlan.shard`) by the transaction that adopts it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from gateway.billing.estimate import Estimator, LineEstimates, cache_rates, cost_usd
from gateway.context import GatewayContext
from gateway.db.models import Shard
from gateway.pipeline.lifecycle import shard_input_key
from gateway.providers.config import ProviderLimits
from gateway.providers.jsonl import iter_line_blocks
from gateway.routing.placement import Choice
from gateway.storage import BlobStore
from gateway.storage.local import scratch_file


class _Head(msgspec.Struct):
    custom_id: str = ""
    body: msgspec.Raw = msgspec.Raw(b"")


_head_decoder = msgspec.json.Decoder(_Head)
_TIER_FIELD = b'"service_tier"'


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
    tier: str = "standard"
    """The synchronous service tier its requests ask for (``standard``, ``flex`` or ``priority``)."""
    min_requests: int = 1
    """Fewest requests one of its provider batches may hold."""

    @classmethod
    def of(cls, context: GatewayContext, choice: Choice, pinned: bool, baseline: tuple[float, float]) -> Placement:
        """The placement for a ranked choice; ``baseline`` is the synchronous rates savings are measured against."""
        offer = choice.candidate.offer
        start = choice.candidate.start_at
        return cls(
            provider=offer.provider,
            provider_model=offer.provider_model,
            model=offer.model,
            mode=offer.run_mode,
            limits=context.providers.get(offer.provider).config.limits,
            paid_rates=choice.priced.paid_rates,
            list_rates=baseline,
            cache_rates=cache_rates(choice.priced.source, offer.mode == "batch"),
            pinned=pinned,
            start_at=start.timestamp() if start else None,
            share=choice.candidate.share,
            tier=offer.tier,
            min_requests=context.providers.get(offer.provider).min_requests(),
        )

    def shard_cap(self, count: int) -> int:
        """Requests per shard for ``count`` requests: the provider's maximum, evened out over the shards
        when its batches have a minimum, so the last shard is not left below it."""
        cap = self.limits.max_requests_per_batch
        if self.min_requests <= 1 or count <= cap:
            return cap
        shards = -(-count // cap)
        return -(-count // shards)


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
        self.counts = counts
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
    estimates: LineEstimates | None = None,
) -> list[ShardPlan]:
    """Write shard inputs for the lines of ``input_path`` (blank lines skipped) into ``scratch``.

    ``placements`` maps the model named in ``body.model`` to where its lines go; ``counts`` gives
    each model's request count (to split by share). ``key_of(batch_id, seq)`` names the blobs the
    files become once :func:`publish_shards` stores them. The first ``canary_lines`` requests go to
    shards of their own, marked ``canary``. Each shard's tokens are the sum of its lines' ``estimates``
    (taken by routing's pass over the file: the lines are then copied without being decoded, unless their
    model or tier is rewritten), else estimated here by ``estimator`` (default: no history).
    """
    estimator = estimator or Estimator(endpoint)
    with contextlib.ExitStack() as stack:
        cutter = _ShardCutter(batch_id, placements, counts, scratch, key_of, canary_lines, stack)
        try:
            requests = 0
            for _, block in iter_line_blocks(input_path):
                # Routing's pass read every line's model and tokens: the lines need not be read again.
                if estimates is not None and cutter.place_run(block, requests, estimates):
                    requests += len(block)
                    continue
                for raw in block:
                    line = raw.rstrip(b"\r")
                    if not line.strip():
                        continue
                    if estimates is not None:
                        if requests >= len(estimates):
                            raise RuntimeError(f"{input_path.name} has more lines than when it was estimated")
                        name, input_tokens, output_tokens = estimates.line(requests)
                    else:
                        name, input_tokens, output_tokens = _estimate_line(line, estimator)
                    requests += 1
                    cutter.place(line, name, input_tokens, output_tokens, requests <= canary_lines)
            if estimates is not None and requests != len(estimates):
                raise RuntimeError(f"{input_path.name} has fewer lines than when it was estimated")
        except BaseException:
            cutter.discard()
            raise
        return cutter.finished()


class _ShardCutter:
    """The shards being written by :func:`split_into_shards`: each placement's open shard per model (and canary),
    a new one opened as the last fills."""

    def __init__(
        self,
        batch_id: str,
        placements: dict[str, list[Placement]],
        counts: dict[str, int],
        scratch: Path,
        key_of: Any,
        canary_lines: int,
        stack: contextlib.ExitStack,
    ) -> None:
        self.batch_id = batch_id
        self.scratch = scratch
        self.key_of = key_of
        self.canary_lines = canary_lines
        self.stack = stack
        self.assign = {
            model: _ModelLines(places, share_counts(counts[model], [p.share for p in places]))
            for model, places in placements.items()
        }
        self.caps = {
            (model, index): place.shard_cap(count)
            for model, lines in self.assign.items()
            for index, (place, count) in enumerate(zip(lines.placements, lines.counts, strict=True))
        }
        self.done: list[ShardPlan] = []
        self.open: dict[tuple[str, int, bool], ShardPlan] = {}
        self.written: list[Path] = []

    def place(self, line: bytes, name: str, input_tokens: int, output_tokens: float, canary: bool) -> None:
        """Put one request line in the open shard of its placement, opening one as the last fills."""
        lines = self.assign[name]
        index = lines.next_placement()
        placement = lines.placements[index]
        # The field anywhere in the line (a custom_id may name it too): the rewrite then decides.
        tiered = placement.tier != "standard" or _TIER_FIELD in line
        if name != placement.provider_model or tiered:
            line = rewrite_model(line, placement.provider_model, placement.tier)
        size = len(line) + 1
        slot = (name, index, canary)
        shard = self.open.get(slot)
        if shard is not None and (
            shard.request_count >= self.caps[(name, index)]
            or shard.byte_size + size > placement.limits.max_bytes_per_batch
        ):
            self.done.append(self.open.pop(slot))
            shard = None
        if shard is None:
            shard = self.open[slot] = self._new_shard(placement, canary)
        shard.handle.write(line + b"\n")
        shard.request_count += 1
        shard.byte_size += size
        shard.input_tokens += input_tokens
        shard.expected_output += output_tokens
        shard.output_tokens = round(shard.expected_output)

    def place_run(self, block: list[bytes], first: int, estimates: LineEstimates) -> bool:
        """Put a read's lines (requests ``first`` on) in shards as runs copied at once, when every one is a request
        of one model that goes to one placement unchanged; False, having put none, otherwise."""
        count = len(block)
        if first + count > len(estimates):
            return False  # line by line, which says where the file no longer matches its estimates
        name_index = estimates.name_of_line[first]
        name = estimates.names[name_index]
        placements = self.assign[name].placements
        placement = placements[0]
        if (
            len(placements) > 1
            or name != placement.provider_model
            or placement.tier != "standard"
            or estimates.name_of_line[first : first + count].count(name_index) != count
        ):
            return False
        data = b"\n".join(block)
        if b"\r" in data or _TIER_FIELD in data or not all(map(bytes.strip, block)):
            return False
        cap, position = self.caps[(name, 0)], 0
        while position < count:
            request = first + position
            canary = request < self.canary_lines
            length = count - position if not canary else min(count - position, self.canary_lines - request)
            slot = (name, 0, canary)
            shard = self.open.get(slot)
            room = cap - shard.request_count if shard is not None else cap
            run = block[position : position + min(length, room)]
            chunk = b"\n".join(run) + b"\n"
            held = shard.byte_size if shard is not None else 0
            if room <= 0 or held + len(chunk) > placement.limits.max_bytes_per_batch:
                # A shard fills here: line by line, which closes it where a line no longer fits.
                for offset, line in enumerate(run or block[position : position + 1]):
                    self.place(line, *estimates.line(request + offset), canary)
                position += max(1, len(run))
                continue
            if shard is None:
                shard = self.open[slot] = self._new_shard(placement, canary)
            shard.handle.write(chunk)
            shard.request_count += len(run)
            shard.byte_size += len(chunk)
            shard.input_tokens += sum(estimates.input_tokens[request : request + len(run)])
            # Added in order, one by one, as place() adds them: the float sum comes out the same.
            outputs = estimates.output_tokens[request : request + len(run)]
            shard.expected_output = functools.reduce(operator.add, outputs, shard.expected_output)
            shard.output_tokens = round(shard.expected_output)
            position += len(run)
        return True

    def finished(self) -> list[ShardPlan]:
        """Every shard, closed, in order."""
        self.done.extend(self.open.values())
        for shard in self.done:
            shard.handle.close()
        return sorted(self.done, key=lambda s: s.seq)

    def discard(self) -> None:
        """Remove every file written (a cut that failed)."""
        for shard in [*self.done, *self.open.values()]:
            shard.handle.close()
        for path in self.written:
            path.unlink(missing_ok=True)

    def _new_shard(self, placement: Placement, canary: bool) -> ShardPlan:
        seq = len(self.done) + len(self.open)
        path = scratch_file(self.scratch, suffix=".jsonl")
        self.written.append(path)
        handle = self.stack.enter_context(path.open("wb"))
        return ShardPlan(
            seq=seq, placement=placement, key=self.key_of(self.batch_id, seq), path=path, handle=handle, canary=canary
        )


def _estimate_line(line: bytes, estimator: Estimator) -> tuple[str, int, float]:
    """``(model name, input tokens, expected output tokens)`` of a request line."""
    expected = estimator.request(bytes(_head_decoder.decode(line).body))
    return expected.model, expected.input_tokens, expected.output_tokens


async def publish_shards(blobs: BlobStore, plans: list[ShardPlan]) -> None:
    """Store the shard inputs :func:`split_into_shards` wrote under their keys (scratch files consumed)."""
    try:
        for plan in plans:
            await blobs.put_file(plan.key, plan.path)
    finally:
        for plan in plans:
            plan.path.unlink(missing_ok=True)


STANDARD_TIER_VALUES = frozenset({"auto", "default"})
"""``service_tier`` values that ask for the standard tier: the only ones a batch or standard placement keeps."""


def rewrite_model(line: bytes, provider_model: str, tier: str = "standard") -> bytes:
    """The request line with ``body.model`` set to the provider's model id and ``body.service_tier`` to the
    placement's tier. On a batch or standard placement, any other tier asked elsewhere (by the client, or by the
    shard this line comes from: ``flex``, ``priority``, ``fast``, ``scale``...) is removed: the placement is priced
    at the standard or batch rate, and a premium tier would be billed above it."""
    request: dict[str, Any] = msgspec.json.decode(line)
    body = request["body"]
    body["model"] = provider_model
    if tier != "standard":
        body["service_tier"] = tier
    elif "service_tier" in body and not (
        isinstance(asked := body["service_tier"], str) and asked in STANDARD_TIER_VALUES
    ):
        del body["service_tier"]
    return msgspec.json.encode(request)
