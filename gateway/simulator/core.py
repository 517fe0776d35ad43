"""Protocol-neutral emulator machinery.

One :class:`EmulatorState` per emulated provider holds the fault settings, the request log, the stored
files, the batch jobs and a shiftable clock. A :class:`ProtocolDriver` (one per wire protocol) validates a
job's input, executes one request and writes the results; :func:`run_job` moves a job through its
lifecycle and applies the batch-level faults. The deterministic model lives here so that every protocol
answers the same text and token counts for the same prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import secrets
import shutil
import struct
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

import msgspec

if TYPE_CHECKING:
    from gateway.simulator.config import ProviderSpec

log = logging.getLogger(__name__)

Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]

DAY_S = 86_400
LOG_LIMIT = 10_000
MAX_VALIDATION_ERRORS = 100
STALL_POLL_S = 0.05
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
    stall: bool = False

    def merged(self, patch: Mapping[str, Any]) -> Faults:
        """A validated copy with ``patch`` applied; raises ``msgspec.ValidationError`` on bad input."""
        values = {**msgspec.structs.asdict(self), **patch}
        if isinstance(values.get("down"), int):
            values["down"] = str(values["down"])
        return msgspec.convert(values, Faults)


class ApiError(Exception):
    """An error answer; each protocol renders it in its own body shape (``type`` is OpenAI's vocabulary)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})


def openai_error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The ``{"error": {...}}`` body of OpenAI-compatible APIs, with all four keys present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_found(kind: str, ident: str, param: str | None = None) -> ApiError:
    """The 404 for an unknown object id."""
    return ApiError(404, f"No such {kind} object: {ident}", param=param)


def refused_key_error() -> ApiError:
    """The 401 of a call without the expected key, in words that name no key."""
    return ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


def server_error() -> ApiError:
    """The retryable 500 that injected failures answer."""
    message = "The server had an error while processing your request. Sorry about that!"
    return ApiError(500, message, type="server_error")


# --- the deterministic model ---------------------------------------------------------------------------
#
# text_tokens(t) = ceil(len(t) / 4); prompt tokens = ceil(characters of all message texts / 4) + 3 per message.
# The reply is "Echo: " + the last user message (first 200 characters), cut before the first stop string found
# in it (finish_reason "stop"), then cut to max_tokens * 4 characters when it has more than max_tokens tokens
# (finish_reason "length", completion_tokens = max_tokens). Completion tokens = text_tokens(reply).

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 3
REPLY_PREFIX = "Echo: "
ECHO_MAX_CHARS = 200


def text_tokens(text: str) -> int:
    """Tokens of a text for the emulated model: ``ceil(len(text) / 4)``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def prompt_tokens(message_texts: Sequence[str]) -> int:
    """Prompt tokens of a conversation: ``ceil(sum of characters / 4) + 3 * number of messages``."""
    return text_tokens("".join(message_texts)) + TOKENS_PER_MESSAGE * len(message_texts)


class Reply(msgspec.Struct, frozen=True):
    """What the emulated model answers to one conversation."""

    content: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


def model_reply(
    message_texts: Sequence[str], echo: str, max_tokens: int | None = None, stop: Sequence[str] = ()
) -> Reply:
    """The deterministic answer to a conversation whose last user text is ``echo``."""
    content = REPLY_PREFIX + echo[:ECHO_MAX_CHARS]
    cuts = [content.find(s) for s in stop if s and s in content]
    if cuts:
        content = content[: min(cuts)]
    tokens = text_tokens(content)
    finish: Literal["stop", "length"] = "stop"
    if max_tokens is not None and tokens > max_tokens:
        content, tokens, finish = content[: max_tokens * CHARS_PER_TOKEN], max_tokens, "length"
    return Reply(content, finish, prompt_tokens(message_texts), tokens)


def embedding_vector(text: str, dimensions: int = 8) -> list[float]:
    """A deterministic vector with values in [-1, 1] derived from the text's hash."""
    values: list[float] = []
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{len(values)}:{text}".encode()).digest()
        values.extend(round(b / 127.5 - 1.0, 6) for b in digest)
    return values[:dimensions]


def pack_floats(values: Sequence[float]) -> bytes:
    """Little-endian float32 bytes, the payload of ``encoding_format="base64"`` embeddings."""
    return struct.pack(f"<{len(values)}f", *values)


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) for a key; ``fail_fraction`` fails the custom_ids below it."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def stable_id(prefix: str, *parts: str, length: int = 24) -> str:
    """A deterministic id such as ``chatcmpl-…`` from the given parts."""
    return prefix + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def random_id(prefix: str, length: int = 24) -> str:
    return prefix + secrets.token_hex(length // 2)


# --- clock, files, log ---------------------------------------------------------------------------------


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


class StoredFile(msgspec.Struct):
    """A file held by the emulator on disk."""

    id: str
    filename: str
    purpose: str
    created_at: int
    expires_at: int | None
    path: str
    bytes: int = 0
    lines: int = 0


class FileStore:
    """Files of one emulated provider, kept in a private temporary folder made on first use."""

    CHUNK = 1024 * 1024

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.files: dict[str, StoredFile] = {}
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix=self.prefix))
        return self._root

    def remove_all(self) -> None:
        """Forget every file and delete the folder."""
        self.files.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _new(self, filename: str, purpose: str, created_at: int, expires_at: int | None) -> StoredFile:
        file_id = random_id("file-")
        return StoredFile(file_id, filename, purpose, created_at, expires_at, str(self.root / file_id))

    async def save_stream(self, read: Callable[[int], Awaitable[bytes]], max_bytes: int, **fields: Any) -> StoredFile:
        """Copy an upload chunk by chunk (``fields``: filename, purpose, created_at, expires_at).

        Raises a 413 ``ApiError`` once more than ``max_bytes`` arrived.
        """
        stored, last = self._new(**fields), b""
        with open(stored.path, "wb") as out:
            while chunk := await read(self.CHUNK):
                stored.bytes += len(chunk)
                if stored.bytes > max_bytes:
                    out.close()
                    Path(stored.path).unlink()
                    raise ApiError(413, f"File is too large: the limit is {max_bytes} bytes.", param="file")
                stored.lines += chunk.count(b"\n")
                last = chunk[-1:]
                out.write(chunk)
        stored.lines += 1 if stored.bytes and last != b"\n" else 0
        self.add(stored)
        return stored

    def write_lines(self, lines: Iterable[bytes], **fields: Any) -> StoredFile:
        """Write a JSONL file (``fields`` as for :meth:`save_stream`); it is listed once :meth:`add`-ed.

        Safe to call from a worker thread, while :meth:`add` belongs to the event loop.
        """
        stored = self._new(**fields)
        with open(stored.path, "wb") as out:
            for line in lines:
                out.write(line + b"\n")
                stored.bytes += len(line) + 1
                stored.lines += 1
        return stored

    def add(self, stored: StoredFile) -> None:
        self.files[stored.id] = stored

    def get(self, file_id: str) -> StoredFile:
        if file_id not in self.files:
            raise not_found("File", file_id)
        return self.files[file_id]

    def delete(self, file_id: str) -> StoredFile:
        stored = self.files.pop(self.get(file_id).id)
        Path(stored.path).unlink(missing_ok=True)
        return stored

    def clear(self) -> None:
        for file_id in list(self.files):
            self.delete(file_id)


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


