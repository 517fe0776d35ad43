"""``batchgw demo``: the whole product on one machine, with no configuration and no keys.

Two emulated providers sell ``llama-3.3-70b`` at different prices (``groq-sim`` cheap and a little flaky,
``together-sim`` dearer); a gateway and, unless headless, the dashboard run as child processes. A sample
classification batch goes through the official ``openai`` SDK, the cheap provider is taken down part-way,
and the demo reports the failover, the results, the spend and savings and the billing alerts. The steps
stay together in this one file (past 400 lines) so that the story reads top to bottom.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, BinaryIO

import httpx
import openai
from openai.types import Batch, FileObject
from rich.console import Console

from gateway.demo_report import DemoOutcome, print_summary, sample_requests
from gateway.demo_setup import (
    Child,
    Children,
    DemoError,
    choose_port,
    hold_data_dir,
    prepare_data_dir,
    wait_until_up,
)
from gateway.simulator import Faults, ProviderSpec, SimulatorCluster

MODEL = "llama-3.3-70b"
CHEAP, PRICEY = "groq-sim", "together-sim"
EMULATORS = {
    # Each emulator speaks its provider's dialect of the OpenAI batch protocol, as the gateway's adapter does.
    CHEAP: {"catalog": "groq", "model": "llama-3.3-70b-versatile", "dialect": "groq"},
    PRICEY: {"catalog": "together", "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo", "dialect": "together"},
}
PROCESSING_DELAY_S = 1.5
FLAKY_FRACTION = 0.05
OUTAGE_AT = 1 / 3  # share of requests answered when the cheap provider goes down
# The daily budget is the estimate / this share. The estimate prices every request on the cheap provider at
# max_tokens, so the spend lands between ~50% (all on the cheap one) and ~130% (after failover) of it.
BUDGET_SHARE = 0.8
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
FAST_SETTINGS = {
    "BATCHGW_WORKER__POLL_INTERVAL_S": "0.1",
    "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": "0.2",
    "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": "1",
    "BATCHGW_ROUTING__PROVIDER_DOWN_FAILOVER_S": "3",
    "BATCHGW_ROUTING__CIRCUIT_FAILURE_THRESHOLD": "2",
    "BATCHGW_ROUTING__SUBMIT_RETRY_BASE_S": "0.2",
    "BATCHGW_ROUTING__MAX_REQUEST_ATTEMPTS": "5",
    "BATCHGW_BILLING__WEBHOOK_URL": "",
}


@dataclass
class DemoOptions:
    """The command's options."""

    headless: bool = False
    data_dir: Path = Path("batchgw-demo")
    port: int = 8080
    dashboard_port: int = 8501
    items: int = 2000


@dataclass
class Running:
    """What the demo started so far, for the clean-up to stop."""

    children: Children = field(default_factory=Children)
    cluster: SimulatorCluster | None = None
    data_dir_lock: BinaryIO | None = None


@dataclass
class Gateway:
    """The gateway child: where it answers, its admin API and the environment it (and the dashboard) got."""

    url: str
    admin_key: str
    env: dict[str, str]
    admin: Admin


@dataclass
class Dashboard:
    """The dashboard child and where it answers."""

    child: Child
    url: str


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def start_emulators() -> SimulatorCluster:
    """The two emulated providers on free loopback ports, the cheap one failing ~5% of requests per batch."""
    cheap_faults = Faults(fail_fraction=FLAKY_FRACTION, fail_per_batch=True)
    specs = [
        ProviderSpec(name=CHEAP, models=[EMULATORS[CHEAP]["model"]], processing_delay_s=PROCESSING_DELAY_S,
                     faults=cheap_faults, dialect="groq"),
        ProviderSpec(name=PRICEY, models=[EMULATORS[PRICEY]["model"]], processing_delay_s=PROCESSING_DELAY_S,
                     dialect="together"),
    ]  # fmt: skip
    cluster = SimulatorCluster(specs, control_port=0)
    cluster.start()
    return cluster


