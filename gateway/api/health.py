"""Liveness and readiness probes."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from sqlalchemy import text

from gateway.context import GatewayContext


@get("/healthz", tags=["health"], summary="Liveness")
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@get("/readyz", tags=["health"], summary="Readiness: the database answers")
async def readyz(state: State) -> Response[dict[str, str]]:
    """Ready when a trivial query succeeds."""
    context: GatewayContext = state.context
    try:
        async with context.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as exc:
        return Response({"status": "unavailable", "database": type(exc).__name__}, status_code=503)
    return Response({"status": "ready", "database": "ok"})
