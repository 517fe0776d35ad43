"""Batch jobs of an emulated provider and the loop that runs one from validating to a terminal status.

The loop applies the batch-level faults (failed requests, stall, expiry, cancel); a protocol's driver validates
the input, executes each request and writes the result files.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from gateway.simulator.errors import server_error
from gateway.simulator.model import hash_fraction

if TYPE_CHECKING:
    from gateway.simulator.state import EmulatorState

log = logging.getLogger(__name__)

STALL_POLL_S = 0.05
TURN_S = 0.002
"""Longest a running job holds the event loop between two yields. Every other job, upload, download and status
read waits for its turn, so a download moves on by a chunk only once every running job has had one: with turns
of 256 answers (about 6 ms), a finished batch's results downloaded at about 10 MB/s while five others ran."""
FREEZE_ANSWERS_EVERY = 1024
"""How many answers a running job makes between two freezes (:func:`exclude_jobs_from_gc`)."""
_exclude_jobs_from_gc = False


def exclude_jobs_from_gc() -> None:
    """Keep what jobs hold out of this process's later garbage collections: a job's requests once they are read,
    its answers every :data:`FREEZE_ANSWERS_EVERY` while it runs and the rest once it ends (for a process that
    serves emulators alone: ``batchgw simulate``).

    An emulator keeps every job's requests and answers. Left to the collector, each full collection walks all
    of them: a batch took longer the more batches came before it (validating the same 10,000 lines took 0.05 s
    to 0.5 s), and six batches running side by side cost the emulator about a quarter more CPU than the same six one
    after another. A process that runs other things beside emulators (a test run) keeps the default: frozen
    objects that later become garbage in a cycle are never freed.
    """
    global _exclude_jobs_from_gc
    _exclude_jobs_from_gc = True


class JobItem(msgspec.Struct):
    """One request of a batch: the caller's id, the request body and its 1-based input line."""

    custom_id: str
    body: dict[str, Any]
    line: int


class ItemOutcome(msgspec.Struct):
    """The result of one request: an HTTP answer, or (status_code None) the reason it never ran."""

    custom_id: str
    status_code: int | None = None
    body: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


JobStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


@dataclass
class Job:
    """A batch as the emulator tracks it, in OpenAI's status vocabulary (other protocols map it).

    ``extra`` holds protocol-specific fields such as the input and output file ids.
    """

    id: str
    endpoint: str
    created_at: int
    expires_at: int | None
    metadata: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    status: JobStatus = "validating"
    times: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    items: list[JobItem] = field(default_factory=list)
    outcomes: list[ItemOutcome] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    cancel_requested: bool = False
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def set_status(self, status: JobStatus, now: int) -> None:
        self.status = status
        self.times[f"{status}_at"] = now

    def release_answers(self) -> None:
        """Let go of the requests and answers (their counts stay): for a job whose result files hold them."""
        self.items = []
        self.outcomes = []

    def record(self, outcome: ItemOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.ok:
            self.completed += 1
            self.input_tokens += outcome.input_tokens
            self.output_tokens += outcome.output_tokens
        else:
            self.failed += 1


CANCELLED = ("batch_cancelled", "This request was not executed because the batch was cancelled.")
EXPIRED = ("batch_expired", "This request could not be executed before the completion window expired.")


async def run_job(state: EmulatorState, job: Job) -> None:
    """Move a job from validating to a terminal status, spreading the work over ``processing_delay_s``."""
    delay = state.processing_delay_s
    try:
        await asyncio.sleep(delay * 0.2)
        await asyncio.to_thread(state.driver.validate, state, job)
        if job.errors:
            job.set_status("failed", state.clock.ts())
            return
        job.total = len(job.items)
        if _exclude_jobs_from_gc:
            gc.freeze()  # its requests, kept until it ends: not walked again by each collection while it runs
        if not job.cancel_requested:
            job.set_status("in_progress", state.clock.ts())
        stopped = await _process_items(state, job, delay * 0.6)
        if stopped is None:
            job.set_status("finalizing", state.clock.ts())
            await asyncio.sleep(delay * 0.2)
        else:
            for item in job.items[len(job.outcomes) :]:
                job.record(ItemOutcome(item.custom_id, error_code=stopped[0], error_message=stopped[1]))
        outcomes = list(job.outcomes)
        if state.faults.shuffle_output:
            random.Random(job.id).shuffle(outcomes)
        for stored in await asyncio.to_thread(state.driver.finalize, state, job, outcomes):
            state.files.add(stored)
        final: JobStatus = "completed" if stopped is None else "cancelled" if stopped is CANCELLED else "expired"
        job.set_status(final, state.clock.ts())
        if state.driver.answers_in_files:
            job.release_answers()
    except Exception as exc:
        log.exception("emulated batch %s crashed", job.id)
        job.errors = [{"code": "server_error", "message": str(exc), "param": None, "line": None}]
        job.set_status("failed", state.clock.ts())
    finally:
        if _exclude_jobs_from_gc:
            gc.freeze()  # its answers


def _deadline_passed(state: EmulatorState, job: Job) -> bool:
    return job.expires_at is not None and state.clock.now() >= job.expires_at


async def _process_items(state: EmulatorState, job: Job, budget_s: float) -> tuple[str, str] | None:
    """Run the items in order; returns CANCELLED or EXPIRED when stopped early, None when all ran."""
    per_item = budget_s / max(1, len(job.items))
    start = last_turn = time.monotonic()
    for index, item in enumerate(job.items):
        while state.faults.stall and not job.cancel_requested and not _deadline_passed(state, job):
            await asyncio.sleep(STALL_POLL_S)
        faults = state.faults
        if job.cancel_requested:
            return CANCELLED
        if _deadline_passed(state, job) or (faults.expire and index >= faults.expire_after_fraction * job.total):
            return EXPIRED
        key = f"{job.id}:{item.custom_id}" if faults.fail_per_batch else item.custom_id
        if hash_fraction(key) < faults.fail_fraction:
            outcome = ItemOutcome(item.custom_id, 500, state.driver.error_body(server_error()))
        else:
            outcome = state.driver.execute(state, job, item)
        job.record(outcome)
        state.stats.requests_processed += 1
        state.stats.requests_succeeded += outcome.ok
        state.stats.requests_failed += not outcome.ok
        if _exclude_jobs_from_gc and index % FREEZE_ANSWERS_EVERY == FREEZE_ANSWERS_EVERY - 1:
            gc.freeze()  # the answers so far: with jobs side by side, each collection walked every job's answers
        now = time.monotonic()
        wait = start + (index + 1) * per_item - now
        if wait > 0.001 or now - last_turn >= TURN_S:
            await asyncio.sleep(max(0.0, wait))
            last_turn = time.monotonic()
    return CANCELLED if job.cancel_requested else None
