"""Joining a finished shard's results on ``custom_id``: exactly one output, error or moved line per request.

:func:`split_results` reads the provider's result lines against the shard's input: lines for unknown or
already seen ids are dropped; requests that failed retryably or were never answered are moved (their input
lines, for :mod:`gateway.pipeline.failover`) or, when they may not move, get an error line saying why. The
collect stage (:mod:`gateway.pipeline.collect`) runs it in a CPU process (:mod:`gateway.cpu_pool`) and adopts the
files it writes. This module's imports stay light for that process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec

from gateway.billing.estimate import raw_input_tokens
from gateway.crashpoints import crash_point, freeze_point
from gateway.pipeline.results import (
    AnswerBody,
    ShardResults,
    Usage,
    decode_result,
    error_line,
    id_decoder,
    iter_custom_ids,
    request_line_id,
    retryable,
)
from gateway.pipeline.results import encoder as line_encoder

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
    "budget_exceeded": (
        "budget_exceeded",
        "This request was not run: the batch was stopped to hold a hard budget (see the batch's errors).",
    ),
    "budget": ("budget_exceeded", "This request was not run: a hard budget is spent: {detail}"),
}
UNEXECUTED_CODES = frozenset({"batch_cancelled", "batch_expired"})


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
    tier: str = "standard",
) -> ShardResults:
    """Write one output, error or moved line per request of the shard; see the module docstring.

    With ``can_move``, requests that failed retryably or were never answered go to ``moved_path``
    (their input lines) instead of the error file. Every output and error line names the
    ``provider`` that answered it. ``tier`` is the service tier the shard's requests asked for.
    """
    pending = _input_estimates(input_path)
    moved: set[str] = set()
    results = ShardResults(usage=Usage(asked_tier=tier))
    with output_path.open("wb") as out, error_path.open("wb") as err:
        if raw_path is not None and raw_path.exists():
            with raw_path.open("rb") as raw:
                for number, line in enumerate(raw, 1):
                    try:
                        item = decode_result(line)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        log.warning("skipping an unreadable result line %d of batch %s", number, batch_id)
                        continue
                    if not isinstance(item.custom_id, str) or item.custom_id not in pending:
                        continue
                    if item.response is None and _unexecuted(item.error):
                        continue  # the provider never ran it: handled below with the pending ones
                    raw_input = pending.pop(item.custom_id)
                    ok = item.ok
                    if not ok and can_move and retryable(item.status_code, item.error):
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
                        results.usage.add(item.body, item.billed_usd)
                        results.sample.add(*_answer_tokens(item.body), raw_input)
                        out.write(line_encoder.encode(record) + b"\n")
                    else:
                        results.failed += 1
                        err.write(line_encoder.encode(record) + b"\n")
        crash_point("join.after_results")
        freeze_point("join.after_results")
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
                if line.strip() and id_decoder.decode(line).custom_id in moved:
                    sink.write(line if line.endswith(b"\n") else line + b"\n")
    return results


class _InputLine(msgspec.Struct):
    custom_id: str = ""
    body: msgspec.Raw = msgspec.Raw(b"{}")


_input_decoder = msgspec.json.Decoder(_InputLine)


def _input_estimates(input_path: Path) -> dict[str, int]:
    """The shard's custom_ids in order, each with its input tokens by the bytes / 4 rule."""
    found: dict[str, int] = {}
    with input_path.open("rb") as handle:
        for line in handle:
            if line.strip():
                request = _input_decoder.decode(line)
                found[request.custom_id] = raw_input_tokens(request.body)
    return found


def _answer_tokens(body: AnswerBody | None) -> tuple[int, int]:
    """``(output, input)`` tokens an answer's usage reports."""
    usage = body.usage if body is not None else None
    if usage is None:
        return 0, 0
    return usage.completion_tokens or 0, usage.prompt_tokens or 0


def _unexecuted(error: dict[str, Any] | None) -> bool:
    return isinstance(error, dict) and error.get("code") in UNEXECUTED_CODES


def fail_moved(batch_id: str, moved_path: Path, error_path: Path, message: str, provider: str, code: str) -> None:
    """Requests that could be moved nowhere get error lines."""
    with moved_path.open("rb") as source, error_path.open("ab") as err:
        for line in source:
            if line.strip():
                custom_id = id_decoder.decode(line).custom_id
                err.write(error_line(batch_id, custom_id, code, message, provider) + b"\n")


def error_lines(batch_id: str, input_path: Path, dest: Path, code: str, message: str, provider: str) -> int:
    """An error line for every request of the input file ``input_path``, written to ``dest``; how many."""
    count = 0
    with dest.open("wb") as err:
        for custom_id in iter_custom_ids(input_path):
            err.write(error_line(batch_id, custom_id, code, message, provider) + b"\n")
            count += 1
    return count
