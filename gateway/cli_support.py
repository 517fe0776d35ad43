"""What the operator commands share: settings loaded with one-line errors, and a gateway context to run in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer

if TYPE_CHECKING:
    from gateway.context import GatewayContext
    from gateway.settings import Settings

T = TypeVar("T")


def load_settings(*, require_keys: bool = True, check: bool = True) -> Settings:
    """The settings, or exit 2 with one line on stderr naming the mistake (file, table, key); no traceback.

    ``check`` also checks what the engine needs (providers, catalog, default policy), and
    ``require_keys`` that every enabled provider's ``api_key_env`` is set.
    """
    from pydantic import ValidationError

    from gateway.config_errors import ConfigError
    from gateway.settings import Settings

    try:
        settings = Settings.load()
        if check:
            from gateway.context import check_configuration

            asyncio.run(check_configuration(settings, require_keys=require_keys))
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except (ValidationError, ValueError, LookupError, OSError) as exc:
        typer.echo(" ".join(f"config error: {exc}".split()), err=True)
        raise typer.Exit(2) from None
    return settings


def run_with_context(settings: Settings, job: Callable[[GatewayContext], Awaitable[T]]) -> T:
    """Run ``job`` with this process's gateway context (database migrated first when enabled), then close it."""
    from gateway.context import GatewayContext
    from gateway.db.engine import upgrade_to_head

    if settings.auto_migrate:
        upgrade_to_head(settings.resolved_database_url)

    async def main() -> T:
        context = GatewayContext.create(settings)
        try:
            return await job(context)
        finally:
            await context.close()

    return asyncio.run(main())
