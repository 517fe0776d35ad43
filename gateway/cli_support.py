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


def checked_team_and_label(team: str, label: str | None) -> tuple[str, str | None]:
    """A team name and optional label as the admin API takes them (stripped, non-empty, at most 200 characters, no
    control characters), or exit 2 with one line on stderr."""
    from gateway.api.inputs import team_and_label
    from gateway.errors import GatewayError
    from gateway.textcheck import check_text

    try:
        team, label = team_and_label({"team": team, "name": label})
        check_text(team, "team")
        if label is not None:
            check_text(label, "name")
    except GatewayError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    return team, label


def require_database(settings: Settings) -> None:
    """Exit 2 with one line on stderr when the database server does not answer, before anything starts and where the
    process would migrate it at once (``auto_migrate``). Without that, a process starts anyway: the API answers
    ``/readyz`` with 503 until the database does, as an orchestrator expects of a replica."""
    from gateway.db.engine import DatabaseUnreachable, check_reachable

    if not settings.auto_migrate:
        return
    try:
        check_reachable(settings.resolved_database_url)
    except DatabaseUnreachable as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


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
