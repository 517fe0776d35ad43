"""``batchgw keys``: create (optionally expiring), list and revoke client API keys, on the database directly."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli_support import checked_team_and_label, load_settings, run_with_context

if TYPE_CHECKING:
    from gateway.context import GatewayContext

keys_app = typer.Typer(help="Client API keys: create, list, revoke.", no_args_is_help=True)

_DURATION = re.compile(r"^(\d{1,9})([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_lifetime(value: str | None) -> int | None:
    """Seconds in a key lifetime such as ``90m``, ``12h``, ``30d`` or ``8w`` (at most ten years)."""
    from gateway.db.repo import MAX_KEY_LIFETIME_S

    if value is None:
        return None
    match = _DURATION.match(value.strip())
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_KEY_LIFETIME_S:
        raise typer.BadParameter(f"{value!r}: use a duration such as 90m, 12h, 30d or 8w, of at most ten years")
    return seconds


def _when(timestamp: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp)) if timestamp else "-"


@keys_app.command("create")
def keys_create(
    team: Annotated[str, typer.Option(help="Team the key belongs to (created if new).")],
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 90m, 12h, 30d, 8w (default: never expires).")
    ] = None,
) -> None:
    """Create a client API key and print it once."""
    from gateway.db import repo
    from gateway.db.unit_of_work import transaction

    team, name = checked_team_and_label(team, name)
    lifetime = parse_lifetime(expires_in)

    async def create(context: GatewayContext) -> str:
        expires_at = int(time.time()) + lifetime if lifetime else None
        async with transaction(context.sessions) as session:
            secret, _ = await repo.create_api_key(session, team, name, expires_at=expires_at)
        return secret

    typer.echo(run_with_context(load_settings(require_keys=False), create))


@keys_app.command("list")
def keys_list(
    team: Annotated[str | None, typer.Option(help="Only this team's keys.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """Keys newest first: id, prefix, team, label, state, created, last used, expiry (never a secret)."""
    from rich.console import Console
    from rich.table import Table

    from gateway.db import billing as billing_db
    from gateway.db import repo
    from gateway.db.unit_of_work import reading
    from gateway.errors import NotFound

    async def rows(context: GatewayContext) -> list[tuple[str, ...]] | None:
        async with reading(context.sessions) as session:
            try:
                team_id = await billing_db.team_id_named(session, team)
            except NotFound:
                return None
            keys = await repo.list_api_keys(session, team_id, include_revoked=all_keys)
        now = int(time.time())
        return [
            (
                key.id,
                key.prefix,
                owner.name,
                key.name or "-",
                _state(key.revoked_at, key.expires_at, now),
                _when(key.created_at),
                _when(key.last_used_at),
                _when(key.expires_at),
            )
            for key, owner in keys
        ]

    found_rows = run_with_context(load_settings(require_keys=False), rows)
    if found_rows is None:
        typer.echo(f"error: no team named {team!r}", err=True)
        raise typer.Exit(1)
    table = Table("id", "prefix", "team", "name", "state", "created", "last used", "expires")
    for row in found_rows:
        table.add_row(*row)
    Console(width=200).print(table)


def _state(revoked_at: int | None, expires_at: int | None, now: int) -> str:
    if revoked_at is not None:
        return f"revoked {_when(revoked_at)}"
    if expires_at is not None and expires_at <= now:
        return "expired"
    return "active"


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...), as keys list shows it.")]) -> None:
    """Revoke a key: every replica refuses it from its next request on."""
    from gateway.db import repo
    from gateway.db.unit_of_work import transaction

    async def revoke(context: GatewayContext) -> str | None:
        async with transaction(context.sessions) as session:
            changed = await repo.revoke_api_key(session, key_id, int(time.time()))
            found = await repo.get_api_key(session, key_id)
        if found is None:
            return None
        key, owner = found
        return f"revoked {key.id} ({key.prefix}..., team {owner.name})" if changed else f"{key.id} was already revoked"

    message = run_with_context(load_settings(require_keys=False), revoke)
    if message is None:
        typer.echo(f"error: no key {key_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(message)
