"""Where one job's time went inside the gateway, read from its processes' logs.

Every stage of the data path logs a line at INFO when it is done (``batch ... validated``, ``routed into``, the
canary's ``released``, ``shard ... submitted to``, the API's ``batch.completed ... polled now`` for a provider's
webhook, ``shard ... collected``, ``batch ... completed``). A benchmark that runs one job at a time reads the
lines of its job (those naming its batch, and the shard lines written while it ran) and gives each milestone in
seconds after the client's create call, so the gateway's share of a job's time shows step by step.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ (\S+): (.*)$")

MILESTONES: tuple[tuple[str, str, bool], ...] = (
    ("validated", r"batch {batch} validated", True),
    ("routed", r"batch {batch} routed into", True),
    ("canary done", r"batch {batch}: canary of .*; released", True),
    ("submitted", r"shard \S+ submitted to", False),
    ("provider done", r"batch\.completed for batch \S+: polled now", False),
    ("collected", r"shard \S+ collected:", False),
    ("merged", r"batch {batch} completed", True),
)
"""(name, the pattern of its log line, whether the line names the batch), in the order of the data path: the job
validated, routed into shards, its canary released, its last shard submitted, the last end of a provider batch
announced by the provider's webhook, its last shard collected, its files merged. A milestone whose line names no
batch is the last such line written while the job ran."""


def log_events(log: str) -> list[tuple[float, str, str]]:
    """(unix time, logger, message) of every line of a gateway process's log."""
    events = []
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((stamp, match.group(2), match.group(3)))
    return events


def job_milestones(logs: Iterable[str], batch_id: str, created_at: float, ended_at: float) -> dict[str, float]:
    """Seconds from ``created_at`` (the client's create call, unix time) to each milestone of the job whose
    batch is ``batch_id``, from the logs of the gateway's processes; a milestone with no line (no canary, no
    webhooks) is left out. Shard lines count when written between ``created_at`` and ``ended_at``."""
    events = [event for log in logs for event in log_events(log)]
    found: dict[str, float] = {}
    # Log stamps are whole milliseconds: a line of the job may carry a stamp just before the create call returned.
    window_start = created_at - 0.001
    for name, pattern, names_batch in MILESTONES:
        wanted = re.compile(pattern.format(batch=re.escape(batch_id)))
        times = [
            stamp
            for stamp, _, message in events
            if wanted.search(message) and (names_batch or window_start <= stamp <= ended_at)
        ]
        if times:
            found[name] = max(times) - created_at
    return found


def median_milestones(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """The median of each milestone over ``runs`` (those that have it), in the order of the data path."""
    names = [name for name, _, _ in MILESTONES]
    return {name: statistics.median(values) for name in names if (values := [run[name] for run in runs if name in run])}
