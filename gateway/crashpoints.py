"""Named points where a worker can be made to die with SIGKILL, for crash-recovery testing.

Set ``BATCHGW_CRASH_AT=<point>`` (or ``<point>:<n>`` to die on the n-th pass) in a worker's
environment and the process kills itself there, with no cleanup, as a power cut would. With the
variable unset (always, in production) a crash point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "submit.after_provider_create",
    "poll.after_status",
    "collect.after_split",
    "merge.after_files_written",
    "fanout.after_request",
)

_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Die here if the environment asks for it."""
    target = os.environ.get("BATCHGW_CRASH_AT")
    if not target:
        return
    point, _, nth = target.partition(":")
    if point != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
