"""Token estimates for requests before they run, and the cost they project on an offer.

The method, deliberately simple and conservative:

* **input tokens**: the bytes of the request body divided by :data:`BYTES_PER_TOKEN` (4, the usual
  rule of thumb for English text with JSON around it; it overestimates for short prompts, since the
  JSON keys count too);
* **output tokens**: the request's own ``max_completion_tokens`` or ``max_tokens`` when set, the most a
  provider may write and so an upper bound; otherwise :data:`DEFAULT_OUTPUT_TOKENS`. Embeddings write
  no output tokens.

Canary runs replace these guesses with measured figures before the full job is spent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 256
EMBEDDINGS = "/v1/embeddings"


class _Line(msgspec.Struct):
    custom_id: str = ""
    body: msgspec.Raw = msgspec.Raw(b"{}")


class _Body(msgspec.Struct):
    model: str = ""
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


_line_decoder = msgspec.json.Decoder(_Line)
_body_decoder = msgspec.json.Decoder(_Body)


@dataclass(frozen=True)
class RequestEstimate:
    """Expected tokens of one request."""

    custom_id: str
    model: str
    input_tokens: int
    output_tokens: int


@dataclass
class ModelEstimate:
    """The requests of one model in a file."""

    model: str
    first_line: int
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


def estimate_body(body: bytes, endpoint: str) -> tuple[str, int, int]:
    """``(model, input tokens, output tokens)`` expected for one request body."""
    try:
        head = _body_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        head = _Body()
    output = 0 if endpoint == EMBEDDINGS else head.max_completion_tokens or head.max_tokens or DEFAULT_OUTPUT_TOKENS
    return head.model, max(1, len(body) // BYTES_PER_TOKEN), max(0, output)


def iter_estimates(path: Path, endpoint: str) -> Iterator[RequestEstimate]:
    """An estimate for every request line of a (validated) batch input file, in order."""
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            line = _line_decoder.decode(raw)
            model, input_tokens, output_tokens = estimate_body(bytes(line.body), endpoint)
            yield RequestEstimate(line.custom_id, model, input_tokens, output_tokens)


def estimate_file(path: Path, endpoint: str) -> dict[str, ModelEstimate]:
    """Requests and expected tokens per model name of a batch input file."""
    models: dict[str, ModelEstimate] = {}
    for number, request in enumerate(iter_estimates(path, endpoint), 1):
        entry = models.get(request.model)
        if entry is None:
            entry = models[request.model] = ModelEstimate(request.model, first_line=number)
        entry.requests += 1
        entry.input_tokens += request.input_tokens
        entry.output_tokens += request.output_tokens
    return models


def cost_usd(input_tokens: int, output_tokens: int, rates: tuple[float, float]) -> float:
    """USD for tokens at ``(input, output)`` USD per million tokens."""
    return (input_tokens * rates[0] + output_tokens * rates[1]) / 1_000_000
