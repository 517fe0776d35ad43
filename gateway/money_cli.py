"""``batchgw estimate`` (against a running gateway or the local configuration) and ``batchgw canary``.

Against a running gateway (``--base-url`` / ``BATCHGW_BASE_URL`` and ``--api-key`` / ``BATCHGW_API_KEY``),
``estimate`` uploads the file with the official SDK, asks ``POST /v1/estimates`` (so estimates learn from the
key's team), and deletes the upload. ``canary`` lists, releases or cancels batches held after their canary
through the admin API (``--admin-key`` / ``BATCHGW_ADMIN_KEY``).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from router_policies.helpers import format_seconds


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _error_of(response: httpx.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return str(error.get("message") or f"HTTP {response.status_code}")
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"


def remote_estimate(
    file: Path, base_url: str, api_key: str | None, *, model: str | None, policy: str | None,
    deadline: str | None, endpoint: str,
) -> dict[str, Any]:  # fmt: skip
    """The gateway's estimate of ``file`` for the key's team: upload, ``POST /v1/estimates``, delete the upload."""
    import openai

    if not api_key:
        fail("no API key: pass --api-key or set BATCHGW_API_KEY (create one with `batchgw keys create`)", 2)
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=120.0)
    body: dict[str, Any] = {"endpoint": endpoint}
    for name, value in (("model", model), ("policy", policy), ("deadline", deadline)):
        if value:
            body[name] = value
    try:
        with file.open("rb") as handle:
            upload = client.files.create(file=handle, purpose="batch")
    except openai.APIConnectionError:
        fail(f"cannot reach the gateway at {base_url}")
    except openai.APIStatusError as exc:
        fail(f"the gateway refused the upload: {exc.message}")
    try:
        response = httpx.post(
            f"{base_url.rstrip('/')}/estimates",
            json=body | {"file_id": upload.id},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=120,
        )
    except httpx.HTTPError:
        fail(f"cannot reach the gateway at {base_url}")
    finally:
        with contextlib.suppress(openai.APIError):
            client.files.delete(upload.id)
    if response.status_code != 200:
        fail(f"the gateway answered {response.status_code}: {_error_of(response)}")
    return dict(response.json())


def print_estimate(estimate: dict[str, Any], title: str) -> int:
    """Print an estimate (as ``/v1/estimates`` answers it); the exit code: 1 when something cannot be routed."""
    # No markup: provider names and the gateway's sentences are printed as they are.
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False, markup=False)
    table = Table(title=f"{title}: estimated cost by provider (policy {estimate['policy']})")
    columns = ("model", "provider", "mode", "requests", "tokens in/out (p50-p90 out)", "sync $", "cost $",
               "savings $", "turnaround p50/p90", "fan-out", "policy")  # fmt: skip
    for column in columns:
        left = column in ("model", "provider", "mode", "policy")
        table.add_column(column, justify="left" if left else "right")
    for row in estimate["data"]:
        choice = "chosen" if row["rank"] == 1 else (f"#{row['rank']}" if row["rank"] else "ruled out")
        out = f"{row['output_tokens']:,}"
        if row["output_tokens_low"] != row["output_tokens_high"]:
            out += f" ({row['output_tokens_low']:,}-{row['output_tokens_high']:,})"
        table.add_row(
            row["model"],
            row["provider"] + ("" if row["priced"] else " (unpriced)"),
            row["mode"],
            f"{row['requests']:,}",
            f"{row['input_tokens']:,}/{out}",
            f"{row['sync_cost_usd']:.4f}",
            f"{row['cost_usd']:.4f}",
            f"{row['savings_usd']:.4f}",
            f"{format_seconds(row['turnaround_p50_s'])}/{format_seconds(row['turnaround_p90_s'])}",
            format_seconds(row["fanout_s"]),
            choice,
        )
    if estimate["data"]:  # else nothing could be priced: the problems below say why
        console.print(table)
    bases = sorted({f"{row['model']}: {row['basis']}" for row in estimate["data"]})
    for basis in bases:
        console.print(f"estimate basis, {basis}")
    for advice in estimate.get("advice", []):
        flags = [flag for flag, on in (("small job", advice["small_job"]), ("misses the deadline",
                 not advice["meets_deadline"])) if on]  # fmt: skip
        suffix = f" [{', '.join(flags)}]" if flags else ""
        console.print(f"advice for {advice['model']}: {advice['recommendation'].upper()}{suffix}: {advice['reason']}")
    for problem in estimate["problems"]:
        console.print(f"cannot route: {problem}")
    if not estimate["data"]:
        return 1
    low, high = estimate["chosen_cost_range_usd"]
    spread = f" (p50-p90 range ${low:.4f}-${high:.4f})" if abs(high - low) > 1e-12 else ""
    console.print(f"Estimated total on the policy's choices: ${estimate['chosen_cost_usd']:.4f}{spread}")
    return 1 if estimate["problems"] else 0


def gateway_root(base_url: str) -> str:
    """The gateway's root URL from a ``/v1`` URL (or a root URL)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def admin_call(base_url: str, admin_key: str | None, method: str, path: str) -> Any:
    """One admin API call; a failure exits with the gateway's message."""
    if not admin_key:
        fail("no admin key: pass --admin-key or set BATCHGW_ADMIN_KEY", 2)
    try:
        url = f"{gateway_root(base_url)}/admin{path}"
        response = httpx.request(method, url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    except httpx.HTTPError:
        fail(f"cannot reach the gateway at {gateway_root(base_url)}")
    if response.status_code != 200:
        fail(f"the gateway answered {response.status_code}: {_error_of(response)}")
    return response.json()


def print_held(held: dict[str, Any]) -> None:
    """One held (or just released or cancelled) batch."""
    projected = held.get("canary_projected_usd")
    projection = f"projected ${projected:.4f}" if projected is not None else "no projection"
    estimate = held.get("estimated_cost_usd")
    estimated = f"estimated ${estimate:.4f}" if estimate is not None else "no estimate"
    status = held["status"] + (f", held: {held['hold_detail']}" if held.get("hold_reason") else "")
    typer.echo(f"{held['id']}  team {held.get('team') or '-'}  {projection}, {estimated}  ({status})")
