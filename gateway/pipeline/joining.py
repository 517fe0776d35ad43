"""Joining a finished shard's results on ``custom_id``: exactly one output, error or moved line per request.

:func:`split_results` reads the provider's result lines against the shard's input: lines for unknown or
already seen ids are dropped; requests that failed retryably or were never answered are moved (their input
lines, for :mod:`gateway.pipeline.failover`) or, when they may not move, get an error line saying why. The
lines come a read at a time: a read whose lines are all answers in the usual shape is decoded by a decoder
that refuses anything else and added up at once; any other read is taken line by line, with the same outcome.
Lines an adapter passed on as the provider wrote them (``as_sent``, see
:attr:`~gateway.providers.base.ProviderAdapter.results_as_sent`) are read once here: a read of plain answers as
above, any other line first normalised as the adapter would have (:func:`normalised_sent_line`).
The collect stage (:mod:`gateway.pipeline.collect`) runs it in a CPU process (:mod:`gateway.cpu_pool`) and adopts the
files it writes. This module's imports stay light for that process.
"""

from __future__ import annotations

import logging
from itertools import compress, repeat
from pathlib import Path
from typing import IO, Any

import msgspec

from gateway.billing.estimate import raw_input_token_counts
from gateway.crashpoints import crash_point, freeze_point
from gateway.pipeline.results import (
    AnswerBody,
    LineIds,
    ShardResults,
    Usage,
    decode_result,
    error_line,
    id_decoder,
    iter_custom_ids,
    normalised_sent_line,
    retryable,
)
from gateway.pipeline.results import encoder as line_encoder
from gateway.providers.jsonl import iter_line_blocks
from gateway.translate import MalformedResult

log = logging.getLogger(__name__)

MISSING_RESULT_ERRORS = {
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "provider_expired": (
        "provider_batch_expired",
        "The provider expired the batch that held this request before running it, and no other placement took it.",
    ),
    "failed": ("provider_batch_failed", "The provider batch that held this request failed: {detail}"),
    "completed": ("result_missing", "The provider finished its batch without a valid result for this request."),
    "stalled": ("provider_stalled", "The provider batch that held this request made no progress: {detail}"),
    "abandoned": ("provider_unavailable", "The provider that held this request stayed unreachable: {detail}"),
    "rerouted": ("provider_unavailable", "No provider could take this request: {detail}"),
    "behind": (
        "deadline_missed",
        "This request did not finish by the batch's deadline: its provider batch was cancelled while still "
        "running ({detail}) and no other placement took it.",
    ),
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
    as_sent: bool = False,
) -> ShardResults:
    """Write one output, error or moved line per request of the shard; see the module docstring.

    With ``can_move``, requests that failed retryably or were never answered go to ``moved_path``
    (their input lines) instead of the error file. Every output and error line names the
    ``provider`` that answered it. ``tier`` is the service tier the shard's requests asked for. With
    ``as_sent``, the result lines are the provider's own, not yet normalised (see the module docstring).
    """
    pending = _input_estimates(input_path)
    results = ShardResults(usage=Usage(asked_tier=tier))
    with output_path.open("wb") as out, error_path.open("wb") as err:
        join = _Join(batch_id, provider, can_move, pending, results, out, err, as_sent)
        if raw_path is not None and raw_path.exists():
            for first, lines in iter_line_blocks(raw_path):
                if not join.take_plain(first, lines):
                    for number, line in enumerate(lines, first):
                        join.take_line(number, line)
        crash_point("join.after_results")
        freeze_point("join.after_results")
        code, message = MISSING_RESULT_ERRORS.get(end_reason, MISSING_RESULT_ERRORS["failed"])
        message = message.format(detail=detail or "no detail given")
        moved = join.moved
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