def write_gateway_config(folder: Path, cluster: SimulatorCluster) -> Path:
    """The gateway's provider file: both emulators serve the model, within small limits so the job is sharded."""
    lines = [f"# Providers of `batchgw demo` (emulated on loopback; no keys). Control API: {cluster.control_url}", ""]
    for name, spec in EMULATORS.items():
        lines += [
            f"[providers.{name}]",
            'kind = "openai"',
            f"base_url = {json.dumps(cluster.base_url(name))}",
            f"catalog_provider = {json.dumps(spec['catalog'])}",
            f"models = {{ {json.dumps(MODEL)} = {json.dumps(spec['model'])} }}",
            f"options = {{ dialect = {json.dumps(spec['dialect'])} }}",
            "timeout_s = 10",
            "",
            f"[providers.{name}.limits]",
            "max_requests_per_batch = 200",
            "max_batches_in_flight = 2",
            "",
        ]
    path = folder / "gateway.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def child_env(data_dir: Path, config: Path, admin_key: str, port: int) -> dict[str, str]:
    """The environment of the gateway and dashboard: the caller's, minus any gateway settings of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}
    return (
        env
        | FAST_SETTINGS
        | {
            "BATCHGW_DATA_DIR": str(data_dir),
            "BATCHGW_CONFIG_FILE": str(config),
            "BATCHGW_ADMIN_KEY": admin_key,
            "BATCHGW_HOST": "127.0.0.1",
            "BATCHGW_PORT": str(port),
        }
    )


class Admin:
    """The gateway's admin API."""

    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=f"{base_url}/admin", headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise DemoError(f"{method} /admin{path} answered {response.status_code}: {response.text[:300]}")
        return response.json()


# --- the steps, in the order the demo runs them --------------------------------------------------------


def start_providers(running: Running, console: Console) -> SimulatorCluster:
    """Step 1: the emulated providers."""
    running.cluster = cluster = start_emulators()
    console.print(f"emulated providers: {CHEAP} at {cluster.base_url(CHEAP)} (cheap, fails ~5% of requests), "
                  f"{PRICEY} at {cluster.base_url(PRICEY)}", highlight=False)  # fmt: skip
    return cluster


def start_gateway(running: Running, cluster: SimulatorCluster, data_dir: Path, port: int, console: Console) -> Gateway:
    """Step 2: the gateway on both emulators, with a fresh admin key; returns once it is ready."""
    admin_key = "bgw-admin-" + secrets.token_urlsafe(18)
    env = child_env(data_dir, write_gateway_config(data_dir, cluster), admin_key, port)
    url = f"http://127.0.0.1:{port}"
    child = running.children.start("gateway", ["serve"], env, data_dir / "gateway.log")
    wait_until_up(child, f"{url}/readyz", 90)
    console.print(f"gateway ready at {url}/v1 (log: {child.log_path})", highlight=False)
    return Gateway(url, admin_key, env, Admin(url, admin_key))


def start_dashboard(
    running: Running, gateway: Gateway, data_dir: Path, wanted_port: int, console: Console
) -> Dashboard:
    """Step 3 (unless headless): the dashboard, started now and awaited only once the batch is done."""
    port = choose_port(wanted_port, "dashboard", console)
    url = f"http://127.0.0.1:{port}"
    args = ["dashboard", "--gateway-url", gateway.url, "--port", str(port)]
    child = running.children.start("dashboard", args, gateway.env, data_dir / "dashboard.log")
    console.print(f"dashboard starting at {url}: open it to watch the batch (it asks for the admin key "
                  f"{gateway.admin_key})", highlight=False)  # fmt: skip
    return Dashboard(child, url)


def open_client(gateway: Gateway) -> tuple[str, openai.OpenAI]:
    """Step 4: a team key from the admin API and the official SDK client that uses it."""
    key = gateway.admin.call("POST", "/keys", json={"team": "demo", "name": "batchgw demo"})["key"]
    return key, openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=3, timeout=60)


def upload_requests(client: openai.OpenAI, requests: list[dict[str, Any]], data_dir: Path) -> FileObject:
    """Step 5: the sample requests, written to ``requests.jsonl`` and uploaded."""
    input_path = data_dir / "requests.jsonl"
    input_path.write_text("".join(json.dumps(r) + "\n" for r in requests), encoding="utf-8")
    with input_path.open("rb") as handle:
        return client.files.create(file=handle, purpose="batch")


