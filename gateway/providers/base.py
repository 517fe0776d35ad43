"""The adapter contract every provider kind implements.

A provider author reads this file only. An adapter turns one *shard* (a slice of a client batch,
as OpenAI-format JSONL lines) into work at one provider and brings the results back as
OpenAI-format output lines. Adapters never touch the database: the engine records intent before
calling them and reconciles after a crash through :meth:`ProviderAdapter.find_submitted`.

A kind with a batch API implements submit / find_submitted / poll / fetch_results / cancel and
health; a kind without one sets ``executes_locally`` and implements execute and health only (the
batch methods it leaves alone raise :class:`CapabilityNotSupported`). Kinds that speak HTTP inherit
:class:`gateway.providers.http.HttpAdapter`, which holds retries, downloads and error hygiene.

Exception hierarchy::

    ProviderError                    any failure talking to a provider
    +-- ProviderUnavailable          transient: connection refused, timeout, 5xx; retry later
    |   +-- ProviderRateLimited      429; ``retry_after_s`` says when
    +-- ProviderRejected             permanent for this input: 4xx other than 429
    |   +-- ProviderAuthFailed       401/403: the configured key is wrong or lacks permission
    +-- CapabilityNotSupported       the provider kind cannot do this at all
    SubmitWithdrawn                  not a failure: the engine called a create off (ShardSubmission.may_create)

Messages of these exceptions may reach clients and logs: they never carry a key, a fragment of
one, or a provider's URL or host (the provider's configured name stands in for those).
"""

from __future__ import annotations

import abc
import enum
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import httpx

    from gateway.providers.config import ProviderConfig


class ProviderError(Exception):
    """A provider call failed. Messages never contain credentials."""


class ProviderUnavailable(ProviderError):
    """Transient failure (network, timeout, 5xx): the same call may succeed later.

    ``retry_after_s`` is the provider's own hint of when to try again, if it gave one.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderRateLimited(ProviderUnavailable):
    """The provider answered 429."""


class ProviderRejected(ProviderError):
    """The provider refused the request for a reason retrying will not fix (4xx)."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ProviderAuthFailed(ProviderRejected):
    """The provider refused the configured key (401, 403 or the provider's equivalent).

    Nothing sent to this provider will succeed until an operator fixes the key: the message names
    the environment variable to check, never the key.
    """


class SubmitWithdrawn(Exception):
    """The engine withdrew a submission just before its create call (its worker no longer owns the shard).

    Not a provider failure: nothing was created, and the shard's new owner submits it.
    """


class CapabilityNotSupported(ProviderError):
    """This provider kind lacks the capability asked for (e.g. cancel on a sync endpoint)."""


class UnsupportedEndpoint(CapabilityNotSupported, ProviderRejected):
    """The shard's endpoint is one this provider does not serve; permanent, so the engine fails the shard.
    Routing asks :meth:`ProviderAdapter.serves` first, so this only meets a provider pinned by hand."""


class ProviderBatchState(enum.StrEnum):
    """Gateway-neutral state of one provider batch."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the provider will not change this batch any more."""
        return self in _TERMINAL


_TERMINAL = {
    ProviderBatchState.COMPLETED,
    ProviderBatchState.FAILED,
    ProviderBatchState.EXPIRED,
    ProviderBatchState.CANCELLED,
}


log = logging.getLogger(__name__)

LOCAL_BATCH_PREFIX = "local-empty-"
"""Id prefix of a "provider batch" whose every request failed translation: nothing was sent, so polling it
reads completed and its results are the 400 lines of its requests (adapters that translate use it)."""


def unix_time(value: Any) -> int | None:
    """Unix seconds of an ISO 8601 / RFC 3339 timestamp (as providers write them), None if absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


@dataclass(frozen=True)
class ShardSubmission:
    """What the engine hands an adapter to submit: one shard's input, already written to disk."""

    shard_id: str
    submit_token: str
    """Opaque tag stored with the provider batch so a crashed submit can be found again."""
    endpoint: str
    provider_model: str
    input_path: Path
    """OpenAI-format batch input lines, ``body.model`` already set to ``provider_model``."""
    request_count: int
    window_s: float = 24 * 3600.0
    """Seconds left of the client's completion window: the longest provider window that fits is asked for."""
    may_create: Callable[[], bool] = field(default=lambda: True, compare=False)
    """Asked right before each create call, after any upload, and again before each write of the create
    request: ``False`` raises :class:`SubmitWithdrawn`. The engine answers whether its worker still holds the
    shard's lease, so a worker frozen during the upload, or during the create call, creates nothing when it
    wakes."""


@dataclass(frozen=True)
class SubmitResult:
    """Ids the provider gave the submitted shard."""

    provider_batch_id: str
    provider_file_id: str | None = None


class CreatesAnsweredHere:
    """Provider batch ids by submit token, for the creates this process saw answered (most recent ones kept).

    Crash reconciliation for kinds whose batches carry no tag the gateway could read back (Anthropic,
    OpenRouter): :meth:`ProviderAdapter.find_submitted` can adopt only what it knows for certain. After a
    restart nothing is known, and the engine submits again: a possible duplicate (billed, its results
    ignored), never another shard's batch adopted."""

    def __init__(self, keep: int = 10_000) -> None:
        self._ids: OrderedDict[str, str] = OrderedDict()
        self._keep = keep

    def remember(self, submit_token: str, provider_batch_id: str) -> None:
        """Note the batch a create for ``submit_token`` made."""
        self._ids[submit_token] = provider_batch_id
        while len(self._ids) > self._keep:
            self._ids.popitem(last=False)

    def find(self, submit_token: str, provider: str) -> SubmitResult | None:
        """The batch a create for ``submit_token`` made, if this process saw it answered (logged when not)."""
        batch_id = self._ids.get(submit_token)
        if batch_id is None:
            log.info("provider %s: no record of submit token %s, and its batches cannot be found by tag",
                     provider, submit_token)  # fmt: skip
            return None
        return SubmitResult(provider_batch_id=batch_id)


