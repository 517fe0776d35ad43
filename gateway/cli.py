"""The ``batchgw`` command line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from gateway.settings import Settings

app = typer.Typer(
    help="batch-gateway: one OpenAI-compatible batch endpoint in front of many providers.", no_args_is_help=True
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
keys_app = typer.Typer(help="Client API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default from settings).")] = None,
    worker: Annotated[bool | None, typer.Option("--worker/--no-worker", help="Run a worker in this process.")] = None,
) -> None:
    """Run the API (and, by default, a worker) on the configured database."""
    import uvicorn

    from gateway.app import create_app

    settings = Settings()
    _setup_logging(settings)
    application = create_app(settings, run_worker=worker)
    typer.echo(f"batch-gateway listening on http://{host or settings.host}:{port or settings.port}/v1")
    uvicorn.run(
        application,
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
    )


@app.command("worker")
def run_worker() -> None:
    """Run a worker process only (no API)."""
    from gateway.context import GatewayContext
    from gateway.db.engine import upgrade_to_head
    from gateway.jobs.worker import Worker

    settings = Settings()
    _setup_logging(settings)
    if settings.auto_migrate:
        upgrade_to_head(settings.resolved_database_url)

    async def main() -> None:
        context = GatewayContext.create(settings)
        try:
            await Worker(context).run()
        finally:
            await context.close()

    asyncio.run(main())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all database migrations."""
    from gateway.db.engine import upgrade_to_head
    from gateway.settings import redact_url

    settings = Settings()
    upgrade_to_head(settings.resolved_database_url)
    typer.echo(f"database at head: {redact_url(settings.resolved_database_url)}")


@keys_app.command("create")
def keys_create(
    team: Annotated[str, typer.Option(help="Team the key belongs to (created if new).")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
) -> None:
    """Create a client API key and print it once."""
    from gateway.context import GatewayContext
    from gateway.db import repo
    from gateway.db.engine import upgrade_to_head

    settings = Settings()
    if settings.auto_migrate:
        upgrade_to_head(settings.resolved_database_url)

    async def main() -> str:
        context = GatewayContext.create(settings)
        try:
            async with context.sessions() as session:
                secret, _ = await repo.create_api_key(session, team, name)
                await session.commit()
            return secret
        finally:
            await context.close()

    typer.echo(asyncio.run(main()))


@app.command()
def simulate(
    config: Annotated[Path | None, typer.Option(help="TOML file listing emulated providers.")] = None,
    control_port: Annotated[int | None, typer.Option(help="Port of the fault-injection control API.")] = None,
) -> None:
    """Run emulated providers on loopback (for tests and the demo)."""
    from gateway.simulator.server import run_simulate

    run_simulate(config, control_port)


if __name__ == "__main__":
    app()
