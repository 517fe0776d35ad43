"""Pure transforms of OpenRouter's batch wire format (no I/O, no network).

An OpenRouter batch is one JSON create call holding every request inline (``{endpoint, model, requests}``,
``endpoint`` and ``model`` written before ``requests``: OpenRouter parses the body as a stream and refuses
the other order), and its results come back inline on ``GET /batches/{id}`` once it has ended, each in
OpenAI's output-line shape. Statuses and ``request_counts`` are OpenAI's (:mod:`gateway.providers.openai_wire`).

OpenRouter bills a batch in dollars, not tokens: ``usage.cost`` of the ended batch. :func:`billed_shares` turns
that figure into a charge per answer, so the ledger records what OpenRouter billed rather than tokens at a
catalog price.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

from gateway import jsondepth
from gateway.providers.http import CreateBody
from gateway.providers.jsonl import iter_requests
from gateway.providers.openai_wire import normalise_output_line
from gateway.translate import MalformedResult, TranslationError

BATCHES = "/batches"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
ENDPOINTS = frozenset({CHAT, EMBEDDINGS})
"""Endpoints the gateway sends to OpenRouter (it also takes ``/v1/responses`` and ``/v1/messages``, which
clients of this gateway do not batch)."""
MAX_REQUESTS = 5_000
MAX_BODY_BYTES = 200 * 1000 * 1000
"""OpenRouter's caps per batch: 5,000 requests and "200 MB" (read as decimal megabytes, the smaller reading)."""
COMPLETION_WINDOW = "24h"
"""The only window OpenRouter accepts."""


def write_create_body(
    shard_path: Path, out: IO[bytes], endpoint: str, model: str, provider: dict[str, Any] | None = None
) -> CreateBody:
    """Write ``{"endpoint", "model", "completion_window", "provider"?, "requests": [...]}`` (in that order) for
    the shard's requests whose body is an object; one request in memory at a time."""
    count = 0
    fields: dict[str, Any] = {"endpoint": endpoint, "model": model, "completion_window": COMPLETION_WINDOW}
    if provider is not None:
        fields["provider"] = provider
    head = msgspec.json.encode(fields)
    out.write(head[:-1] + b',"requests":[')
    for _, custom_id, body in iter_requests(shard_path):
        if isinstance(body, TranslationError) or inline_file_refusal(body) is not None:
            continue
        out.write((b"," if count else b"") + msgspec.json.encode({"custom_id": custom_id, "body": body}))
        count += 1
    out.write(b"]}")
    out.flush()
    return CreateBody(Path(out.name), out.tell(), count)


def unsent_requests(shard_path: Path) -> Iterator[tuple[str, TranslationError]]:
    """``(custom_id, why)`` of each shard request :func:`write_create_body` left out."""
    for _, custom_id, body in iter_requests(shard_path):
        if isinstance(body, TranslationError):
            yield custom_id, body
        elif (refusal := inline_file_refusal(body)) is not None:
            yield custom_id, refusal


INLINE_PARTS = frozenset({"input_audio", "file"})
"""Chat content parts that carry their data inline (base64): OpenRouter batches take none."""


def inline_file_refusal(body: Mapping[str, Any]) -> TranslationError | None:
    """Why a chat request cannot go in an OpenRouter batch: a base64 ``data:`` image or an inline file or audio
    part (its batches take text and http(s) URLs only), else None."""
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, Mapping) else None
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, Mapping):
                continue
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if part.get("type") in INLINE_PARTS or (isinstance(url, str) and url.startswith("data:")):
                return TranslationError(
                    "OpenRouter batches take text and http(s) image URLs only, not inline (base64) images, "
                    "files or audio.", "messages",
                )  # fmt: skip
    return None


class BatchStatus(msgspec.Struct):
    """A batch object read for its status: ``results`` is skipped, however large."""

    status: Any = None
    request_counts: Any = None
    error: Any = None


class BatchResults(msgspec.Struct):
    """An ended batch object read for its results, each kept as raw JSON until it is used."""

    status: Any = None
    results: list[msgspec.Raw] | None = None
    usage: Any = None


class _FailedItem(msgspec.Struct):
    error: Any = None


status_decoder = msgspec.json.Decoder(BatchStatus)
_failed_decoder = msgspec.json.Decoder(_FailedItem)
results_decoder = msgspec.json.Decoder(BatchResults)