def set_budget(admin: Admin, file_id: str, console: Console) -> None:
    """Step 6: a daily global budget just above the estimate, so that the spend raises billing alerts."""
    estimate = admin.call("POST", "/estimate", json={"file_id": file_id})
    limit = round(max(float(estimate["chosen_cost_usd"]), 1e-4) / BUDGET_SHARE, 6)
    budget = {"scope": "global", "period": "day", "limit_usd": limit, "hard": False, "thresholds": [0.5, 0.8, 1.0]}
    admin.call("PUT", "/budgets", json=budget)
    console.print(
        f"estimated cost ${estimate['chosen_cost_usd']:.4f} on the cheapest provider; "
        f"global daily budget set to ${limit:.4f} (alerts at 50%, 80%, 100%)",
        highlight=False,
    )


def submit_batch(client: openai.OpenAI, file_id: str, count: int, console: Console) -> Batch:
    """Step 7: the batch, submitted through the SDK with an idempotency key."""
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"demo": "review-sentiment"}, extra_headers={"Idempotency-Key": f"demo-{file_id}"},
    )  # fmt: skip
    console.print(f"submitted batch {batch.id}: {count:,} reviews to label (model {MODEL})")
    return batch


def watch(
    client: openai.OpenAI, batch_id: str, cluster: SimulatorCluster, console: Console, timeout_s: float = 600
) -> tuple[Any, float | None]:
    """Step 8: follow the batch to its end, taking the cheap provider down part-way; returns it and the outage time."""
    started = time.monotonic()
    outage_at: float | None = None
    last_line = ""
    last_print = 0.0
    while True:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        done = (counts.completed + counts.failed) if counts else 0
        total = counts.total if counts and counts.total else 0
        elapsed = time.monotonic() - started
        if outage_at is None and total and done >= total * OUTAGE_AT and batch.status not in TERMINAL:
            cluster.set_faults(CHEAP, down="refuse")
            outage_at = elapsed
            console.print(
                f"[bold red]>>> {CHEAP} is DOWN now[/bold red] (connections refused) with {done:,}/{total:,} "
                f"requests answered; the gateway has to move the rest to {PRICEY}"
            )
        meta = batch.metadata or {}
        line = (
            f"{elapsed:5.1f}s  {batch.status:<11} {done:>6,}/{total:,} answered"
            f"  ({counts.failed if counts else 0} failed)  on {meta.get('gateway_providers') or '-'}"
            f"  cost ${float(meta.get('gateway_cost_usd') or 0):.4f}"
        )
        changed = line.split()[1:] != last_line.split()[1:]
        if batch.status in TERMINAL or (changed and elapsed - last_print >= 1.5):
            console.print(line, highlight=False)
            last_line, last_print = line, elapsed
        if batch.status in TERMINAL:
            return batch, outage_at
        if elapsed > timeout_s:
            raise DemoError(f"batch {batch_id} did not finish within {timeout_s:.0f}s (status {batch.status})")
        time.sleep(0.5)


