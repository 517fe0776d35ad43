"""The long-lived objects a gateway process shares between its API and its worker."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

from gateway.catalog.loader import CatalogError, load_catalog
from gateway.config_errors import ConfigError, ConfigProblem, did_you_mean
from gateway.cpu_pool import CpuPool
from gateway.db import wakeups
from gateway.db.engine import create_engine
from gateway.db.point_reads import PointReads
from gateway.providers.registry import ADAPTER_KINDS, ProviderRegistry, adapter_options
from gateway.providers.send_fence import fence_sends
from gateway.routing.limits import hand_limiters, release_limiters
from gateway.routing.offers import OfferBook
from gateway.settings import Settings
from gateway.storage import BlobStore, open_blob_store
from router_policies.registry import PolicyRegistry, default_registry

log = logging.getLogger(__name__)


class WorkSignal:
    """Wakes the idle loops of this process when new work may be ready.

    Unlike a plain :class:`asyncio.Event`, one :meth:`set` reaches every loop waiting at that moment, and a loop
    that starts waiting later waits for the next one. Loops wait by kind (the worker's lanes: ``"batch"``,
    ``"shard"``): a wake-up for one kind leaves the others asleep, so work only one lane can take does not send
    the other to look for work too. With ``announce`` (see :mod:`gateway.db.wakeups`), :meth:`set` also tells
    other processes, one announcement at a time: sets that arrive while one is being sent are folded into one more.
    """

    def __init__(self, announce: Callable[[], Awaitable[None]] | None = None) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._announce = announce
        self._announcing: asyncio.Task[None] | None = None
        self._again = False

    def set(self, kind: str | None = None) -> None:
        """Wake the loops waiting now for ``kind`` of work (every kind: None) here and, with ``announce``, every
        loop of other processes (they learn that there is work, not which)."""
        self.wake_local(kind)
        if self._announce is None:
            return
        if self._announcing is not None and not self._announcing.done():
            self._again = True  # the one being sent may have left before this hand-off committed
            return
        self._announcing = asyncio.get_running_loop().create_task(self._send())

    def wake_local(self, kind: str | None = None) -> None:
        """Wake the loops of this process waiting now for ``kind`` of work (every kind: None)."""
        for waited in list(self._events) if kind is None else [kind]:
            event = self._events.pop(waited, None)
            if event is not None:
                event.set()

    def ticket(self, kind: str = "any") -> asyncio.Event:
        """What :meth:`wait` waits on now for ``kind`` of work: take it before looking for work, so a set in between
        is not missed."""
        event = self._events.get(kind)
        if event is None:
            event = self._events[kind] = asyncio.Event()
        return event

    async def wait(self, timeout: float, ticket: asyncio.Event | None = None) -> None:
        """Return on the next :meth:`set` (or the first after ``ticket`` was taken), or after ``timeout`` seconds."""
        event = ticket or self.ticket()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def close(self) -> None:
        """Finish the announcement being sent."""
        if self._announcing is not None:
            await asyncio.gather(self._announcing, return_exceptions=True)

    async def _send(self) -> None:
        assert self._announce is not None
        while True:
            self._again = False
            try:
                await self._announce()
            except Exception as exc:  # a wake-up is a hint: other workers still find the work at their next poll
                log.warning("announcing new work to other processes failed: %s", exc)
            if not self._again:
                return


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one TLS context for outgoing HTTPS, as httpx builds it by default (certifi's roots, or
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` where set): shared, since loading the roots costs each client about 20 ms
    of CPU."""
    return httpx.create_ssl_context()


def provider_http_client() -> httpx.AsyncClient:
    """The HTTP client every provider adapter of a process shares; its create calls are fenced by their
    lease (:mod:`gateway.providers.send_fence`)."""
    return fence_sends(
        httpx.AsyncClient(
            verify=tls_context(),
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            follow_redirects=False,
        )
    )


