"""Result lines: the shapes of the output and error files, shared by collection, settling and merge.

Every line of an output or error file is OpenAI's (``id``, ``custom_id``, ``response``, ``error``) plus
``provider``, the provider that answered it. Lines are decoded only as far as a step needs
(``custom_id``, the status code, the usage) and written with one encoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec

from gateway.billing.history import Sample
from gateway.providers.openai_wire import normalised_output_line
from gateway.translate import MalformedResult

# The structs an answer's usage is read into hold numbers and JSON values only, never a cycle: they are left out
# of the garbage collector, which a shard's tens of thousands of them would otherwise set off again and again.

Count = Annotated[int, msgspec.Meta(ge=0)]
"""A token count as the typed reading takes it; any other value is read loosely (see :func:`_count`)."""


class PromptDetails(msgspec.Struct, gc=False):
    """``usage.prompt_tokens_details`` as collection reads it."""

    cached_tokens: Count | None = None
    cache_write_tokens: Count | None = None


class CompletionDetails(msgspec.Struct, gc=False):
    """``usage.completion_tokens_details`` as collection reads it."""

    reasoning_tokens: Count | None = None


class TokenUsage(msgspec.Struct, gc=False):
    """An answer's ``usage``: the token counts collection adds up (absent or null counts are 0)."""

    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None
    prompt_tokens_details: PromptDetails | None = None
    completion_tokens_details: CompletionDetails | None = None


class AnswerBody(msgspec.Struct, gc=False):
    """What collection reads of an answer's body: its usage and the service tier that served it."""

    usage: TokenUsage | None = None
    service_tier: Any = None


class _LooseAnswerBody(msgspec.Struct):
    usage: Any = None
    service_tier: Any = None


class _Answer(msgspec.Struct):
    status_code: Any = None
    body: msgspec.Raw = msgspec.Raw(b"null")


class _ResultEnvelope(msgspec.Struct):
    custom_id: Any = None
    response: msgspec.Raw = msgspec.Raw(b"null")
    error: dict[str, Any] | None = None
    billed_usd: float | None = None


@dataclass(slots=True)
class ResultLine:
    """A provider result line, decoded as far as collection needs; the response stays the provider's bytes."""

    custom_id: Any
    response: msgspec.Raw | None
    """The answer as it arrived (written to the output unchanged), None when there is none."""
    error: dict[str, Any] | None
    billed_usd: float | None
    """What the provider billed for this answer, where it reports its charge (see the adapter contract)."""
    status_code: Any
    """The HTTP status of the request's answer (None when it has no response)."""
    body: AnswerBody | None
    """The answer body's usage and served tier (None when the body is not an object)."""

    @property
    def ok(self) -> bool:
        """True for a 2xx answer without an error."""
        status = self.status_code
        return self.error is None and isinstance(status, int) and 200 <= status < 300


_envelope_decoder = msgspec.json.Decoder(_ResultEnvelope)
_answer_decoder = msgspec.json.Decoder(_Answer | None)
_body_decoder = msgspec.json.Decoder(AnswerBody)
_loose_body_decoder = msgspec.json.Decoder(_LooseAnswerBody)


def decode_result(line: bytes) -> ResultLine:
    """One result line, its response scanned for the status code, usage and tier only.

    Raises :class:`msgspec.DecodeError` or :class:`msgspec.ValidationError` for a line that is not a UTF-8 JSON
    object (or is nested too deeply to read), or whose ``response`` is neither an object nor null.
    """
    try:
        line.decode()  # the response is passed on unread: it must be UTF-8 for the client's output file
        envelope = _envelope_decoder.decode(line)
        answer = _answer_decoder.decode(envelope.response)
        body = _answer_body(answer.body) if answer is not None and memoryview(answer.body)[:1] == b"{" else None
    except UnicodeDecodeError:
        raise msgspec.DecodeError("not valid UTF-8") from None
    except RecursionError:
        raise msgspec.DecodeError("nested too deeply to read") from None
    result = ResultLine(envelope.custom_id, None, envelope.error, envelope.billed_usd, None, None)
    if answer is not None:
        result.response, result.status_code, result.body = envelope.response, answer.status_code, body
    return result


def _answer_body(raw: msgspec.Raw) -> AnswerBody:
    """The body's usage and tier: typed at once when its counts are integers of at least 0 (the usual case), else
    read loosely, so that a provider writing ``12.0`` or ``"12"`` still counts and one writing nonsense (or a
    negative count) counts 0."""
    try:
        return _body_decoder.decode(raw)
    except msgspec.ValidationError:
        loose = _loose_body_decoder.decode(raw)
        return AnswerBody(usage=_loose_usage(loose.usage), service_tier=loose.service_tier)


