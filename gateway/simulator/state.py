"""What one emulated provider knows: its faults, request log, counters, clock, files and jobs.

One :class:`EmulatorState` per emulated provider, reachable in-process and through the control server. A
:class:`ProtocolDriver` (one per wire protocol) supplies the routes and the per-request work;
:func:`gateway.simulator.jobs.run_job` moves each job through its lifecycle.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import msgspec

from gateway.simulator.errors import ApiError, server_error
from gateway.simulator.file_store import FileStore, StoredFile
from gateway.simulator.jobs import ItemOutcome, Job, JobItem, run_job
from gateway.simulator.webhooks import WebhookSender

if TYPE_CHECKING:
    from gateway.simulator.config import ProviderSpec

Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]

DAY_S = 86_400
LOG_LIMIT = 10_000
LOG_DETAIL = "emulator_log_detail"  # key in the ASGI scope state where routes add details to the log entry
EMULATOR_KEY = "emulator"  # key of the EmulatorState in the provider app's state


class Faults(msgspec.Struct, forbid_unknown_fields=True):
    """Fault injection settings of one emulated provider; everything off except output shuffling."""

    down: Literal["off", "refuse", "reset", "503"] = "off"
    """``refuse``: nothing listens (connection refused); ``reset``: connections are accepted and reset at once;
    ``503``: every call answers 503. Batches already created keep running either way."""
    latency_s: NonNegFloat = 0.0
    rate_limit_next: NonNegInt = 0
    rate_limit_rate: Fraction = 0.0
    retry_after_s: NonNegInt = 1
    error_5xx_rate: Fraction = 0.0
    fail_fraction: Fraction = 0.0
    runaway_output_tokens: NonNegInt = 0
    """OpenAI protocol: chat replies of requests without max_tokens run to this many tokens (0: off), as a
    model that rambles would; the cost surprise canary runs exist to catch."""
    fail_per_batch: bool = False
    """False: the same custom_ids fail every time; True: each provider batch fails its own random-looking
    share, as transient errors do, so a retry of a failed request usually succeeds."""
    shuffle_output: bool = True
    expire: bool = False
    expire_after_fraction: Fraction = 0.5
    malformed_output_line: bool = False
    nested_output_line: bool = False
    """The first answer of an OpenAI-protocol result file (or of a Bedrock job's records, or of the inline
    results of an OpenRouter batch or a small Gemini batch) is a body nested 5,000 arrays deep: valid JSON that
    no decoder's recursion limit lets through (a poison line)."""
    stall: bool = False
    results_inline_only: bool = False
    """Mistral: a finished job names neither an output nor an error file (the API's schema allows null); its
    results are only in ``GET /v1/batch/jobs/{id}?inline=true``'s ``outputs``."""
    flex_unavailable_rate: Fraction = 0.0
    """Synchronous calls asking ``service_tier: "flex"`` refused at this rate with OpenAI's unbilled 429
    ``resource_unavailable`` (flex capacity short)."""
    flex_unavailable_next: NonNegInt = 0
    """The next this many flex calls are refused so (then the rate applies)."""
    priority_downgrade_rate: Fraction = 0.0
    """Synchronous calls asking ``service_tier: "priority"`` served at this rate as ``default`` instead (the
    ramp limit), billed at the standard rate."""

    def merged(self, patch: Mapping[str, Any]) -> Faults:
        """A validated copy with ``patch`` applied; raises ``msgspec.ValidationError`` on bad input."""
        values = {**msgspec.structs.asdict(self), **patch}
        if isinstance(values.get("down"), int):
            values["down"] = str(values["down"])
        return msgspec.convert(values, Faults)


class Clock:
    """Wall time plus an offset that can be advanced (e.g. past a batch's 24h deadline)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> float:
        return time.time() + self.offset_s

    def ts(self) -> int:
        """Integer Unix seconds."""
        return int(self.now())

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


class LogEntry(msgspec.Struct):
    """One API call seen by an emulated provider."""

    timestamp: float
    """When the call was answered."""
    method: str
    path: str
    status: int
    request_id: str
    detail: dict[str, Any] | None = None
    received_at: float | None = None
    """When the call arrived (a provider counts its rate limits from arrivals)."""


class Stats(msgspec.Struct):
    """Counters of one emulated provider since its last reset."""

    api_calls: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    batches_created: int = 0
    requests_processed: int = 0
    requests_succeeded: int = 0
    requests_failed: int = 0
    flex_refused: int = 0
    """Flex calls refused for short capacity (unbilled)."""
    usage_by_tier: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    """Input and output tokens of the synchronous chat answers by the tier that served them (``{"flex":
    {"input": n, "output": m}}``): what the provider bills at each tier's rate."""


class ProtocolDriver(Protocol):
    """What a wire protocol supplies to the generic machinery."""

    kind: str
    base_path: str
    answers_in_files: bool
    """True when nothing reads a finished job's requests and answers but its result files: the job lets them go
    once the files are written, so that an emulator serving millions of requests does not hold them all."""

    def route_handlers(self) -> list[Any]:
        """Litestar routers or controllers of the protocol's API; routes reach the state via ``emulator_of``."""
        ...

    def error_body(self, err: ApiError) -> dict[str, Any]: ...

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        """Whether the request headers (lower-case names) carry the expected key."""
        ...

    def key_refused(self, headers: Mapping[str, str]) -> ApiError:
        """The 401 of a call whose headers do not carry the expected key (e.g. :func:`refused_key_error`)."""
        ...

    def validate(self, state: EmulatorState, job: Job) -> None:
        """Fill ``job.items`` and ``job.model``, or ``job.errors`` when the input is invalid."""
        ...

    def execute(self, state: EmulatorState, job: Job, item: JobItem) -> ItemOutcome: ...

    def finalize(self, state: EmulatorState, job: Job, outcomes: Sequence[ItemOutcome]) -> list[StoredFile]:
        """Write the result files of a finished job (lines in the given order) in a worker thread.

        Returns the files for the loop to register with ``state.files.add``.
        """
        ...


