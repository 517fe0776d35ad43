"""Token estimates for requests before they run, and the cost they project on an offer.

An :class:`Estimator` expects, for each request of a team:

* **input tokens**: the bytes of the request body divided by :data:`BYTES_PER_TOKEN` (4), scaled by how
  far that rule was off for the team's past requests of the same model and endpoint (JSON keys count as
  bytes but not as tokens, so the rule overestimates short prompts);
* **output tokens**: the mean of what the team's past requests of the same model and endpoint actually
  wrote (:mod:`gateway.billing.history`), cut at the request's ``max_completion_tokens`` or ``max_tokens``;
  with fewer than :data:`~gateway.billing.history.MIN_HISTORY` past requests, the catalog's
  ``default_output_tokens`` of the model (else :data:`DEFAULT_OUTPUT_TOKENS`), again capped by the
  request's own limit. Embeddings write no output tokens.

Every estimate carries a range (the p50 and p90 of past requests, per request) and its basis
("from 12,000 past requests" or "no history: default"). :func:`estimate_body` is the upper bound used
for rate limits: a provider counts ``max_tokens`` against a tokens-per-minute limit whatever is written.
"""

from __future__ import annotations

import functools
import operator
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.billing.history import History
from gateway.pipeline.line_figures import LineFigures, output_cap, output_caps
from gateway.providers.jsonl import iter_line_blocks

if TYPE_CHECKING:
    from gateway.catalog.loader import OfferEntry
    from gateway.context import GatewayContext
    from gateway.db.models import Shard

BYTES_PER_TOKEN = 4
DEFAULT_OUTPUT_TOKENS = 256
EMBEDDINGS = "/v1/embeddings"


class _Line(msgspec.Struct, gc=False):
    custom_id: str = ""
    body: msgspec.Raw = msgspec.Raw(b"{}")


class _Body(msgspec.Struct):
    model: str = ""
    max_tokens: Any = None  # any type: a cap the provider will refuse must not hide the model (nor fail here)
    max_completion_tokens: Any = None

    def cap(self) -> int | None:
        """The request's own output cap, where it is a positive whole number."""
        return output_cap(self.max_completion_tokens, self.max_tokens)


class _PlainBody(msgspec.Struct, gc=False):
    """A body whose caps are absent or whole numbers: the usual request, read many at once."""

    model: str = ""
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


_line_decoder = msgspec.json.Decoder(_Line)
_body_decoder = msgspec.json.Decoder(_Body)
_plain_body_decoder = msgspec.json.Decoder(_PlainBody)


def _head(body: bytes | msgspec.Raw) -> _Body:
    try:
        return _body_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return _Body()


