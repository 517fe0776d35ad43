"""The routing-policy contract: what a policy receives, what it returns, and how cost is estimated.

A policy author reads this file only. A policy is pure: given the facts of one job, the priced
offers that can serve its model and the current state of each provider, it ranks candidates best
first. It does no I/O and keeps no state between calls.

Rules every policy follows:

* A provider is *usable* when its state is known, ``healthy`` is true and its circuit is not open
  (see :func:`is_usable`). Built-in policies **drop** offers of unusable or unknown providers, so
  every returned candidate can be used; an empty list means nothing usable serves the model.
* ``share`` 1.0 on every candidate means "alternatives, best first". When a policy splits a job,
  every returned candidate takes part, each ``share`` is below 1.0 and the shares sum to 1.
* Bad client hints raise :class:`PolicyError`; the gateway answers 400 with its message.

Helpers for estimates (durations, job cost, budget caps) live in :mod:`router_policies.helpers`.

Exception hierarchy::

    ValueError
    +-- PolicyError              the client's routing hints cannot be honoured
        +-- BudgetExceeded       every usable offer costs more than the cap allows
        +-- UnknownPolicy        (router_policies.registry) no policy has that name
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Literal, Protocol, runtime_checkable

Mode = Literal["batch", "sync"]
Tier = Literal["standard", "flex", "priority"]
"""The service tier of a synchronous offer: ``flex`` is slower and may be refused, at about the batch price;
``priority`` is faster at a premium."""
Service = Literal["batch", "standard", "flex", "priority"]
"""How an offer runs the work: a provider batch, or synchronous fan-out at one of the tiers."""
CircuitState = Literal["closed", "open", "half_open"]

MTOK = 1_000_000
DEFAULT_BATCH_TURNAROUND_S = 24 * 3600.0
"""Assumed batch turnaround with no observations: the 24h every batch provider targets."""
DEFAULT_SYNC_REQUESTS_PER_MINUTE = 60.0
"""Assumed sync fan-out rate when the provider's limits are unknown; deliberately slow."""

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class PolicyError(ValueError):
    """The client's routing hints cannot be honoured; the message is shown to the client."""


class BudgetExceeded(PolicyError):
    """Every usable offer costs more than ``max_cost_usd`` or the remaining budget allows."""


