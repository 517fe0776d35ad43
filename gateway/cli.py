"""The ``batchgw`` command line."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gateway import client_cli
from gateway.cli_support import load_settings, require_database, run_with_context
from gateway.keys_cli import keys_app
from gateway.webhooks_cli import webhooks_app

# The settings and everything heavier are imported inside the commands: each CPU process (gateway.cpu_pool)
# imports this module again as it starts.
if TYPE_CHECKING:
    from gateway.context import GatewayContext
    from gateway.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    help="batch-gateway: one OpenAI-compatible batch endpoint in front of many providers.", no_args_is_help=True
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
canary_app = typer.Typer(help="Batches held after their canary: list, release, cancel.", no_args_is_help=True)
batches_app = typer.Typer(help="Any team's batches, on the database directly: cancel, retry.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(canary_app, name="canary")
app.add_typer(batches_app, name="batches")
app.command("submit")(client_cli.submit)
app.command("ls")(client_cli.ls)
app.command("status")(client_cli.status)
app.command("cancel")(client_cli.cancel)
app.command("download")(client_cli.download)


def _log_configuration(settings: Settings) -> None:
    """One line per provider and per available routing policy (never a key, never a full URL)."""
    from router_policies.registry import BUILTIN_POLICIES, default_registry

    log = logging.getLogger("gateway.config")
    if not settings.providers:
        log.warning("no providers configured: batches cannot be routed")
    for provider in settings.providers.values():
        log.info("%s", provider.describe())
    for name in default_registry().names():
        origin = "built-in" if name in BUILTIN_POLICIES else "plug-in"
        default = ", the default" if name == settings.routing.default_policy else ""
        log.info("routing policy %s: %s%s", name, origin, default)


def _setup_logging(settings: Settings) -> None:
    from gateway.logs import configure_logging

    configure_logging(settings)
    logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default from settings).")] = None,
    worker: Annotated[bool | None, typer.Option("--worker/--no-worker", help="Run a worker in this process.")] = None,
) -> None:
    """Run the API (and, by default, a worker) on the configured database."""
    settings = load_settings()
    require_database(settings)

    import uvicorn

    from gateway.app import create_app

    _setup_logging(settings)
    _log_configuration(settings)
    application = create_app(settings, run_worker=worker)
    typer.echo(f"batch-gateway listening on http://{host or settings.host}:{port or settings.port}/v1")
    uvicorn.run(
        application,
        host=host or settings.host,
        port=port or settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the gateway's log format (gateway.logs) for the server's lines too
        access_log=False,
        # The standard loop, not uvloop: under uvloop a provider connection reset right after it opened
        # surfaces from the HTTP client as an AttributeError (the closed transport has no socket to
        # describe) instead of a connection error, so the call is not treated as the outage it is.
        loop="asyncio",
    )


@app.command("worker")
def run_worker() -> None:
    """Run a worker process only (no API)."""
    from gateway.jobs.worker import Worker

    settings = load_settings()
    require_database(settings)
    _setup_logging(settings)
    _log_configuration(settings)
    if settings.metrics.worker_port:
        from gateway.metrics import serve_process_metrics

        serve_process_metrics(settings.host, settings.metrics.worker_port)

    async def work(context: GatewayContext) -> None:
        worker = Worker(context)
        loop = asyncio.get_running_loop()
        # The first SIGTERM (a service manager's or Kubernetes' stop) or Ctrl-C stops claiming and lets running
        # steps finish for worker.shutdown_grace_s; a second one stops them at once (see Worker.stop).
        for stop_signal in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(stop_signal, worker.stop)
        try:
            await worker.run()
        finally:
            # Stopped: a further signal ends the process while it waits for the last file work in threads.
            for stop_signal in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(stop_signal)

    run_with_context(settings, work)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all database migrations."""
    from gateway.db.engine import upgrade_to_head
    from gateway.settings import redact_url

    settings = load_settings(check=False)
    upgrade_to_head(settings.resolved_database_url)
    typer.echo(f"database at head: {redact_url(settings.resolved_database_url)}")


def _batch_action(action: Callable[[GatewayContext], Awaitable[str]]) -> None:
    """Run an intake action on this deployment's database; a refusal is one line on stderr and exit 1."""
    from gateway.errors import GatewayError

    try:
        typer.echo(run_with_context(load_settings(require_keys=False), action))
    except GatewayError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None


