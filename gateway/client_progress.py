"""How the client commands show a batch: a live progress bar on a terminal, plain lines in a pipe or a log,
request counts and dollar amounts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import openai
    from openai.types import Batch
    from rich.console import Console

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
POLL_S = 1.0
PLAIN_EVERY_S = 5.0
"""Without a terminal, progress lines come at most this often."""


def requests_text(batch: Batch) -> str:
    """``done/total`` (with ``(N failed)``), or "-" before the batch is counted."""
    counts = batch.request_counts
    if not counts or not counts.total:
        return "-"
    failed = f" ({counts.failed} failed)" if counts.failed else ""
    return f"{counts.completed + counts.failed}/{counts.total}{failed}"


def time_text(epoch: int | None) -> str:
    """A unix time as ``YYYY-MM-DD HH:MM:SS UTC``; "-" when unset."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if epoch else "-"


def usd_text(value: str | None) -> str:
    """A metadata amount as dollars to a hundredth of a cent; "-" when the gateway has not set it."""
    if not value:
        return "-"
    try:
        return f"${Decimal(value):,.4f}"
    except InvalidOperation:
        return value


def follow(client: openai.OpenAI, batch_id: str, console: Console) -> Batch:
    """Poll the batch every ``POLL_S`` until it ends, showing its progress; returns it ended."""
    if not console.is_terminal:
        return _follow_plainly(client, batch_id, console)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}", markup=False),
        TextColumn("providers {task.fields[providers]}", markup=False),
        TextColumn("cost {task.fields[cost]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("{task.fields[waiting]}", markup=False),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("validating", total=None, failed=0, providers="-", cost="-", waiting="")
        while True:
            batch = client.batches.retrieve(batch_id)
            counts, meta = batch.request_counts, batch.metadata or {}
            progress.update(
                task,
                description=batch.status,
                total=counts.total if counts and counts.total else None,
                completed=(counts.completed + counts.failed) if counts else 0,
                failed=counts.failed if counts else 0,
                providers=meta.get("gateway_providers") or "-",
                cost=usd_text(meta.get("gateway_cost_usd")),
                waiting=meta.get("gateway_waiting", ""),
            )
            if batch.status in TERMINAL:
                return batch
            time.sleep(POLL_S)


def _follow_plainly(client: openai.OpenAI, batch_id: str, console: Console) -> Batch:
    """Progress for a pipe or a log file: one line whenever the batch's status, counts or waiting reason change,
    at most every ``PLAIN_EVERY_S`` seconds (and always the last)."""
    last_line, last_at = "", 0.0
    while True:
        batch = client.batches.retrieve(batch_id)
        counts, meta = batch.request_counts, batch.metadata or {}
        line = f"{batch.status}: {requests_text(batch)} requests done" if counts and counts.total else batch.status
        line += f", providers {meta.get('gateway_providers') or '-'}, cost {usd_text(meta.get('gateway_cost_usd'))}"
        if waiting := meta.get("gateway_waiting"):
            line += f"; {waiting}"
        finished = batch.status in TERMINAL
        if line != last_line and (finished or time.monotonic() - last_at >= PLAIN_EVERY_S):
            console.print(line)
            last_line, last_at = line, time.monotonic()
        if finished:
            return batch
        time.sleep(POLL_S)