def _check_price(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _require_utc(at: datetime, what: str) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got naive {at.isoformat()}")
    return at.astimezone(UTC)


@dataclass(frozen=True)
class PriceWindow:
    """A daily UTC time range with its own price, e.g. an off-peak discount.

    ``start_utc`` is inclusive and ``end_utc`` exclusive; a window whose end is not after its start
    wraps midnight ("16:30"-"00:30"). Inside a window its prices replace the offer's rate.
    """

    start_utc: str
    end_utc: str
    input_per_mtok: float
    output_per_mtok: float
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("start_utc", "end_utc"):
            if not _HHMM.match(getattr(self, name)):
                raise ValueError(f"{name} must be 'HH:MM' (00:00-23:59), got {getattr(self, name)!r}")
        if self.start_utc == self.end_utc:
            raise ValueError(f"price window {self.label or self.start_utc!r} is empty: start equals end")
        _check_price("input_per_mtok", self.input_per_mtok)
        _check_price("output_per_mtok", self.output_per_mtok)

    @property
    def start_s(self) -> int:
        """Start as seconds after midnight UTC."""
        return _seconds_of(self.start_utc)

    @property
    def end_s(self) -> int:
        """End as seconds after midnight UTC."""
        return _seconds_of(self.end_utc)

    def contains(self, at: datetime) -> bool:
        """Whether the instant ``at`` falls inside the window."""
        at = _require_utc(at, "at")
        s = at.hour * 3600 + at.minute * 60 + at.second + at.microsecond / 1e6
        if self.start_s < self.end_s:
            return self.start_s <= s < self.end_s
        return s >= self.start_s or s < self.end_s

    def next_start(self, after: datetime) -> datetime:
        """The first start of the window at or after ``after``."""
        after = _require_utc(after, "after")
        midnight = after.replace(hour=0, minute=0, second=0, microsecond=0)
        start = midnight + timedelta(seconds=self.start_s)
        return start if start >= after else start + timedelta(days=1)

    def boundaries(self, start: datetime, end: datetime) -> list[datetime]:
        """Every window start or end strictly between ``start`` and ``end``."""
        first = start.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
        days = (end - first).days + 2
        found = []
        for day in range(days):
            base = first + timedelta(days=day)
            for offset in (self.start_s, self.end_s):
                instant = base + timedelta(seconds=offset)
                if start < instant < end:
                    found.append(instant)
        return found


def _seconds_of(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 3600 + int(minutes) * 60


@dataclass(frozen=True)
class Offer:
    """One way to run a logical model: a provider, its model id, a mode and its prices (USD per MTok).

    ``batch_*_per_mtok`` of ``None`` means no batch discount (the synchronous rate applies).
    """

    provider: str
    model: str
    """The logical model name clients use."""
    provider_model: str
    input_per_mtok: float
    output_per_mtok: float
    batch_input_per_mtok: float | None = None
    batch_output_per_mtok: float | None = None
    mode: Mode = "batch"
    context_window: int | None = None
    max_output_tokens: int | None = None
    price_windows: tuple[PriceWindow, ...] = ()
    tier: Tier = "standard"
    """The service tier synchronous requests ask for (``input_per_mtok``/``output_per_mtok`` are its prices)."""

    def __post_init__(self) -> None:
        if self.mode not in ("batch", "sync"):
            raise ValueError(f"mode must be 'batch' or 'sync', got {self.mode!r}")
        if self.tier not in ("standard", "flex", "priority"):
            raise ValueError(f"tier must be 'standard', 'flex' or 'priority', got {self.tier!r}")
        if self.tier != "standard" and self.mode != "sync":
            raise ValueError(f"a {self.tier} offer runs synchronously: its mode must be 'sync'")
        for name in ("input_per_mtok", "output_per_mtok", "batch_input_per_mtok", "batch_output_per_mtok"):
            _check_price(name, getattr(self, name))
        object.__setattr__(self, "price_windows", tuple(self.price_windows))

    @property
    def service(self) -> Service:
        """``batch``, or the tier of a synchronous offer."""
        return "batch" if self.mode == "batch" else self.tier

    @property
    def run_mode(self) -> str:
        """``batch``, ``sync``, or the tier (``flex``, ``priority``) of a synchronous offer at one: the mode its
        shards, ledger rows and quotes show."""
        return self.mode if self.tier == "standard" else self.tier

    @property
    def label(self) -> str:
        """Short human name, e.g. ``openai/gpt-4o-mini (batch)`` or ``openai/gpt-5-mini (sync, flex)``."""
        tier = f", {self.tier}" if self.tier != "standard" else ""
        return f"{self.provider}/{self.provider_model} ({self.mode}{tier})"

    def base_rates(self, batch: bool) -> tuple[float, float]:
        """Input and output USD per MTok outside any price window."""
        if batch and self.batch_input_per_mtok is not None and self.batch_output_per_mtok is not None:
            return self.batch_input_per_mtok, self.batch_output_per_mtok
        return self.input_per_mtok, self.output_per_mtok

    def rates_at(self, at: datetime, batch: bool) -> tuple[float, float]:
        """Input and output USD per MTok at an instant; the first window containing it wins."""
        for window in self.price_windows:
            if window.contains(at):
                return window.input_per_mtok, window.output_per_mtok
        return self.base_rates(batch)


@dataclass(frozen=True)
class ProviderState:
    """What the gateway knows about a provider right now.

    Turnaround maps are keyed by ``Offer.provider_model`` and hold seconds from submitting a
    provider batch to its end, observed over recent batches.
    """

    provider: str
    healthy: bool = True
    circuit: CircuitState = "closed"
    in_flight: int = 0
    """Provider batches (shards) of this gateway running there now."""
    max_in_flight: int | None = None
    turnaround_p50_s: Mapping[str, float] = field(default_factory=dict)
    turnaround_p90_s: Mapping[str, float] = field(default_factory=dict)
    queue_wait_s: float | None = None
    """Estimated wait before a new shard starts (e.g. behind the in-flight cap)."""
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_requests_per_batch: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "turnaround_p50_s", MappingProxyType(dict(self.turnaround_p50_s)))
        object.__setattr__(self, "turnaround_p90_s", MappingProxyType(dict(self.turnaround_p90_s)))

    @property
    def free_slots(self) -> float:
        """Shards that can start now without queueing (infinite when uncapped)."""
        return math.inf if self.max_in_flight is None else max(0, self.max_in_flight - self.in_flight)


@dataclass(frozen=True)
class Hints:
    """The client's validated routing hints (see ``router_policies.registry.parse_hints``)."""

    policy: str | None = None
    deadline_s: float | None = None
    providers: tuple[str, ...] = ()
    """Preferred providers, most preferred first."""
    weights: Mapping[str, float] = field(default_factory=dict)
    max_cost_usd: float | None = None
    tier: Service | None = None
    """Only offers of this service: ``batch``, ``standard``, ``flex`` or ``priority`` (the ``tier`` key)."""
    extra: Mapping[str, str] = field(default_factory=dict)
    """Metadata keys the gateway does not interpret, for third-party policies."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", tuple(self.providers))
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class JobFacts:
    """The job to place: one logical model's share of a client batch."""

    model: str
    request_count: int
    est_input_tokens: int
    est_output_tokens: int
    completion_window_s: float = DEFAULT_BATCH_TURNAROUND_S
    deadline_s: float | None = None
    """Seconds from ``now`` by which the client wants results (the engine copies ``hints.deadline_s``)."""
    now: datetime = field(default_factory=_utc_now)
    hints: Hints = field(default_factory=Hints)
    remaining_budget_usd: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", _require_utc(self.now, "now"))
        for name in ("request_count", "est_input_tokens", "est_output_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")

    @property
    def time_limit_s(self) -> float:
        """Seconds the job may take: the deadline, capped by the completion window."""
        if self.deadline_s is None:
            return self.completion_window_s
        return min(self.deadline_s, self.completion_window_s)

    @property
    def cost_cap_usd(self) -> float | None:
        """The tighter of ``max_cost_usd`` and the remaining budget, if either is set."""
        caps = [c for c in (self.hints.max_cost_usd, self.remaining_budget_usd) if c is not None]
        return min(caps) if caps else None


@dataclass(frozen=True)
class Candidate:
    """One ranked choice: an offer, what it is expected to cost, and why it sits where it does."""

    offer: Offer
    estimated_cost_usd: float
    reason: str
    start_at: datetime | None = None
    """Hold the job until then (e.g. an off-peak window); ``None`` = start now."""
    share: float = 1.0
    """Fraction of the job's requests this candidate takes (see the module docstring)."""


@runtime_checkable
class Policy(Protocol):
    """A routing policy. Implementations are pure and must not keep per-job state."""

    name: str

    def rank(self, job: JobFacts, offers: Sequence[Offer], states: Mapping[str, ProviderState]) -> list[Candidate]:
        """Candidates for ``job``, best first; never an unusable provider first."""
        ...


def estimate_cost(
    offer: Offer,
    input_tokens: int,
    output_tokens: int,
    at: datetime | None = None,
    batch: bool | None = None,
    duration_s: float = 0.0,
) -> float:
    """USD for the tokens on this offer.

    ``batch`` picks the batch or synchronous rate (default: the offer's mode). ``at`` is when the
    work runs; without it price windows are ignored. With ``duration_s`` > 0 the tokens are assumed
    to be spent evenly over ``[at, at + duration_s]`` and each window prices its part.
    """
    if input_tokens < 0 or output_tokens < 0:
        raise ValueError("token counts must be >= 0")
    use_batch = offer.mode == "batch" if batch is None else batch
    if at is None or not offer.price_windows:
        rate_in, rate_out = offer.base_rates(use_batch)
    elif duration_s <= 0:
        rate_in, rate_out = offer.rates_at(_require_utc(at, "at"), use_batch)
    else:
        rate_in, rate_out = _average_rates(offer, _require_utc(at, "at"), duration_s, use_batch)
    return (input_tokens * rate_in + output_tokens * rate_out) / MTOK


def _average_rates(offer: Offer, start: datetime, duration_s: float, batch: bool) -> tuple[float, float]:
    end = start + timedelta(seconds=duration_s)
    cuts = sorted({start, end, *(b for w in offer.price_windows for b in w.boundaries(start, end))})
    total_in = total_out = 0.0
    for left, right in itertools.pairwise(cuts):
        seconds = (right - left).total_seconds()
        rate_in, rate_out = offer.rates_at(left + (right - left) / 2, batch)
        total_in += rate_in * seconds
        total_out += rate_out * seconds
    return total_in / duration_s, total_out / duration_s


def is_usable(state: ProviderState | None) -> bool:
    """A provider may receive work: its state is known, it is healthy and its circuit is not open."""
    return state is not None and state.healthy and state.circuit != "open"
