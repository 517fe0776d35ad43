"""The long-lived objects a gateway process shares between its API and its worker."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

from gateway.db.engine import create_engine
from gateway.settings import Settings
from gateway.storage import BlobStore, LocalBlobStore


@dataclass
class GatewayContext:
    """Settings, database and blob store of one process."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[SQLModelAsyncSession]
    blobs: BlobStore

    @classmethod
    def create(cls, settings: Settings) -> GatewayContext:
        """Open the database engine and the blob store named by the settings."""
        engine = create_engine(settings.resolved_database_url)
        sessions = async_sessionmaker(engine, class_=SQLModelAsyncSession, expire_on_commit=False)
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            blobs=LocalBlobStore(settings.resolved_blob_dir),
        )

    async def close(self) -> None:
        """Release database connections."""
        await self.engine.dispose()


__all__ = ["AsyncSession", "GatewayContext"]