@batches_app.command("cancel")
def batches_cancel(batch_id: Annotated[str, typer.Argument(help="Any team's batch.")]) -> None:
    """Cancel a batch (finished requests keep their results); prints its id and status."""
    from gateway.pipeline import intake

    async def cancel(context: GatewayContext) -> str:
        batch = await intake.cancel_batch(context, None, batch_id)
        return f"{batch.id} {batch.status}"

    _batch_action(cancel)


@batches_app.command("retry")
def batches_retry(batch_id: Annotated[str, typer.Argument(help="A finished batch of any team.")]) -> None:
    """A new batch of a finished batch's failed requests, for the same team; prints its id and status."""
    from gateway.pipeline import intake

    async def retry(context: GatewayContext) -> str:
        batch = await intake.retry_batch(context, batch_id)
        return f"{batch.id} {batch.status} (retry of {batch_id})"

    _batch_action(retry)


@app.command("gc")
def collect_blobs(
    grace_s: Annotated[
        float | None,
        typer.Option(
            "--grace-s", min=0, help="Remove unnamed blobs at least this old (default: worker.blob_gc_grace_s)."
        ),
    ] = None,
) -> None:
    """Remove stored blobs no database row names (what workers also do every worker.blob_gc_interval_s).

    A grace of 0 is safe only while no batch is being uploaded, routed, collected or merged.
    """
    from gateway.jobs.blob_gc import collect_garbage

    async def collect(context: GatewayContext) -> int:
        return await collect_garbage(context, grace_s)

    removed = run_with_context(load_settings(require_keys=False), collect)
    typer.echo(f"removed {removed} blob(s) no row names")


@app.command()
def simulate(
    config: Annotated[Path | None, typer.Option(help="TOML file listing emulated providers.")] = None,
    control_port: Annotated[int | None, typer.Option(help="Port of the fault-injection control API.")] = None,
) -> None:
    """Run emulated providers on loopback (for tests and the demo)."""
    from gateway.simulator.server import run_simulate

    run_simulate(config, control_port)