def raw_input_tokens(body: Sized) -> int:
    """Input tokens by the bytes / 4 rule alone (``body`` is the request body's bytes, or a raw JSON value)."""
    return max(1, len(body) // BYTES_PER_TOKEN)


def raw_input_token_counts(bodies: Iterable[Sized]) -> list[int]:
    """:func:`raw_input_tokens` of many bodies, without a call per body (a read holds thousands)."""
    return [len(body) // BYTES_PER_TOKEN or 1 for body in bodies]


def estimate_body(body: bytes, endpoint: str) -> tuple[str, int, int]:
    """``(model, input tokens, most output tokens)`` of one request body: bytes / 4 in, the request's own
    ``max_completion_tokens`` or ``max_tokens`` out (else :data:`DEFAULT_OUTPUT_TOKENS`). An upper bound,
    for rate limits; costs use an :class:`Estimator`."""
    head = _head(body)
    output = 0 if endpoint == EMBEDDINGS else head.cap() or DEFAULT_OUTPUT_TOKENS
    return head.model, raw_input_tokens(body), output


@dataclass(frozen=True)
class Basis:
    """What the estimates of one model rest on."""

    model: str
    """The logical model."""
    history: History | None
    default_output: int
    default_source: str
    """``catalog`` (the model's ``default_output_tokens``) or ``built-in``."""

    @property
    def learned(self) -> bool:
        """Estimates come from the team's history."""
        return self.history is not None and self.history.usable

    def describe(self) -> str:
        """``from 12,000 past requests`` or ``no history: default (256 output tokens)``."""
        if self.learned:
            assert self.history is not None
            return f"from {self.history.requests:,} past requests"
        return f"no history: {self.default_source} default ({self.default_output} output tokens)"


@dataclass(slots=True)
class RequestEstimate:
    """Expected tokens of one request."""

    custom_id: str
    model: str
    input_tokens: int
    output_tokens: float
    output_low: float
    """p50 of past requests (capped), or the expectation without history."""
    output_high: float
    """p90 of past requests (capped), or the expectation without history."""


@dataclass
class RequestColumns:
    """Expected tokens of many requests, one list per figure, aligned by request."""

    models: list[str]
    input_tokens: list[int]
    output_tokens: list[float]
    output_low: list[float]
    output_high: list[float]

    def __len__(self) -> int:
        return len(self.models)


@dataclass
class ModelEstimate:
    """The requests of one model in a file."""

    model: str
    first_line: int
    requests: int = 0
    input_tokens: int = 0
    basis: str = "no history: default"
    _output: float = field(default=0.0, repr=False)
    _low: float = field(default=0.0, repr=False)
    _high: float = field(default=0.0, repr=False)

    @property
    def output_tokens(self) -> int:
        """Expected output tokens of these requests."""
        return round(self._output)

    @property
    def output_low(self) -> int:
        """Output tokens at the p50 of past requests (the expectation without history)."""
        return round(self._low)

    @property
    def output_high(self) -> int:
        """Output tokens at the p90 of past requests (the expectation without history)."""
        return round(self._high)

    def add(self, request: RequestEstimate) -> None:
        """Count one request in (runs once per line of a file: sums only, rounded when read)."""
        self.requests += 1
        self.input_tokens += request.input_tokens
        self._output += request.output_tokens
        self._low += request.output_low
        self._high += request.output_high

    def add_columns(self, columns: RequestColumns, indexes: Iterable[int] | None = None) -> None:
        """Count in the requests of ``columns`` (those at ``indexes``, else all) as :meth:`add` counts each."""
        if indexes is None:
            self.requests += len(columns)
            self.input_tokens += sum(columns.input_tokens)
            # Added in order, one by one, as add() would: the float sums come out the same.
            self._output = functools.reduce(operator.add, columns.output_tokens, self._output)
            self._low = functools.reduce(operator.add, columns.output_low, self._low)
            self._high = functools.reduce(operator.add, columns.output_high, self._high)
            return
        for index in indexes:
            self.requests += 1
            self.input_tokens += columns.input_tokens[index]
            self._output += columns.output_tokens[index]
            self._low += columns.output_low[index]
            self._high += columns.output_high[index]

    def merged_with(self, other: ModelEstimate) -> None:
        """Add another model's requests (to price a file as one model)."""
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self._output += other._output
        self._low += other._low
        self._high += other._high


class Estimator:
    """Expected tokens per request of one team's requests to one endpoint (see the module docstring)."""

    def __init__(
        self,
        endpoint: str,
        histories: Mapping[str, History] | None = None,
        defaults: Mapping[str, int] | None = None,
        logical: Callable[[str], str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.histories = dict(histories or {})
        self.defaults = dict(defaults or {})
        self.logical = logical or (lambda name: name)
        self._bases: dict[str, Basis] = {}
        self._learned_outputs: dict[tuple[str, int | None], tuple[float, float, float]] = {}

    def basis(self, name: str) -> Basis:
        """The basis of estimates for a model name as a request gives it."""
        found = self._bases.get(name)
        if found is None:
            model = self.logical(name)
            default = self.defaults.get(model)
            found = Basis(
                model=model,
                history=self.histories.get(model),
                default_output=default or DEFAULT_OUTPUT_TOKENS,
                default_source="catalog" if default else "built-in",
            )
            self._bases[name] = found
        return found

    def request(self, body: bytes, custom_id: str = "") -> RequestEstimate:
        """Expected tokens of one request body."""
        head = _head(body)
        raw = raw_input_tokens(body)
        scale = self._input_scale(head.model)
        input_tokens = raw if scale is None else max(1, round(raw * scale))
        return RequestEstimate(custom_id, head.model, input_tokens, *self._outputs(head.model, head.cap()))

    def requests(self, bodies: Sequence[bytes | msgspec.Raw]) -> RequestColumns:
        """Expected tokens of many request bodies (bytes or raw JSON values) at once, as :meth:`request` expects
        each: the work per distinct model and output cap is done once, not once a line."""
        try:
            heads: list[Any] = list(map(_plain_body_decoder.decode, bodies))
        except (msgspec.DecodeError, msgspec.ValidationError):
            heads = list(map(_head, bodies))
        names = [head.model for head in heads]
        return self.columns(names, raw_input_token_counts(bodies), output_caps(heads))

    def columns(self, names: list[str], raw: list[int], caps: Sequence[int]) -> RequestColumns:
        """Expected tokens of requests of the models ``names``, with ``raw`` input tokens by the bytes / 4 rule
        and output ``caps`` (:data:`~gateway.pipeline.line_figures.NO_CAP`: none), as :meth:`request` expects
        each."""
        keys = list(zip(names, caps, strict=True))
        scales = {name: self._input_scale(name) for name in set(names)}
        if any(scale is not None for scale in scales.values()):
            raw = [
                tokens if (scale := scales[name]) is None else max(1, round(tokens * scale))
                for name, tokens in zip(names, raw, strict=True)
            ]
        distinct = set(keys)
        if len(distinct) == 1:  # the usual read: one model, one output cap
            name, cap = distinct.pop()
            output, low, high = self._outputs(name, cap or None)
            count = len(keys)
            return RequestColumns(names, raw, [output] * count, [low] * count, [high] * count)
        outputs = {(name, cap): self._outputs(name, cap or None) for name, cap in distinct}
        expected = [outputs[key] for key in keys]
        return RequestColumns(
            names,
            raw,
            [output for output, _, _ in expected],
            [low for _, low, _ in expected],
            [high for _, _, high in expected],
        )

    def _input_scale(self, name: str) -> float | None:
        """How far the bytes / 4 rule was off for the model's past requests (None: no history to say)."""
        basis = self.basis(name)
        return basis.history.input_scale if basis.learned and basis.history is not None else None

    def _outputs(self, name: str, cap: int | None) -> tuple[float, float, float]:
        """Expected, p50 and p90 output tokens of a request of the model ``name`` capped at ``cap``."""
        if self.endpoint == EMBEDDINGS:
            return 0.0, 0.0, 0.0
        basis = self.basis(name)
        if basis.learned and basis.history is not None:
            return self._learned_output(basis.model, basis.history, cap)
        expected = float(min(basis.default_output, cap) if cap else basis.default_output)
        return expected, expected, expected

    def _learned_output(self, model: str, history: History, cap: int | None) -> tuple[float, float, float]:
        """Expected, p50 and p90 output tokens of a request of ``model`` capped at ``cap``, from its history.

        Remembered per model and cap: routing asks this for every line of a file, and a file's requests
        share a few caps. A hostile file with a distinct cap per line is computed line by line past
        :data:`_REMEMBERED_CAPS` entries rather than held.
        """
        key = (model, cap)
        found = self._learned_outputs.get(key)
        if found is None:
            limit = float(cap) if cap else float("inf")
            found = (
                history.expected_output(cap),
                min(history.quantile(0.5), limit),
                min(history.quantile(0.9), limit),
            )
            if len(self._learned_outputs) < _REMEMBERED_CAPS:
                self._learned_outputs[key] = found
        return found


_REMEMBERED_CAPS = 4096
"""Learned output estimates an :class:`Estimator` keeps, one per model and request cap."""


def iter_request_columns(path: Path, estimator: Estimator) -> Iterator[RequestColumns]:
    """The estimates of a (validated) batch input file's request lines, in order, a read's lines at a time."""
    for _, lines in iter_line_blocks(path):
        try:
            requests = list(map(_line_decoder.decode, lines))
        except msgspec.DecodeError:  # a blank line
            requests = [_line_decoder.decode(line) for line in lines if line.strip()]
        if requests:
            yield estimator.requests([request.body for request in requests])


@dataclass
class LineEstimates:
    """Each request line's model name and expected tokens, in the file's order, in 16 bytes a line (an index into
    the file's model names, the input tokens, the expected output tokens), so that writing the shards need not
    decode the lines again."""

    names: list[str] = field(default_factory=list)
    """The model names of the file's requests, as they first appear."""
    name_of_line: array[int] = field(default_factory=lambda: array("I"))
    input_tokens: array[int] = field(default_factory=lambda: array("I"))
    output_tokens: array[float] = field(default_factory=lambda: array("d"))
    _name_index: dict[str, int] = field(default_factory=dict, repr=False)

    def add_columns(self, columns: RequestColumns) -> None:
        """Record the next lines' estimates (input tokens held to what an entry holds)."""
        names = dict.fromkeys(columns.models)
        for name in names:
            if name not in self._name_index:
                self._name_index[name] = len(self.names)
                self.names.append(name)
        if len(names) == 1:
            self.name_of_line.extend(array("I", [self._name_index[columns.models[0]]]) * len(columns))
        else:
            self.name_of_line.extend([self._name_index[name] for name in columns.models])
        tokens = columns.input_tokens
        self.input_tokens.extend(
            tokens if max(tokens) <= _MAX_RECORDED_TOKENS else [min(t, _MAX_RECORDED_TOKENS) for t in tokens]
        )
        self.output_tokens.extend(columns.output_tokens)

    def line(self, number: int) -> tuple[str, int, float]:
        """``(model name, input tokens, expected output tokens)`` of the ``number``-th request (0-based)."""
        return self.names[self.name_of_line[number]], self.input_tokens[number], self.output_tokens[number]

    def __len__(self) -> int:
        return len(self.name_of_line)


_MAX_RECORDED_TOKENS = 2**32 - 1
"""Input tokens of a line as :class:`LineEstimates` keeps them (a line would need 16 GB to pass it)."""


def estimate_file(path: Path, endpoint: str, estimator: Estimator | None = None) -> dict[str, ModelEstimate]:
    """Requests and expected tokens per model name of a batch input file (no history: the defaults)."""
    return estimate_lines(path, endpoint, estimator)[0]


def estimate_lines(
    path: Path, endpoint: str, estimator: Estimator | None = None
) -> tuple[dict[str, ModelEstimate], LineEstimates]:
    """:func:`estimate_file` and, in the same pass, every line's estimate (:class:`LineEstimates`)."""
    estimator = estimator or Estimator(endpoint)
    return _summed(iter_request_columns(path, estimator), estimator)


def estimate_figures(
    figures: LineFigures, endpoint: str, estimator: Estimator | None = None
) -> tuple[dict[str, ModelEstimate], LineEstimates]:
    """:func:`estimate_lines` of a file from the figures its check kept (each request's model, body size and
    output cap), without reading the file: the same estimates."""
    estimator = estimator or Estimator(endpoint)
    return _summed(_figure_columns(figures, estimator), estimator)


_FIGURES_AT_ONCE = 65536
"""Requests estimated from their figures at a time (the columns of one step)."""


def _figure_columns(figures: LineFigures, estimator: Estimator) -> Iterator[RequestColumns]:
    names = figures.names
    for start in range(0, len(figures), _FIGURES_AT_ONCE):
        stop = min(start + _FIGURES_AT_ONCE, len(figures))
        if len(names) == 1:
            models = names * (stop - start)
        else:
            models = [names[index] for index in figures.name_of_line[start:stop]]
        raw = [size // BYTES_PER_TOKEN or 1 for size in figures.body_bytes[start:stop]]
        yield estimator.columns(models, raw, figures.caps[start:stop])


def _summed(
    request_columns: Iterable[RequestColumns], estimator: Estimator
) -> tuple[dict[str, ModelEstimate], LineEstimates]:
    """Each model's estimate, and every line's, from a file's requests' columns in order."""
    models: dict[str, ModelEstimate] = {}
    lines = LineEstimates()
    for columns in request_columns:
        names = dict.fromkeys(columns.models)
        for name in names:
            if name not in models:
                basis = estimator.basis(name).describe()
                first_line = len(lines) + columns.models.index(name) + 1
                models[name] = ModelEstimate(name, first_line=first_line, basis=basis)
        if len(names) == 1:
            models[columns.models[0]].add_columns(columns)
        else:
            for name in names:
                models[name].add_columns(columns, [i for i, model in enumerate(columns.models) if model == name])
        lines.add_columns(columns)
    return models, lines


async def team_estimator(context: GatewayContext, team_id: str | None, endpoint: str) -> Estimator:
    """The estimator of a team (None: no history, defaults only) for requests to ``endpoint``."""
    from gateway.db import history as history_db  # here: collection imports this module in its CPU processes
    from gateway.db.unit_of_work import reading

    histories: dict[str, History] = {}
    if team_id:
        async with reading(context.sessions) as session:
            rows = await history_db.output_stats(session, team_id, endpoint)
        histories = {
            row.model: History.of(
                requests=row.requests,
                output_tokens=row.output_tokens,
                input_tokens=row.input_tokens,
                estimated_input_tokens=row.estimated_input_tokens,
                histogram=row.histogram,
            )
            for row in rows
        }
    catalog = context.offers.catalog.data.models
    defaults = {name: entry.default_output_tokens for name, entry in catalog.items() if entry.default_output_tokens}

    # Lines moved by a failover already carry the provider's model id.
    by_provider_model = {priced.offer.provider_model: priced.offer.model for priced in context.offers.all_offers()}

    def logical(name: str) -> str:
        try:
            return context.offers.resolve(name).model
        except LookupError:
            return by_provider_model.get(name, name)

    return Estimator(endpoint, histories, defaults, logical)


def cost_usd(input_tokens: int, output_tokens: int, rates: tuple[float, float]) -> float:
    """USD for tokens at ``(input, output)`` USD per million tokens."""
    return (input_tokens * rates[0] + output_tokens * rates[1]) / 1_000_000


def usage_cost_usd(
    usage: Mapping[str, int], rates: tuple[float, float], cache_rates: tuple[float | None, float | None] = (None, None)
) -> float:
    """USD for a provider's reported usage: cached and cache-write input tokens at their own rates (None: the
    input rate), the rest of the input and the output at ``rates``."""
    total_in = max(0, usage.get("input", 0))
    cached = min(max(0, usage.get("cached", 0)), total_in)
    written = min(max(0, usage.get("cache_write", 0)), total_in - cached)
    cached_rate = rates[0] if cache_rates[0] is None else cache_rates[0]
    write_rate = rates[0] if cache_rates[1] is None else cache_rates[1]
    plain = total_in - cached - written
    return (plain * rates[0] + cached * cached_rate + written * write_rate + usage.get("output", 0) * rates[1]) / 1e6


def cache_rates(entry: OfferEntry | None, batch: bool) -> tuple[float | None, float | None]:
    """USD per MTok of cached (cache-read) and cache-write input tokens of a catalog offer, None where the
    catalog gives no rate (those tokens are then charged at the input rate). A provider batch takes the
    ``batch_*`` cache rates, else the synchronous cache rates."""
    if entry is None:
        return None, None
    cached, written = entry.cached_input_per_mtok, entry.cache_write_per_mtok
    if batch:
        if entry.batch_cached_input_per_mtok is not None:
            cached = entry.batch_cached_input_per_mtok
        if entry.batch_cache_write_per_mtok is not None:
            written = entry.batch_cache_write_per_mtok
    return cached, written


def unbilled(usage: Mapping[str, int]) -> dict[str, int]:
    """``usage`` without the tokens of answers whose charge the provider reported (its ``billed_*`` counts):
    the tokens the gateway prices itself."""
    rest = dict(usage)
    for name in ("input", "output", "cached", "cache_write"):
        rest[name] = usage.get(name, 0) - usage.get(f"billed_{name}", 0)
    return rest


def shard_cost(
    shard: Shard,
    usage: Mapping[str, int],
    standard_rates: tuple[float, float] | None = None,
    billed_usd: float = 0.0,
) -> tuple[float, float]:
    """``(cost, list cost)`` of a shard's usage: at the rates it pays (cached and cache-write input at their own
    rates), and at the synchronous baseline, where cache reads and writes keep the same discount.

    Answers served at the standard tier although the shard asked for another (``standard_input`` and
    ``standard_output``: a priority request downgraded) cost ``standard_rates``, the provider's standard
    synchronous rates, when given. Answers whose charge the provider reported (``billed_*`` tokens) cost
    ``billed_usd``, what it reported; their tokens still count at the list price."""
    paid = (shard.input_per_mtok, shard.output_per_mtok)
    cache = (shard.cached_input_per_mtok, shard.cache_write_per_mtok)
    priced = unbilled(usage)
    served_standard = {"input": usage.get("standard_input", 0), "output": usage.get("standard_output", 0)}
    if standard_rates is not None and (served_standard["input"] or served_standard["output"]):
        rest = {
            **priced,
            "input": priced["input"] - served_standard["input"],
            "output": priced["output"] - served_standard["output"],
        }
        cost = usage_cost_usd(rest, paid, cache) + usage_cost_usd(served_standard, standard_rates)
    else:
        cost = usage_cost_usd(priced, paid, cache)
    cost += billed_usd
    baseline = (shard.list_input_per_mtok, shard.list_output_per_mtok)
    factor = baseline[0] / paid[0] if paid[0] > 0 else 1.0
    cached, written = (None if rate is None else rate * factor for rate in cache)
    return cost, usage_cost_usd(usage, baseline, (cached, written))
