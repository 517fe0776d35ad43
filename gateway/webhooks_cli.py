"""``batchgw webhooks``: register, list and delete teams' batch webhook endpoints, on the database directly."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli_support import checked_team_and_label, load_settings, run_with_context

if TYPE_CHECKING:
    from gateway.context import GatewayContext

webhooks_app = typer.Typer(help="Batch webhook endpoints of teams: add, list, rm.", no_args_is_help=True)


@webhooks_app.command("add")
def webhooks_add(
    team: Annotated[str, typer.Option(help="Team whose batches are reported (created if new).")],
    url: Annotated[str, typer.Option(help="Where events are posted (http or https).")],
    event: Annotated[
        list[str] | None,
        typer.Option(help="batch.completed, batch.failed, batch.expired or batch.cancelled; repeat it (default all)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the endpoint.")] = None,
) -> None:
    """Register an endpoint and print its id and signing secret (shown this once)."""
    from gateway.batch_events import checked_event_types, checked_url, new_signing_secret
    from gateway.db import events as events_db
    from gateway.db import repo
    from gateway.db.unit_of_work import transaction
    from gateway.errors import GatewayError

    team, name = checked_team_and_label(team, name)
    try:
        checked, event_types = checked_url(url), checked_event_types(event)
    except GatewayError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    secret = new_signing_secret()

    async def add(context: GatewayContext) -> str:
        async with transaction(context.sessions) as session:
            owner = await repo.get_or_create_team(session, team)
            endpoint = await events_db.add_endpoint(session, owner.id, checked, event_types, name, secret)
        return endpoint.id

    endpoint_id = run_with_context(load_settings(require_keys=False), add)
    typer.echo(f"endpoint {endpoint_id} for team {team}: {', '.join(event_types)}")
    typer.echo(f"signing secret (shown once): {secret}")


@webhooks_app.command("list")
def webhooks_list(team: Annotated[str | None, typer.Option(help="Only this team's endpoints.")] = None) -> None:
    """Endpoints newest first, with their deliveries by state (never a secret)."""
    from rich.console import Console
    from rich.table import Table

    from gateway.db import billing as billing_db
    from gateway.db import events as events_db
    from gateway.db import repo
    from gateway.db.unit_of_work import reading
    from gateway.errors import NotFound

    async def rows(context: GatewayContext) -> list[tuple[str, ...]] | None:
        async with reading(context.sessions) as session:
            try:
                team_id = await billing_db.team_id_named(session, team)
            except NotFound:
                return None
            endpoints = await events_db.endpoints(session, team_id)
            names = await repo.team_names(session, [e.team_id for e in endpoints])
            counts = {e.id: await events_db.event_counts(session, e.id) for e in endpoints}
        return [
            (
                e.id,
                names.get(e.team_id, e.team_id),
                e.url,
                " ".join(t.removeprefix("batch.") for t in e.event_types),
                " ".join(f"{state} {counts[e.id].get(state, 0)}" for state in ("delivered", "pending", "gave_up")),
                time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(e.created_at)),
            )
            for e in endpoints
        ]

    found_rows = run_with_context(load_settings(require_keys=False), rows)
    if found_rows is None:
        typer.echo(f"error: no team named {team!r}", err=True)
        raise typer.Exit(1)
    table = Table("id", "team", "url", "events", "deliveries", "created")
    for row in found_rows:
        table.add_row(*row)
    Console(width=220).print(table)


@webhooks_app.command("rm")
def webhooks_rm(endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (we_...).")]) -> None:
    """Delete an endpoint: nothing more is posted to it."""
    from gateway.db import events as events_db
    from gateway.db.models import now_s
    from gateway.db.unit_of_work import transaction

    async def remove(context: GatewayContext) -> bool:
        async with transaction(context.sessions) as session:
            return await events_db.delete_endpoint(session, endpoint_id, now_s())

    if not run_with_context(load_settings(require_keys=False), remove):
        typer.echo(f"error: no endpoint {endpoint_id!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"deleted {endpoint_id}")