class _Join:
    """The lines of one shard's results taken against its pending requests (see :func:`split_results`)."""

    def __init__(
        self,
        batch_id: str,
        provider: str,
        can_move: bool,
        pending: dict[str, int],
        results: ShardResults,
        out: IO[bytes],
        err: IO[bytes],
        as_sent: bool = False,
    ) -> None:
        self.batch_id, self.provider, self.can_move = batch_id, provider, can_move
        self.pending, self.results, self.out, self.err = pending, results, out, err
        self.as_sent = as_sent
        self.line_id = LineIds(batch_id)
        self.moved: set[str] = set()

    def take_line(self, number: int, line: bytes) -> None:
        """One result line, whatever it holds: an answer, an error, a line to skip."""
        if not line.strip():
            return
        if self.as_sent:
            try:
                line = normalised_sent_line(line)
            except MalformedResult as exc:
                log.warning("provider %s: skipped line %d of batch %s's results: %s", self.provider, number,
                            self.batch_id, exc)  # fmt: skip
                self.results.unreadable += 1
                return
        try:
            item = decode_result(line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("skipping an unreadable result line %d of batch %s", number, self.batch_id)
            self.results.unreadable += 1
            return
        if not isinstance(item.custom_id, str) or item.custom_id not in self.pending:
            return
        if item.response is None and _unexecuted(item.error):
            return  # the provider never ran it: handled with the requests left pending
        raw_input = self.pending.pop(item.custom_id)
        ok = item.ok
        if not ok and self.can_move and retryable(item.status_code, item.error):
            self.moved.add(item.custom_id)
            return
        record = _OutputLine(self.line_id(item.custom_id), item.custom_id, item.response, item.error, self.provider)
        if ok:
            self._answered(item.body, item.billed_usd, raw_input)
            self.out.write(line_encoder.encode(record) + b"\n")
        else:
            self.results.failed += 1
            self.err.write(line_encoder.encode(record) + b"\n")

    def take_plain(self, first: int, lines: list[bytes]) -> bool:
        """The lines of one read at once when every one is a plain answer line (see :class:`_PlainResult`); False,
        having taken none, when any is not: the caller then takes them one by one. An answer that is not a
        success is taken by :meth:`take_line`."""
        if self.as_sent and b"\r" in b"".join(lines):
            return False  # a bare CR inside a line: normalised, so that no reader breaks the line there
        if not all(map(bytes.isascii, lines)):
            try:
                for line in lines:
                    line.decode()  # the response is passed on unread: it must be UTF-8 for the client's output
            except UnicodeDecodeError:
                return False
        try:
            found = list(map(_plain_decoder.decode, lines))
            answers = list(map(_plain_answer_decoder.decode, [item.response for item in found]))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return False
        if all([200 <= answer.status_code < 300 for answer in answers]):
            # The usual read: every line a success. Each id is taken from the pending requests at once; a line
            # of another shard, or one answered already, takes nothing and is dropped.
            ids = [item.custom_id for item in found]
            raw_inputs = list(map(self.pending.pop, ids, repeat(0)))  # a pending request's estimate is at least 1
            if 0 in raw_inputs:
                taken = [raw > 0 for raw in raw_inputs]
                found, answers = list(compress(found, taken)), list(compress(answers, taken))
                ids, raw_inputs = list(compress(ids, taken)), list(compress(raw_inputs, taken))
        else:
            taken_found: list[_PlainResult] = []
            taken_answers: list[_PlainAnswer] = []
            ids, raw_inputs = [], []
            for number, (item, answer) in enumerate(zip(found, answers, strict=True), first):
                if not 200 <= answer.status_code < 300:
                    self.take_line(number, lines[number - first])
                    continue
                raw_input = self.pending.pop(item.custom_id, None)
                if raw_input is None:
                    continue  # not this shard's, or already answered
                taken_found.append(item)
                taken_answers.append(answer)
                ids.append(item.custom_id)
                raw_inputs.append(raw_input)
            found, answers = taken_found, taken_answers
        self._answered_all(found, answers, ids, raw_inputs)
        return True

    def _answered_all(
        self, found: list[_PlainResult], answers: list[_PlainAnswer], ids: list[str], raw_inputs: list[int]
    ) -> None:
        """Count and write the successful answers of a read (the lists are aligned)."""
        responses = [item.response for item in found]
        records = list(map(_OutputLine, map(self.line_id, ids), ids, responses, repeat(None), repeat(self.provider)))
        bodies: list[AnswerBody | None] = [answer.body for answer in answers]
        results = self.results
        results.completed += len(bodies)
        # A charge is what an adapter reports, never a key of a provider's line passed on as it came.
        billed: list[float | None] = [None] * len(found) if self.as_sent else [item.billed_usd for item in found]
        results.usage.add_all(bodies, billed)
        usages = [answer.body.usage for answer in answers]
        outputs = [(usage.completion_tokens or 0) if usage is not None else 0 for usage in usages]
        inputs = [(usage.prompt_tokens or 0) if usage is not None else 0 for usage in usages]
        results.sample.add_all(outputs, inputs, raw_inputs)
        self.out.write(line_encoder.encode_lines(records))

    def _answered(self, body: AnswerBody | None, billed_usd: float | None, raw_input: int) -> None:
        results = self.results
        results.completed += 1
        results.usage.add(body, billed_usd)
        results.sample.add(*_answer_tokens(body), raw_input)


class _OutputLine(msgspec.Struct, gc=False):
    """A line of the output or error file (see :mod:`gateway.pipeline.results`)."""

    id: str
    custom_id: str
    response: msgspec.Raw | None
    error: dict[str, Any] | None
    provider: str


class _PlainResult(msgspec.Struct, gc=False):
    """A result line with an answer and no error, its ``custom_id`` a string: the usual line, taken in blocks."""

    custom_id: str
    response: msgspec.Raw
    error: None = None
    billed_usd: float | None = None


class _PlainAnswer(msgspec.Struct, gc=False):
    """The answer of a :class:`_PlainResult`: an HTTP status and a body object whose token counts are integers."""

    status_code: int
    body: AnswerBody


_plain_decoder = msgspec.json.Decoder(_PlainResult)
_plain_answer_decoder = msgspec.json.Decoder(_PlainAnswer)


class _InputLine(msgspec.Struct):
    custom_id: str = ""
    body: msgspec.Raw = msgspec.Raw(b"{}")


_input_decoder = msgspec.json.Decoder(_InputLine)


def _input_estimates(input_path: Path) -> dict[str, int]:
    """The shard's custom_ids in order, each with its input tokens by the bytes / 4 rule."""
    found: dict[str, int] = {}
    for _, lines in iter_line_blocks(input_path):
        try:
            requests = list(map(_input_decoder.decode, lines))
        except msgspec.DecodeError:  # a blank line (a shard's input holds requests only)
            requests = [_input_decoder.decode(line) for line in lines if line.strip()]
        ids = [request.custom_id for request in requests]
        found.update(zip(ids, raw_input_token_counts([request.body for request in requests]), strict=True))
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