@dataclass
class ResultLines:
    """The result lines of an ended batch in OpenAI's envelope, with what OpenRouter billed for each answer."""

    lines: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """``(1-based position, why)`` of results that could not be used."""
    unassigned_usd: float = 0.0
    """What the batch billed that no answer carries (a batch cost with no successful answer to share it)."""


def _number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def batch_cost(usage: Any) -> float | None:
    """What OpenRouter billed for a batch: ``usage.cost``, plus, on a BYOK route (``is_byok``, where ``cost`` is
    only OpenRouter's fee), the upstream provider's charge in ``cost_details.upstream_inference_cost``."""
    if not isinstance(usage, dict):
        return None
    cost = _number(usage.get("cost"))
    details = usage.get("cost_details")
    upstream = _number(details.get("upstream_inference_cost")) if isinstance(details, dict) else None
    if cost is not None and usage.get("is_byok") is True and upstream is not None:
        cost += upstream
    return cost


def _answer_usage(line: dict[str, Any]) -> tuple[int, float | None] | None:
    """``(total tokens, the answer's own usage.cost)`` of a successful answer, None for a failed request."""
    response = line.get("response")
    if line.get("error") is not None or not isinstance(response, dict):
        return None
    status = response.get("status_code")
    if not isinstance(status, int) or not 200 <= status < 300:
        return None
    body = response.get("body")
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, None
    tokens = sum(int(v) for k in ("prompt_tokens", "completion_tokens") if isinstance(v := usage.get(k), int))
    return max(tokens, 0), _number(usage.get("cost"))


def billed_shares(total: float | None, answers: Sequence[tuple[int, float | None]]) -> list[float] | None:
    """What OpenRouter billed for each answer, given the batch's ``usage.cost`` and each answer's
    ``(total tokens, own usage.cost)``; None when neither the batch nor every answer says.

    The batch's ``usage.cost`` is what OpenRouter bills, so the shares always add up to it: weighted by each
    answer's own ``usage.cost`` when every answer carries one (whether result bodies carry it is not
    documented), else by tokens, else evenly. Without a batch figure, the answers' own costs are the charge.
    """
    if not answers:
        return []
    own = [cost for _, cost in answers]
    if total is None:
        return [cost for cost in own if cost is not None] if all(cost is not None for cost in own) else None
    weights: list[float] = [cost for cost in own if cost is not None]
    if len(weights) != len(answers) or sum(weights) <= 0:
        weights = [float(tokens) for tokens, _ in answers]
    if sum(weights) <= 0:
        weights = [1.0] * len(answers)
    scale = total / sum(weights)
    return [weight * scale for weight in weights]


def result_lines(batch: BatchResults, provider_batch_id: str) -> ResultLines:
    """The batch's results as OpenAI output lines; each successful one carries ``billed_usd``."""
    found = ResultLines()
    answers: list[tuple[int, tuple[int, float | None]]] = []
    seen: set[str] = set()
    for position, item in enumerate(batch.results or [], 1):
        raw = bytes(item)
        if jsondepth.TOO_DEEP in raw:  # cut from an answer too deep to read whole
            found.skipped.append((position, "nested too deeply to read"))
            continue
        try:
            line = normalise_output_line(raw, provider_batch_id)
        except MalformedResult as exc:
            found.skipped.append((position, str(exc)))
            continue
        if line["custom_id"] in seen:  # only the first result of an id is used: only it may carry a share
            found.skipped.append((position, "a second result for the same custom_id"))
            continue
        seen.add(line["custom_id"])
        if isinstance(line["error"], dict) and line["error"].get("code") is None:
            # A failed request's error names its kind in ``type`` (server_error, timeout, ...): kept as the code
            # the gateway reads to decide whether another try may succeed.
            kind = _failed_decoder.decode(raw).error
            if isinstance(kind, dict) and isinstance(kind.get("type"), str):
                line["error"]["code"] = kind["type"]
        answer = _answer_usage(line)
        if answer is not None:
            answers.append((len(found.lines), answer))
        found.lines.append(line)
    total = batch_cost(batch.usage)
    shares = billed_shares(total, [answer for _, answer in answers])
    for (index, _), share in zip(answers, shares or [], strict=False):
        found.lines[index]["billed_usd"] = share
    if not answers and total:
        found.unassigned_usd = total
    return found
