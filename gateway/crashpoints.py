"""Named points where a worker can be made to die (SIGKILL) or freeze (SIGSTOP), for failure testing.

Set ``BATCHGW_CRASH_AT=<point>`` (or ``<point>:<n>`` to die on the n-th pass) in a worker's
environment and the process kills itself there, with no cleanup, as a power cut would. Set
``BATCHGW_FREEZE_AT=<point>`` (or ``<point>:<n>``) and it stops itself there instead, as a long GC
pause or a frozen VM would: it goes on where it stopped once sent SIGCONT, possibly long after its
lease expired. With the variables unset (always, in production) a point costs one dictionary lookup.
Point ``join.after_results`` is passed in the worker's CPU process (:mod:`gateway.cpu_pool`), which inherits
the environment and counts its own passes: a process started after one died passes it again (with
``worker.cpu_processes=0`` it is passed in the worker itself).
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "route.after_shards_written",
    "submit.before_provider_create",
    "submit.after_provider_create",
    "poll.after_status",
    "join.after_results",
    "collect.after_split",
    "merge.after_files_written",
    "fanout.after_request",
)

_passes: dict[str, int] = {}


def _due(variable: str, name: str) -> bool:
    target = os.environ.get(variable)
    if not target:
        return False
    point, _, nth = target.partition(":")
    if point != name:
        return False
    key = f"{variable}:{name}"
    _passes[key] = _passes.get(key, 0) + 1
    return _passes[key] == int(nth or 1)


def crash_point(name: str) -> None:
    """Die here if the environment asks for it."""
    if _due("BATCHGW_CRASH_AT", name):
        os.kill(os.getpid(), signal.SIGKILL)


def freeze_point(name: str) -> None:
    """Stop this process here (once) if the environment asks for it; it resumes on SIGCONT."""
    if _due("BATCHGW_FREEZE_AT", name):
        os.kill(os.getpid(), signal.SIGSTOP)
