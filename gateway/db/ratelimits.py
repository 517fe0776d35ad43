"""Request rate limits of client keys and teams, shared by every API replica through the database.

Each limited key or team has one timeline row and is limited by the generic cell rate algorithm: at
``per_minute`` requests a minute each request reserves ``60 / per_minute`` seconds of the timeline, and a
request is admitted while the reserved part reaches no further than a burst (a tenth of the minute's
requests, at least one) ahead of now. One conditional upsert per limit admits or refuses, so two replicas
can never both take the last slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

_ADMIT = """
INSERT INTO api_rate_limits (name, next_free_at) VALUES (:name, :now + :interval)
ON CONFLICT (name) DO UPDATE SET next_free_at = {latest}(api_rate_limits.next_free_at, :now) + :interval
WHERE api_rate_limits.next_free_at - :now <= :tolerance
RETURNING next_free_at
"""
_LATEST = {"postgresql": "GREATEST", "sqlite": "MAX"}


@dataclass(frozen=True)
class Limit:
    """A timeline and its rate: ``name`` is ``key:<id>`` or ``team:<id>``."""

    name: str
    per_minute: int

    @property
    def interval_s(self) -> float:
        return 60.0 / self.per_minute

    @property
    def tolerance_s(self) -> float:
        """How far ahead of now the timeline may be reserved: the burst, less the request itself."""
        return self.interval_s * (max(1, self.per_minute // 10) - 1)


async def admit(session: AsyncSession, limits: list[Limit], now: float) -> tuple[Limit, float] | None:
    """Reserve one request on every timeline; None when all admit it, else the first refusing limit and the
    seconds until it would admit. A refusal leaves earlier reservations in the session: roll it back."""
    dialect = (await session.connection()).dialect.name
    statement = text(_ADMIT.format(latest=_LATEST.get(dialect, "MAX")))
    for limit in limits:
        params = {"name": limit.name, "now": now, "interval": limit.interval_s, "tolerance": limit.tolerance_s}
        if (await session.execute(statement, params)).first() is None:
            reserved = (
                await session.execute(
                    text("SELECT next_free_at FROM api_rate_limits WHERE name = :name"), {"name": limit.name}
                )
            ).scalar_one()
            return limit, max(0.0, float(reserved) - limit.tolerance_s - now)
    return None