def _loose_usage(usage: Any) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    prompt = prompt if isinstance(prompt, dict) else {}
    completion = completion if isinstance(completion, dict) else {}
    return TokenUsage(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        prompt_tokens_details=PromptDetails(
            cached_tokens=_count(prompt.get("cached_tokens")),
            cache_write_tokens=_count(prompt.get("cache_write_tokens")),
        ),
        completion_tokens_details=CompletionDetails(_count(completion.get("reasoning_tokens"))),
    )


def _count(value: Any) -> int:
    """A token count as a provider may write it (an integer, a float or a numeric string, ``"12"`` or
    ``"1e3"``); 0 for anything else, a negative count included."""
    if isinstance(value, bool):
        return 0
    try:
        return max(0, int(float(value) if isinstance(value, str) else value))
    except (TypeError, ValueError, OverflowError):
        return 0


class _IdLine(msgspec.Struct):
    custom_id: str = ""


id_decoder = msgspec.json.Decoder(_IdLine)
encoder = msgspec.json.Encoder()


RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
"""Besides every 5xx: statuses a later try may not get."""
RETRYABLE_ERROR_CODES = frozenset(
    {"batch_expired", "timeout", "server_error", "rate_limit_exceeded", "overloaded_error", "api_error"}
)
"""Error codes of result lines without an HTTP status that a later try may not get."""


def retryable(status_code: Any, error: Any) -> bool:
    """Whether a failed result line is worth another try."""
    if isinstance(status_code, int) and status_code > 0:
        return status_code in RETRYABLE_STATUS or status_code >= 500
    code = error.get("code") if isinstance(error, dict) else None
    return code in RETRYABLE_ERROR_CODES


STANDARD_TIERS = frozenset({"default", "standard"})
"""``service_tier`` values of an answer served at the standard tier (OpenAI says ``default``)."""


@dataclass
class Usage:
    """Tokens reported by a provider's answers.

    ``asked_tier`` is the service tier the shard's requests asked for; answers the provider served at the
    standard tier instead (a priority request downgraded), and flex answers that do not say which tier served
    them, are also counted in ``standard_input`` and ``standard_output``: they are billed at the standard rate.
    Answers whose provider reported what it billed for them add that to ``billed_usd`` and their tokens also to
    the ``billed_*`` counts: the ledger takes the reported charge for those and prices only the rest.
    """

    input: int = 0
    output: int = 0
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0
    requests: int = 0
    asked_tier: str = "standard"
    standard_input: int = 0
    standard_output: int = 0
    billed_usd: float = 0.0
    billed_input: int = 0
    billed_output: int = 0
    billed_cached: int = 0
    billed_cache_write: int = 0

    def add(self, body: AnswerBody | None, billed_usd: float | None = None) -> None:
        """Add one successful answer's ``usage`` (and what the provider billed for it, if it said)."""
        self.requests += 1
        if billed_usd is not None:
            self.billed_usd += billed_usd
        usage = body.usage if body is not None else None
        if usage is None:
            return
        prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
        cached = written = 0
        if (details := usage.prompt_tokens_details) is not None:
            cached, written = details.cached_tokens or 0, details.cache_write_tokens or 0
        self.input += prompt
        self.output += completion
        self.cached += cached
        self.cache_write += written
        if (output_details := usage.completion_tokens_details) is not None:
            self.reasoning += output_details.reasoning_tokens or 0
        if billed_usd is not None:
            self.billed_input += prompt
            self.billed_output += completion
            self.billed_cached += cached
            self.billed_cache_write += written
        elif self._served_at_standard(body.service_tier if body is not None else None):
            self.standard_input += prompt
            self.standard_output += completion

    def add_all(self, bodies: list[AnswerBody | None], billed_usd: list[float | None]) -> None:
        """Add many successful answers at once, as :meth:`add` adds each (the lists are aligned)."""
        if self.asked_tier != "standard" or any(usd is not None for usd in billed_usd):
            for body, usd in zip(bodies, billed_usd, strict=True):
                self.add(body, usd)
            return
        # The usual case (a standard tier asked, no charge reported): only the token sums change.
        self.requests += len(bodies)
        usages = [usage for body in bodies if body is not None and (usage := body.usage) is not None]
        self.input += sum([usage.prompt_tokens or 0 for usage in usages])
        self.output += sum([usage.completion_tokens or 0 for usage in usages])
        prompts = [details for usage in usages if (details := usage.prompt_tokens_details) is not None]
        self.cached += sum([details.cached_tokens or 0 for details in prompts])
        self.cache_write += sum([details.cache_write_tokens or 0 for details in prompts])
        outputs = [written for usage in usages if (written := usage.completion_tokens_details) is not None]
        self.reasoning += sum([written.reasoning_tokens or 0 for written in outputs])

    def _served_at_standard(self, served: Any) -> bool:
        """Whether an answer to a request asked at :attr:`asked_tier` is billed at the standard rate: it says it was
        served at the standard tier, or it is a flex answer that names no tier (never billed below what it may
        cost)."""
        if self.asked_tier == "standard":
            return False
        return served in STANDARD_TIERS if isinstance(served, str) else self.asked_tier == "flex"

    def as_dict(self) -> dict[str, int]:
        """``input``, ``output``, ``cached``, ``cache_write``, ``reasoning`` token counts, the ``standard_input``
        and ``standard_output`` of those served at the standard tier although another was asked for, and the
        ``billed_*`` tokens of the answers whose charge the provider reported (:attr:`billed_usd`)."""
        return {
            "input": self.input,
            "output": self.output,
            "cached": self.cached,
            "cache_write": self.cache_write,
            "reasoning": self.reasoning,
            "standard_input": self.standard_input,
            "standard_output": self.standard_output,
            "billed_input": self.billed_input,
            "billed_output": self.billed_output,
            "billed_cached": self.billed_cached,
            "billed_cache_write": self.billed_cache_write,
        }