class EmulatorState:
    """Everything one emulated provider knows; reachable in-process and through the control server."""

    def __init__(self, spec: ProviderSpec, driver: ProtocolDriver) -> None:
        self.spec, self.name, self.kind, self.driver = spec, spec.name, spec.kind, driver
        self.models = list(spec.models)
        self.api_key = spec.api_key
        self.processing_delay_s = spec.processing_delay_s
        self.max_file_bytes, self.max_lines = spec.max_file_bytes, spec.max_lines
        self.files = FileStore(prefix=f"batchgw-sim-{spec.name}-")
        self.jobs: dict[str, Job] = {}
        self.log: deque[LogEntry] = deque(maxlen=LOG_LIMIT)
        self._tasks: set[asyncio.Task[None]] = set()
        self.webhooks = (
            WebhookSender(spec.webhook_url, spec.webhook_secret) if spec.webhook_url and spec.webhook_secret else None
        )
        """Sends the batch-ended events, when the provider has a webhook endpoint."""
        self.calls_in_flight = 0
        """API calls received and not yet answered (a live figure: a reset leaves it as it is)."""
        self.most_calls_in_flight = 0
        """The most API calls in flight at once since the last reset (from those in flight then)."""
        self.reset()

    def reset(self) -> None:
        """Back to the spec's faults with no jobs, files, log or counters; call from the event loop."""
        for task in list(self._tasks):
            task.cancel()
        self.jobs.clear()
        self.files.clear()
        self.log.clear()
        self.stats = Stats()
        self.most_calls_in_flight = self.calls_in_flight
        self.faults = self.spec.faults.merged({})
        self.clock = Clock()
        self.rng = random.Random(0)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.files.remove_all()

    def update_faults(self, patch: Mapping[str, Any]) -> Faults:
        """Merge ``patch`` into the current faults (validated) and return the new settings."""
        self.faults = self.faults.merged(patch)
        return self.faults

    def call_fault(self, headers: Mapping[str, str]) -> ApiError | None:
        """The error an API call gets before reaching the routes, if any (outage, auth, 429, 5xx)."""
        faults = self.faults
        if faults.down == "503":
            return ApiError(503, "The server is overloaded or not ready yet.", type="server_error")
        if self.api_key and not self.driver.authorized(headers, self.api_key):
            return self.driver.key_refused(headers)
        if faults.rate_limit_next > 0 or self.rng.random() < faults.rate_limit_rate:
            faults.rate_limit_next = max(0, faults.rate_limit_next - 1)
            wait = faults.retry_after_s
            message = f"Rate limit reached for requests on {self.name}. Please try again in {wait}s."
            headers = {"retry-after": str(wait), "x-ratelimit-remaining-requests": "0"}
            return ApiError(429, message, type="requests", code="rate_limit_exceeded", headers=headers)
        if self.rng.random() < faults.error_5xx_rate:
            return server_error()
        return None

    def record_call(
        self,
        method: str,
        path: str,
        status: int,
        request_id: str,
        detail: dict[str, Any],
        received_at: float | None = None,
    ) -> None:
        self.stats.api_calls += 1
        self.log.append(LogEntry(self.clock.now(), method, path, status, request_id, detail or None, received_at))

    async def save_upload(
        self, request: Any, upload: Any, purpose: str, expires_at: int | None, max_bytes: int | None = None
    ) -> StoredFile:
        """Store a multipart upload that passed the route's checks (at most ``max_bytes``, and never more than the
        emulator's own cap), count it and note it in the call's log."""
        stored = await self.files.save_stream(
            upload.read, min(self.max_file_bytes, max_bytes or self.max_file_bytes), filename=upload.filename,
            purpose=purpose,
            created_at=self.clock.ts(), expires_at=expires_at,
        )  # fmt: skip
        self.stats.files_uploaded += 1
        self.stats.bytes_uploaded += stored.bytes
        note(request, file_id=stored.id, bytes=stored.bytes, lines=stored.lines)
        return stored

    def launch(self, job: Job) -> None:
        """Register a new job and start advancing it in the running event loop."""
        self.jobs[job.id] = job
        self.stats.batches_created += 1
        task = asyncio.get_running_loop().create_task(run_job(self, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if self.webhooks is not None:
            task.add_done_callback(lambda ran: self._announce_end(job, ran))

    def _announce_end(self, job: Job, ran: asyncio.Task[None]) -> None:
        """Send the webhook of a job that reached a terminal status (not of one stopped by a reset)."""
        if ran.cancelled() or self.webhooks is None:
            return
        ended_at = job.times.get(f"{job.status}_at", self.clock.ts())
        task = asyncio.get_running_loop().create_task(self.webhooks.send(job.id, job.status, ended_at))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request_cancel(self, job: Job) -> None:
        if not job.cancel_requested:
            job.cancel_requested = True
            job.set_status("cancelling", self.clock.ts())


def emulator_of(request: Any) -> EmulatorState:
    """The state of the provider serving a request (routes get it from the app state)."""
    state: EmulatorState = request.app.state[EMULATOR_KEY]
    return state


def note(request: Any, **detail: Any) -> None:
    """Attach details to this call's entry in the request log."""
    request.scope.get("state", {}).setdefault(LOG_DETAIL, {}).update(detail)
