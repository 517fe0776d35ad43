"""The sample data of ``batchgw demo`` and the summary it prints at the end."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

SYSTEM_PROMPT = "You label product reviews. Answer with exactly one word: positive, negative or neutral."
PRODUCTS = (
    "blender", "desk lamp", "running shoes", "coffee grinder", "phone case", "rain jacket", "mechanical keyboard",
    "water bottle", "air fryer", "backpack", "electric toothbrush", "office chair", "bluetooth speaker",
    "yoga mat", "kettle", "monitor stand", "travel pillow", "cast iron pan", "e-reader", "garden hose",
)  # fmt: skip
OPENINGS = {
    "positive": ("I love this {p}.", "Really happy with the {p}.", "Best {p} I have owned.", "The {p} is excellent."),
    "negative": ("Disappointed with this {p}.", "The {p} broke quickly.", "Would not buy this {p} again.",
                 "Returned the {p} after a week."),
    "neutral": ("The {p} is fine.", "An ordinary {p}.", "The {p} does what it says.", "Average {p}, nothing more."),
}  # fmt: skip
DETAILS = (
    "Shipping took {d} days.", "I have used it for {d} weeks.", "Bought it as a gift {d} months ago.",
    "It cost about {d}0 dollars.", "Ordered {d} of them for the office.",
)  # fmt: skip
CLOSINGS = {
    "positive": ("Works perfectly every day.", "Great value for the money.", "Five stars from me."),
    "negative": ("Customer support never answered.", "The build quality is poor.", "One star."),
    "neutral": ("It is neither good nor bad.", "Three stars.", "It works as expected, no more."),
}
SENTIMENTS = ("positive", "negative", "neutral")


def sample_review(index: int) -> str:
    """A deterministic product review; the same index always gives the same text."""
    sentiment = SENTIMENTS[(index * 7 + index // 5) % 3]
    product = PRODUCTS[index % len(PRODUCTS)]
    opening = OPENINGS[sentiment][(index // 3) % len(OPENINGS[sentiment])].format(p=product)
    detail = DETAILS[(index // 11) % len(DETAILS)].format(d=index % 9 + 2)
    closing = CLOSINGS[sentiment][(index // 2) % len(CLOSINGS[sentiment])]
    return f"{opening} {detail} {closing}"


def sample_requests(count: int, model: str) -> list[dict[str, Any]]:
    """``count`` chat-completion batch lines asking to label reviews, with ``max_tokens`` set."""
    return [
        {
            "custom_id": f"review-{index:05d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": sample_review(index)},
                ],
                "max_tokens": 4,
                "temperature": 0,
            },
        }
        for index in range(count)
    ]


@dataclass
class DemoOutcome:
    """What the demo gathered once its batch finished."""

    batch: Any
    detail: dict[str, Any]
    spend: dict[str, Any]
    alerts: list[dict[str, Any]]
    answered: Counter[str]
    requests: list[dict[str, Any]]
    results_path: Path
    outage_at: float | None
    gateway_url: str
    dashboard_url: str | None
    admin_key: str
    client_key: str
    control_url: str
    down: str


def _usd(value: float | str | None) -> str:
    amount = float(value or 0)
    return f"-${-amount:.4f}" if amount < 0 else f"${amount:.4f}"


def served_by(results_path: Path) -> tuple[Counter[str], int]:
    """Output lines per provider and the number of error lines, read back from the results file."""
    providers: Counter[str] = Counter()
    errors = 0
    with results_path.open(encoding="utf-8") as lines:
        for raw in lines:
            line = json.loads(raw)
            response = line.get("response") or {}
            if line.get("error") is None and response.get("status_code") == 200:
                providers[line.get("provider") or "?"] += 1
            else:
                errors += 1
    return providers, errors


def group_decisions(decisions: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[int, int]]:
    """Decisions grouped by kind, chosen provider and reason (the cause, for failovers and retries), ids and
    amounts blanked, mapped to (how many, requests moved)."""
    groups: dict[tuple[str, str, str], tuple[int, int]] = {}
    for decision in decisions:
        why = decision.get("cause") or decision.get("reason") or ""
        if decision.get("cause"):
            why = "cause: " + re.sub(r"\b\d+ request\(s\)", "some requests", re.sub(r"batch_\w+", "…", why))
        key = (decision["kind"], decision.get("chosen_provider") or "-", why)
        times, requests = groups.get(key, (0, 0))
        groups[key] = (times + 1, requests + int(decision.get("request_count") or 0))
    return groups


def check(outcome: DemoOutcome) -> list[str]:
    """What went wrong, if anything: every request answered once, a failover happened, an alert fired."""
    problems = []
    ids = [r["custom_id"] for r in outcome.requests]
    missing = [cid for cid in ids if outcome.answered.get(cid, 0) == 0]
    twice = [cid for cid, n in outcome.answered.items() if n > 1]
    if outcome.batch.status != "completed":
        problems.append(f"the batch ended {outcome.batch.status}")
    if missing:
        problems.append(f"{len(missing)} requests have no result line (e.g. {missing[0]})")
    if twice:
        problems.append(f"{len(twice)} requests have more than one result line (e.g. {twice[0]})")
    if not any(d["kind"] == "failover" for d in outcome.detail.get("decisions", [])):
        problems.append("no failover was recorded")
    if not outcome.alerts:
        problems.append("no billing alert fired")
    return problems


def print_summary(outcome: DemoOutcome, console: Console) -> list[str]:
    """Print what happened and where to look next; returns the problems found (empty: the demo succeeded)."""
    batch, meta = outcome.batch, outcome.batch.metadata or {}
    counts = batch.request_counts
    providers, error_lines = served_by(outcome.results_path)
    console.rule("[bold]What happened")
    console.print(
        f"batch {batch.id}: [bold]{batch.status}[/bold], {counts.completed:,} requests succeeded, "
        f"{counts.failed:,} failed, of {counts.total:,}",
        highlight=False,
    )
    if outcome.outage_at is not None:
        console.print(f"{outcome.down} was taken down {outcome.outage_at:.1f}s into the run", highlight=False)

    by_provider = {row["key"]: row for row in outcome.spend.get("data", [])}
    table = Table("provider", "result lines", "requests billed", "cost", "list price", "savings",
                  title="Who served the requests (cost from the ledger)", box=box.SIMPLE_HEAD)  # fmt: skip
    for name in sorted(set(providers) | set(by_provider)):
        row = by_provider.get(name, {})
        table.add_row(name, f"{providers.get(name, 0):,}", f"{row.get('requests', 0):,}", _usd(row.get("cost_usd")),
                      _usd(row.get("list_cost_usd")), _usd(row.get("savings_usd")))  # fmt: skip
    console.print(table)

    decisions = Table("kind", "times", "to", "requests", "why", box=box.SIMPLE_HEAD,
                      title="Routing decisions (GET /admin/batches/{id}; alike ones grouped)")  # fmt: skip
    for (kind, provider, why), (times, requests) in group_decisions(outcome.detail.get("decisions", [])).items():
        style = "bold yellow" if kind == "failover" else None
        decisions.add_row(kind, str(times), provider, f"{requests:,}", why, style=style)
    console.print(decisions)

    console.print(
        f"cost {_usd(meta.get('gateway_cost_usd'))} (estimated {_usd(meta.get('gateway_estimated_cost_usd'))}); "
        f"savings {_usd(meta.get('gateway_savings_usd'))} against the cheapest synchronous price of the model",
        highlight=False,
    )
    alerts = Table("alert", "message", title="Billing alerts (GET /admin/alerts)", box=box.SIMPLE_HEAD)
    for alert in reversed(outcome.alerts):
        alerts.add_row(alert["kind"], alert["message"])
    console.print(alerts if outcome.alerts else "billing alerts: none fired")

    lines = sum(outcome.answered.values())
    console.print(f"results: {outcome.results_path} ({lines:,} lines, one per custom_id, {error_lines} errors)",
                  highlight=False)  # fmt: skip
    console.rule("[bold]Where to look")
    console.print(f"gateway API   {outcome.gateway_url}/v1  (client key {outcome.client_key})", highlight=False)
    console.print(f"metrics       {outcome.gateway_url}/metrics", highlight=False)
    console.print(f"admin API     {outcome.gateway_url}/admin/...  (admin key {outcome.admin_key})", highlight=False)
    if outcome.dashboard_url:
        console.print(f"dashboard     {outcome.dashboard_url}  (log in with the admin key)", highlight=False)
    console.print(f"emulators     {outcome.control_url}/providers  (to bring {outcome.down} back: POST "
                  f"{{\"down\": \"off\"}} to /providers/{outcome.down}/faults)", highlight=False)  # fmt: skip
    return check(outcome)
