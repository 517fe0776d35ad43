"""Helpers of the database tests."""

from __future__ import annotations

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from gateway.db import repo
from gateway.db.models import ApiKey, Batch, StoredFile


async def key_and_batch(session: AsyncSession, team: str = "readers", **batch_fields: Any) -> tuple[str, ApiKey, Batch]:
    """A new team's key (its secret too) and a batch of that team on a stored file, added to ``session``."""
    secret, key = await repo.create_api_key(session, team)
    stored = StoredFile(team_id=key.team_id, filename="in.jsonl", purpose="batch", storage_key="files/x")
    session.add(stored)
    batch = Batch(
        team_id=key.team_id, input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h",
        **batch_fields,
    )  # fmt: skip
    session.add(batch)
    await session.flush()
    return secret, key, batch