@app.command()
def estimate(
    file: Annotated[Path, typer.Argument(help="A batch input file (JSONL).", exists=True, dir_okay=False)],
    model: Annotated[str | None, typer.Option(help="Price every line as this model (default: each line's).")] = None,
    policy: Annotated[str | None, typer.Option(help="Routing policy (default: the deployment's).")] = None,
    deadline: Annotated[
        str | None, typer.Option(help="When the results are needed, e.g. 4h (default: the 24h completion window).")
    ] = None,
    endpoint: Annotated[str, typer.Option(help="The batch endpoint the lines are for.")] = "/v1/chat/completions",
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url", envvar="BATCHGW_BASE_URL", help="A running gateway's /v1 URL (default: the local config)."
        ),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="BATCHGW_API_KEY", help="Client key for --base-url.")
    ] = None,
    team: Annotated[
        str | None, typer.Option(help="Local config only: estimate from this team's history (with a key: its team).")
    ] = None,
) -> None:
    """A file's cost on every provider, its expected turnaround, and whether to batch it, fan it out, or both."""
    from gateway import money_cli

    if base_url:
        answer = money_cli.remote_estimate(
            file, base_url, api_key, model=model, policy=policy, deadline=deadline, endpoint=endpoint
        )
        raise typer.Exit(money_cli.print_estimate(answer, file.name))

    from gateway.billing.quote import quote_file
    from gateway.billing.quote_view import quote_view
    from gateway.db import billing as billing_db
    from gateway.db.unit_of_work import reading

    metadata = {key: value for key, value in (("policy", policy), ("deadline", deadline)) if value}

    async def price(context: GatewayContext) -> dict[str, Any]:
        team_id = None
        if team:
            async with reading(context.sessions) as session:
                found = await billing_db.team_by_name(session, team)
            if found is None:
                raise LookupError(f"no team named {team!r}")
            team_id = found.id
        quote = await quote_file(
            context, file, endpoint=endpoint, model=model, metadata=metadata or None, team_id=team_id
        )
        return quote_view(quote)

    try:
        answer = run_with_context(load_settings(require_keys=False), price)
    except (ValueError, LookupError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(money_cli.print_estimate(answer, file.name))


AdminUrl = Annotated[
    str, typer.Option("--base-url", envvar="BATCHGW_BASE_URL", help="The gateway's URL (its /v1 URL works too).")
]
AdminKey = Annotated[
    str | None, typer.Option("--admin-key", envvar="BATCHGW_ADMIN_KEY", help="The admin key (prefer the variable).")
]


@canary_app.command("ls")
def canary_ls(base_url: AdminUrl = "http://127.0.0.1:8080", admin_key: AdminKey = None) -> None:
    """Batches held for an operator after their canary, with what was projected and why."""
    from gateway import money_cli

    held = money_cli.admin_call(base_url, admin_key, "GET", "/canaries")["data"]
    if not held:
        typer.echo("no batch is held after its canary")
    for row in held:
        money_cli.print_held(row)


@canary_app.command("release")
def canary_release(
    batch_id: Annotated[str, typer.Argument(help="The held batch.")],
    base_url: AdminUrl = "http://127.0.0.1:8080",
    admin_key: AdminKey = None,
) -> None:
    """Let a held batch's remaining requests run (raise a hard budget first if its projection does not fit)."""
    from gateway import money_cli

    money_cli.print_held(money_cli.admin_call(base_url, admin_key, "POST", f"/batches/{batch_id}/canary/release"))


@canary_app.command("cancel")
def canary_cancel(
    batch_id: Annotated[str, typer.Argument(help="The held batch.")],
    base_url: AdminUrl = "http://127.0.0.1:8080",
    admin_key: AdminKey = None,
) -> None:
    """Cancel a held batch: its canary's answers are kept, the rest is not run."""
    from gateway import money_cli

    money_cli.print_held(money_cli.admin_call(base_url, admin_key, "POST", f"/batches/{batch_id}/canary/cancel"))


@app.command()
def dashboard(
    gateway_url: Annotated[
        str | None, typer.Option(help="Gateway URL (default: BATCHGW_DASHBOARD_GATEWAY_URL, or the local gateway).")
    ] = None,
    admin_key: Annotated[
        str | None, typer.Option(help="Admin key (default: BATCHGW_ADMIN_KEY; prefer it: options show in ps).")
    ] = None,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8501,
    login: Annotated[
        bool | None,
        typer.Option(
            "--login/--no-login",
            help="Ask for the admin key (or the OIDC login) before showing anything (default: "
            "BATCHGW_DASHBOARD_LOGIN, on). --no-login only behind an authenticating proxy of your own.",
        ),
    ] = None,
) -> None:
    """Run the operator dashboard (Streamlit, headless) against the gateway's admin API."""
    import os
    import sys

    import dashboard
    from dashboard.auth import LOGIN_ENV, login_required

    env = dict(os.environ)
    if login is not None:
        env[LOGIN_ENV] = "on" if login else "off"
    try:
        required = login_required(env.get(LOGIN_ENV))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--login/--no-login") from None
    url = gateway_url or env.get("BATCHGW_DASHBOARD_GATEWAY_URL")
    if not url:  # the local gateway, as its settings say: read them as strictly as the gateway does
        settings = load_settings(check=False)
        url = f"http://{settings.host}:{settings.port}"
    env["BATCHGW_DASHBOARD_GATEWAY_URL"] = url
    if admin_key:
        env["BATCHGW_ADMIN_KEY"] = admin_key
    script = Path(dashboard.__file__).with_name("app.py")
    access = "login required" if required else "no login: keep it behind an authenticating proxy"
    typer.echo(f"dashboard on http://{host}:{port} for {env['BATCHGW_DASHBOARD_GATEWAY_URL']} ({access})")
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless=true"]
    command += [f"--server.address={host}", f"--server.port={port}", "--browser.gatherUsageStats=false"]
    command += ["--client.toolbarMode=viewer"]
    # Replace this process, so signals (Ctrl-C, a service manager's stop) reach Streamlit itself.
    os.execve(sys.executable, command, env)


@app.command()
def demo(
    headless: Annotated[bool, typer.Option(help="No dashboard; stop and exit when the batch is done.")] = False,
    data_dir: Annotated[Path, typer.Option(help="Folder for this run (recreated each run).")] = Path("batchgw-demo"),
    port: Annotated[int, typer.Option(help="Gateway port (a free one if busy).")] = 8080,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port (a free one if busy).")] = 8501,
    items: Annotated[int, typer.Option(min=10, max=50_000, help="Requests in the sample batch.")] = 2000,
) -> None:
    """Run the whole product on emulated providers: a batch, a provider outage, failover, spend and alerts."""
    from gateway.demo import DemoOptions
    from gateway.demo import main as run_demo

    options = DemoOptions(headless=headless, data_dir=data_dir, port=port, dashboard_port=dashboard_port, items=items)
    raise typer.Exit(run_demo(options))


if __name__ == "__main__":
    app()