@dataclass
class ShardResults:
    """Counts and token usage of one collected shard."""

    completed: int = 0
    failed: int = 0
    moved: int = 0
    unreadable: int = 0
    """Result lines skipped because they could not be read."""
    usage: Usage = field(default_factory=Usage)
    sample: Sample = field(default_factory=Sample)
    """Tokens per answered request, for the team's history (learned estimates)."""


def request_line_id(batch_id: str, custom_id: str) -> str:
    """A stable gateway id for one request's result line."""
    return LineIds(batch_id)(custom_id)


class LineIds:
    """:func:`request_line_id` of one batch's requests, the batch's part of the hash taken once (a shard's
    collection names tens of thousands of lines)."""

    def __init__(self, batch_id: str) -> None:
        self._batch = hashlib.sha256(f"{batch_id}\0".encode())

    def __call__(self, custom_id: str) -> str:
        digest = self._batch.copy()
        digest.update(custom_id.encode())
        return "batch_req_" + digest.hexdigest()[:24]


def error_line(batch_id: str, custom_id: str, code: str, message: str, provider: str | None) -> bytes:
    """An error-file line for a request that got no answer."""
    record = {
        "id": request_line_id(batch_id, custom_id),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message},
        "provider": provider,
    }
    return encoder.encode(record)


def iter_custom_ids(path: Path) -> Iterator[str]:
    """The custom_ids of a JSONL file of requests or results, in order (blank lines skipped)."""
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield id_decoder.decode(line).custom_id


def normalised_sent_line(line: bytes) -> bytes:
    """A provider's result line passed on as it came (see
    :attr:`~gateway.providers.base.ProviderAdapter.results_as_sent`), as its adapter would have normalised it.

    The provider's own line id is not read: every output line gets the gateway's. Raises :class:`MalformedResult`
    for a line that cannot be normalised, one nested too deeply to read included.
    """
    try:
        return normalised_output_line(line, "")
    except RecursionError:
        raise MalformedResult("nested too deeply to read") from None


def billed_usage(path: Path, as_sent: bool = False) -> Usage:
    """Usage of the successful answers in a file of provider result lines: what the provider billed. With
    ``as_sent``, the lines are the provider's own, each read as its adapter would normalise it (see
    :attr:`~gateway.providers.base.ProviderAdapter.results_as_sent`).

    Unreadable lines and repeated custom_ids count once at most.
    """
    usage = Usage()
    seen: set[str] = set()
    with path.open("rb") as handle:
        for line in handle:
            try:
                item = decode_result(normalised_sent_line(line) if as_sent else line)
            except (msgspec.DecodeError, msgspec.ValidationError, MalformedResult):
                continue
            if not isinstance(item.custom_id, str) or item.custom_id in seen or not item.ok:
                continue
            seen.add(item.custom_id)
            usage.add(item.body, item.billed_usd)
    return usage