# --- jobs ----------------------------------------------------------------------------------------------


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

    def record(self, outcome: ItemOutcome) -> None:
        self.outcomes.append(outcome)
        if outcome.ok:
            self.completed += 1
            self.input_tokens += outcome.input_tokens
            self.output_tokens += outcome.output_tokens
        else:
            self.failed += 1


class ProtocolDriver(Protocol):
    """What a wire protocol supplies to the generic machinery."""

    kind: str
    base_path: str

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
        self.reset()

    def reset(self) -> None:
        """Back to the spec's faults with no jobs, files, log or counters; call from the event loop."""
        for task in list(self._tasks):
            task.cancel()
        self.jobs.clear()
        self.files.clear()
        self.log.clear()
        self.stats = Stats()
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

    def launch(self, job: Job) -> None:
        """Register a new job and start advancing it in the running event loop."""
        self.jobs[job.id] = job
        self.stats.batches_created += 1
        task = asyncio.get_running_loop().create_task(run_job(self, job))
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


# --- the processing loop -------------------------------------------------------------------------------

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
    except Exception as exc:
        log.exception("emulated batch %s crashed", job.id)
        job.errors = [{"code": "server_error", "message": str(exc), "param": None, "line": None}]
        job.set_status("failed", state.clock.ts())


def _deadline_passed(state: EmulatorState, job: Job) -> bool:
    return job.expires_at is not None and state.clock.now() >= job.expires_at


async def _process_items(state: EmulatorState, job: Job, budget_s: float) -> tuple[str, str] | None:
    """Run the items in order; returns CANCELLED or EXPIRED when stopped early, None when all ran."""
    per_item = budget_s / max(1, len(job.items))
    start = time.monotonic()
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
        wait = start + (index + 1) * per_item - time.monotonic()
        if wait > 0.001 or index % 256 == 255:
            await asyncio.sleep(max(0.0, wait))
    return CANCELLED if job.cancel_requested else None
