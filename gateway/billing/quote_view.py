"""A quote as the JSON the estimate endpoints answer and ``batchgw estimate`` prints."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gateway.billing.quote import Quote


def quote_view(quote: Quote) -> dict[str, Any]:
    """Every offer's figures, the advisor's recommendations and the problems that would stop routing."""
    low, high = quote.chosen_range_usd
    return {
        "object": "estimate",
        "policy": quote.policy,
        "chosen_cost_usd": round(quote.chosen_cost_usd, 6),
        "chosen_cost_range_usd": [round(low, 6), round(high, 6)],
        "problems": quote.problems,
        "data": [asdict(row) | {"savings_usd": round(row.savings_usd, 6)} for row in quote.rows],
        "advice": [asdict(advice) for advice in quote.advice],
    }