@dataclass
class GatewayContext:
    """Settings, database, blob store, providers, offers and policies of one process."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[SQLModelAsyncSession]
    blobs: BlobStore
    http: httpx.AsyncClient
    providers: ProviderRegistry
    offers: OfferBook
    policies: PolicyRegistry
    point_reads: PointReads
    work_available: WorkSignal = field(default_factory=WorkSignal)
    """Set when this process created work, so an idle worker starts at once instead of at its next poll."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when this process's worker is asked to stop: long stages (a fan-out) hand their work over early."""
    cpu: CpuPool = field(default_factory=lambda: CpuPool(0))
    """Where the worker's CPU-heavy steps run (:mod:`gateway.cpu_pool`)."""
    upload_checks: tuple[CpuPool, ...] = ()
    """Where the API checks uploads while they arrive (:mod:`gateway.pipeline.intake.upload_check`): a pool of one
    process per check, so that replacing a stuck one ends no other upload's check."""

    @classmethod
    def create(cls, settings: Settings) -> GatewayContext:
        """Open the database engine and the blob store named by the settings."""
        engine = create_engine(settings.resolved_database_url)
        sessions = async_sessionmaker(engine, class_=SQLModelAsyncSession, expire_on_commit=False)
        http = provider_http_client()
        providers, offers, policies = routing_setup(settings, http)
        hand_limiters(providers, engine)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            blobs=open_blob_store(settings),
            http=http,
            providers=providers,
            offers=offers,
            policies=policies,
            point_reads=PointReads(engine),
            cpu=CpuPool(settings.worker.cpu_processes, settings.log_format, settings.log_level),
            upload_checks=tuple(
                CpuPool(1, settings.log_format, settings.log_level)
                for _ in range(settings.limits.upload_check_processes)
            ),
            work_available=WorkSignal(functools.partial(wakeups.notify, engine) if wakeups.announces(engine) else None),
        )

    async def close(self) -> None:
        """Release database and HTTP connections."""
        await self.work_available.close()
        await release_limiters(self.providers)
        self.cpu.close()
        for checks in self.upload_checks:
            checks.close()
        await self.http.aclose()
        await self.blobs.close()
        await self.point_reads.close()
        await self.engine.dispose()


def routing_setup(settings: Settings, http: httpx.AsyncClient) -> tuple[ProviderRegistry, OfferBook, PolicyRegistry]:
    """Providers, priced offers and policies from the settings.

    Raises ``ValueError`` or ``LookupError`` naming the problem: an unknown provider kind or option, an
    invalid catalog, an unknown default policy.
    """
    providers = ProviderRegistry.from_config(settings.providers, http)
    offers = OfferBook(load_catalog(settings.catalog.file, settings.catalog.overrides), providers)
    policies = default_registry()
    policies.get(settings.routing.default_policy)
    return providers, offers, policies


async def check_configuration(settings: Settings, *, require_keys: bool = True) -> None:
    """Raise :class:`ConfigError` naming every mistake the gateway cannot start with.

    Checks each enabled provider (kind, adapter options, base URL, models, catalog provider and,
    with ``require_keys``, that the variable ``api_key_env`` names is set), the catalog with its
    overrides, and the default policy; then builds the provider adapters once.
    """
    problems: list[ConfigProblem] = []
    sellers: set[str] | None = None
    try:
        catalog = load_catalog(settings.catalog.file, settings.catalog.overrides)
        sellers = {offer.provider for _, offer in catalog.entries()}
    except CatalogError as exc:
        path: tuple[str, ...] = ("catalog", "overrides", exc.pin) if exc.pin else ("catalog", "file")
        problems.append(settings.config_problem(path, str(exc)))
    kinds = {kind: adapter_options(adapter) for kind, adapter in ADAPTER_KINDS.items()}
    for name, provider in settings.providers.items():
        for path, text in provider.problems(kinds, require_key=require_keys, sellers=sellers):
            problems.append(settings.config_problem(("providers", name, *path), text))
    policies = default_registry()
    policy = settings.routing.default_policy
    try:
        policies.get(policy)
    except ValueError as exc:
        text = f"default_policy: {exc}{did_you_mean(policy, policies.names())}"
        problems.append(settings.config_problem(("routing", "default_policy"), text))
    if problems:
        raise ConfigError(problems)
    async with httpx.AsyncClient(verify=tls_context()) as http:
        try:
            ProviderRegistry.from_config(settings.providers, http)
        except (ValueError, LookupError) as exc:
            raise ConfigError([settings.config_problem(("providers",), str(exc))]) from None


__all__ = ["AsyncSession", "GatewayContext", "check_configuration"]