@dataclass(frozen=True)
class BatchUsage:
    """The tokens a provider batch says it billed in all (OpenAI's batch ``usage``): those of the answers the
    gateway read and of any it could not read."""

    input: int
    output: int
    cached: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class PollResult:
    """One status read of a provider batch."""

    state: ProviderBatchState
    raw_status: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    error: str | None = None
    progress: float | None = None
    """Share of the requests done (0 to 1), from a provider that reports a percentage instead of counts
    (Together); None where counts are reported."""


@dataclass(frozen=True)
class HealthReport:
    """Outcome of a cheap liveness call to the provider."""

    healthy: bool
    detail: str = ""
    latency_s: float | None = None


@dataclass(frozen=True)
class SyncRequest:
    """One request of a shard, for providers the gateway drives request by request."""

    custom_id: str
    endpoint: str
    body: bytes
    """The request body as JSON, ``model`` already the provider's model id."""
    estimated_tokens: int = 0
    """Input plus expected output tokens, charged against a tokens-per-minute limit."""


@dataclass
class ProviderAdapter(abc.ABC):
    """One configured provider. Subclasses implement a protocol (``kind``).

    Providers with a batch API implement submit / find_submitted / poll / fetch_results / cancel.
    Providers without one set ``executes_locally`` and implement :meth:`execute` instead; the engine
    then runs the shard's requests itself. Every method a kind does not implement raises
    :class:`CapabilityNotSupported`; only :meth:`health` is required of every kind.
    """

    kind: ClassVar[str]
    executes_locally: ClassVar[bool] = False
    service_tiers: ClassVar[frozenset[str]] = frozenset()
    """Service tiers besides the standard one this kind can ask its provider for (``flex``, ``priority``): a
    catalog price for another tier makes no offer on it. Only kinds that execute locally have tiers."""
    DEFAULT_MIN_REQUESTS: ClassVar[int] = 1
    """Fewest requests a batch of this kind may hold when ``limits.min_requests_per_batch`` is unset."""
    results_as_sent: ClassVar[bool] = False
    """True where :meth:`fetch_results` writes the provider's lines of OpenAI's batch output format as they came,
    which collection reads as :func:`~gateway.providers.openai_wire.normalised_output_line` turns them (and trusts
    nothing else in them: a ``billed_usd`` is ignored); False where it writes the envelopes themselves."""
    config: ProviderConfig
    http: httpx.AsyncClient
    api_key: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The provider's configured name."""
        return self.config.name

    def serves(self, endpoint: str) -> bool:
        """Whether this provider runs requests of ``endpoint`` (e.g. ``/v1/embeddings``); routing asks."""
        return True

    def min_requests(self) -> int:
        """Fewest requests one provider batch may hold: routing places smaller work elsewhere."""
        configured = self.config.limits.min_requests_per_batch
        return self.DEFAULT_MIN_REQUESTS if configured is None else configured

    def unsupported(self, what: str) -> CapabilityNotSupported:
        """The error of a capability this kind lacks."""
        return CapabilityNotSupported(f"provider {self.name} ({self.kind}) {what}")

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Create a provider batch for the shard; tag it with ``shard.submit_token``."""
        raise self.unsupported("has no batch API")

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        """Find a provider batch created earlier with this token (crash reconciliation)."""
        raise self.unsupported("has no batch API")

    async def poll(self, provider_batch_id: str, *, fresh_after: float | None = None) -> PollResult:
        """Read the provider batch's state and progress, as read after ``fresh_after`` (a ``time.time()``; the
        moment the poll fell due: a status an adapter shares between polls must not be older)."""
        raise self.unsupported("has no batch API")

    async def fetch_results(
        self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None
    ) -> BatchUsage | None:
        """Stream every result line the provider holds into ``dest`` as OpenAI-format output lines (each ending
        in a newline; see :attr:`results_as_sent` for lines passed on as the provider wrote them).

        Success and error lines go to the same file; the engine sorts them by ``custom_id``.
        A line the provider sent that cannot be parsed is skipped (the engine notices the
        missing ``custom_id`` and treats that request as unfinished). ``input_path`` is the
        shard's input as submitted, for adapters that must map provider ids back to
        ``custom_id``s (the engine always passes it).

        Returns the batch's own total of billed tokens where the provider reports one (:class:`BatchUsage`), so
        that the ledger also counts answers billed but unreadable; None (the default) where it does not.
        """
        raise self.unsupported("has no batch API")

    async def cancel(self, provider_batch_id: str) -> None:
        """Ask the provider to stop the batch; results already finished stay fetchable."""
        raise self.unsupported("has no batch API")

    def take_seen_ended(self) -> list[str]:
        """Provider batches that a status read of another batch showed ended since the last call (a kind whose
        polls share a list page); their shards can be collected without waiting for their own next poll."""
        return []

    @abc.abstractmethod
    async def health(self) -> HealthReport:
        """A cheap call that tells whether the provider answers."""

    async def execute(self, request: SyncRequest) -> bytes:
        """Run one request now and return its OpenAI-format output line (without newline).

        A request the provider refused or failed gives an error line, not an exception. Raises
        :class:`ProviderUnavailable` when the provider stays unreachable after the adapter's own
        retries (the engine pauses the shard), and :class:`ProviderAuthFailed` when it refuses the
        configured key (every other request would fail the same way).
        """
        raise self.unsupported("runs batches, not single requests")
