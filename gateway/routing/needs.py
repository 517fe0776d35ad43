"""What routing needs of a gateway process: settings, database sessions, providers, policies and the work signal.

Placement and provider health take anything with these attributes (a
:class:`~gateway.context.GatewayContext` has them), so the routing modules never import the context
that is built from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.providers.registry import ProviderRegistry
from gateway.settings import Settings
from router_policies.registry import PolicyRegistry

if TYPE_CHECKING:
    from gateway.context import WorkSignal  # the type only: the context is built from these modules


class RoutingNeeds(Protocol):
    """The parts of a gateway process that placement and provider health read."""

    @property
    def settings(self) -> Settings:
        """The process's settings."""
        ...

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """Sessions on the gateway's database."""
        ...

    @property
    def providers(self) -> ProviderRegistry:
        """The enabled providers' adapters."""
        ...

    @property
    def policies(self) -> PolicyRegistry:
        """The routing policies by name."""
        ...

    @property
    def work_available(self) -> WorkSignal:
        """Wakes the workers (of this process and, where the database announces, of others)."""
        ...
