"""Routing policies for batch-gateway: a package of its own, importable without the gateway."""

from router_policies.base import (
    DEFAULT_BATCH_TURNAROUND_S,
    DEFAULT_SYNC_REQUESTS_PER_MINUTE,
    BudgetExceeded,
    Candidate,
    CircuitState,
    Hints,
    JobFacts,
    Mode,
    Offer,
    Policy,
    PolicyError,
    PriceWindow,
    ProviderState,
    estimate_cost,
    is_usable,
)

__all__ = [
    "DEFAULT_BATCH_TURNAROUND_S",
    "DEFAULT_SYNC_REQUESTS_PER_MINUTE",
    "BudgetExceeded",
    "Candidate",
    "CircuitState",
    "Hints",
    "JobFacts",
    "Mode",
    "Offer",
    "Policy",
    "PolicyError",
    "PriceWindow",
    "ProviderState",
    "estimate_cost",
    "is_usable",
]