def write_results(client: openai.OpenAI, batch: Any, requests: list[dict[str, Any]], path: Path) -> Counter[str]:
    """Step 9: output and error lines in input order, one per custom_id; returns how many lines each custom_id got."""
    lines: dict[str, list[str]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for raw in client.files.content(file_id).text.splitlines():
                if raw.strip():
                    lines.setdefault(json.loads(raw)["custom_id"], []).append(raw)
    with path.open("w", encoding="utf-8") as out:
        for request in requests:
            for raw in lines.get(request["custom_id"], []):
                out.write(raw + "\n")
    return Counter({cid: len(found) for cid, found in lines.items()})


def report(outcome: DemoOutcome, started: float, console: Console) -> list[str]:
    """Step 10: the summary and the verdict; returns the problems found."""
    problems = print_summary(outcome, console)
    if problems:
        console.print("[bold red]demo failed:[/bold red] " + "; ".join(problems), highlight=False)
    else:
        console.print(f"[bold green]demo succeeded[/bold green] in {time.monotonic() - started:.0f}s")
    return problems


def stay_up(running: Running, dashboard: Dashboard, console: Console) -> int:
    """Step 11 (unless headless): once the dashboard answers, everything serves until Ctrl-C."""
    wait_until_up(dashboard.child, f"{dashboard.url}/_stcore/health", 60)
    console.print(f"dashboard ready at {dashboard.url}", highlight=False)
    return keep_running(running.children, console)


def run_steps(options: DemoOptions, running: Running, console: Console) -> int:
    """The demo's steps in order; returns the exit code."""
    started = time.monotonic()
    data_dir = prepare_data_dir(options.data_dir)
    running.data_dir_lock = hold_data_dir(data_dir)
    port = choose_port(options.port, "gateway", console)
    cluster = start_providers(running, console)
    gateway = start_gateway(running, cluster, data_dir, port, console)
    dashboard = None
    if not options.headless:
        dashboard = start_dashboard(running, gateway, data_dir, options.dashboard_port, console)
    client_key, client = open_client(gateway)
    requests = sample_requests(options.items, MODEL)
    upload = upload_requests(client, requests, data_dir)
    set_budget(gateway.admin, upload.id, console)
    batch = submit_batch(client, upload.id, len(requests), console)
    batch, outage_at = watch(client, batch.id, cluster, console)
    results_path = data_dir / "results.jsonl"
    answered = write_results(client, batch, requests, results_path)
    admin = gateway.admin
    outcome = DemoOutcome(
        batch=batch, detail=admin.call("GET", f"/batches/{batch.id}"),
        spend=admin.call("GET", "/spend", params={"group_by": "provider"}),
        alerts=admin.call("GET", "/alerts")["data"], answered=answered, requests=requests,
        results_path=results_path, outage_at=outage_at, gateway_url=gateway.url,
        dashboard_url=dashboard.url if dashboard else None, admin_key=gateway.admin_key, client_key=client_key,
        control_url=cluster.control_url, down=CHEAP,
    )  # fmt: skip
    problems = report(outcome, started, console)
    if dashboard is None:
        return 1 if problems else 0
    return stay_up(running, dashboard, console)


def run_demo(options: DemoOptions, console: Console) -> int:
    """The whole demo, stopping whatever it started however it ends; returns the exit code."""
    running = Running()
    # Set explicitly: a shell starting the demo in the background may have left SIGINT ignored.
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_steps(options, running, console)
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/bold red] {exc}", highlight=False)
        return 1
    except (openai.APIError, httpx.HTTPError) as exc:
        console.print(f"[bold red]demo failed:[/bold red] a call to the gateway failed: {exc}", highlight=False)
        dead = running.children.dead()
        if dead is not None:
            console.print(f"the {dead.name} had stopped; its log ({dead.log_path}) ends:\n{dead.tail()}")
        return 1
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    finally:
        for sig in previous:  # a second Ctrl-C must not cut the clean-up short and orphan a child
            signal.signal(sig, signal.SIG_IGN)
        # With the reader of a piped output gone, rich's first print points stdout at /dev/null and raises
        # SystemExit(1): the clean-up below still runs, quietly.
        console.print("stopping the gateway, dashboard and emulators ...")
        running.children.stop_all()
        if running.cluster is not None:
            running.cluster.stop()
        if running.data_dir_lock is not None:
            running.data_dir_lock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def keep_running(children: Children, console: Console) -> int:
    """Serve until Ctrl-C or SIGTERM (exit 0); a child that stops on its own ends the demo with an error."""
    console.print("[bold]Everything keeps running: press Ctrl-C to stop.[/bold]")
    try:
        while True:
            dead = children.dead()
            if dead is not None:
                console.print(
                    f"[bold red]the {dead.name} stopped unexpectedly; its log ends:[/bold red]\n{dead.tail()}"
                )
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        return 0


def main(options: DemoOptions, stdout: IO[str] | None = None) -> int:
    """Entry point of ``batchgw demo``."""
    console = Console(file=stdout, width=None if (stdout or sys.stdout).isatty() else 140)
    return run_demo(options, console)
