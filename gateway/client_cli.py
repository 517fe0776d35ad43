"""``batchgw submit``, ``ls``, ``status``, ``cancel`` and ``download``: the client side, for people who just want
results.

These commands talk to a running gateway through its public API with the official ``openai`` SDK, exactly
as any client would; they never touch the database. The gateway URL and key come from ``--base-url`` /
``BATCHGW_BASE_URL`` and ``--api-key`` / ``BATCHGW_API_KEY``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from gateway.client_progress import TERMINAL, follow, requests_text, time_text, usd_text
from gateway.client_results import ResultsMismatch, write_results

if TYPE_CHECKING:
    import openai
    from openai.types import Batch
    from rich.console import Console

DEFAULT_BASE_URL = "http://127.0.0.1:8080/v1"
EXIT_INTERRUPTED = 130
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")

BaseUrl = Annotated[str, typer.Option("--base-url", envvar="BATCHGW_BASE_URL", help="The gateway's /v1 URL.")]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="BATCHGW_API_KEY", help="Client key (prefer BATCHGW_API_KEY).")
]


def _error_text(error: Any) -> str:
    """A batch error with its line number, unless its message already starts with it (``Line 4: ...``)."""
    message = str(error.message)
    if error.line and not message.startswith(f"Line {error.line}"):
        return f"line {error.line}: {message}"
    return message


def _writable_out(out: Path | None) -> Path | None:
    """``--out`` checked before anything is sent: a folder that is missing or not writable would fail only once the
    batch has run (and been paid for)."""
    if out is None:
        return None
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise typer.BadParameter(f"the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise typer.BadParameter(f"{str(out)!r} cannot be written")
    return out


Out = Annotated[
    Path | None,
    typer.Option(
        "--out",
        dir_okay=False,
        callback=_writable_out,
        help="Wait, then write the merged results here (output and error lines, in input order).",
    ),
]


class ClientError(Exception):
    """A failure the user can act on; printed without a traceback."""


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    # No markup: file names and the gateway's messages are printed as they are.
    return Console(stderr=stderr, highlight=False, soft_wrap=True, markup=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    from rich.text import Text

    _console(stderr=True).print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code)


def _client(base_url: str, api_key: str | None) -> openai.OpenAI:
    import openai

    if not api_key:
        _fail("no API key: pass --api-key or set BATCHGW_API_KEY (create one with `batchgw keys create`)", 2)
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=120.0)


@contextlib.contextmanager
def _clear_errors(base_url: str) -> Iterator[None]:
    """Turn SDK and file errors into one-line messages and a non-zero exit code."""
    import openai

    try:
        yield
    except openai.APIConnectionError:
        _fail(f"cannot reach the gateway at {base_url} (is `batchgw serve` running? see --base-url)")
    except openai.AuthenticationError:
        _fail(f"the gateway at {base_url} refused the API key (401): check --api-key / BATCHGW_API_KEY")
    except openai.NotFoundError as exc:
        _fail(f"the gateway answered 404: {_error_message(exc)}{_v1_hint(base_url)}")
    except openai.APIStatusError as exc:
        _fail(f"the gateway answered {exc.status_code}: {_error_message(exc)}")
    except (ClientError, ResultsMismatch, OSError) as exc:
        _fail(str(exc))


def _v1_hint(base_url: str) -> str:
    """A hint when the base URL lacks the API's ``/v1`` (every route then answers 404)."""
    if base_url.rstrip("/").endswith("/v1"):
        return ""
    return f" (the base URL should end in /v1: try --base-url {base_url.rstrip('/')}/v1)"


def _error_message(exc: Any) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    return str(error.get("message") or exc.message) if isinstance(error, dict) else str(exc.message)


def submit(
    file: Annotated[Path, typer.Argument(help="Batch input, one JSON request per line (OpenAI batch format).")],
    model: Annotated[str | None, typer.Option("--model", help="Set body.model of every request to this.")] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Routing policy (batch metadata `policy`).")] = None,
    max_cost: Annotated[
        str | None, typer.Option("--max-cost", metavar="USD", help="Spend cap in USD (metadata `max_cost_usd`).")
    ] = None,
    endpoint: Annotated[str, typer.Option("--endpoint", help=f"One of {', '.join(ENDPOINTS)}.")] = ENDPOINTS[0],
    completion_window: Annotated[str, typer.Option("--completion-window", help="e.g. 24h.")] = "24h",
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the batch ends.")] = False,
    out: Out = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Upload FILE through the gateway's API and create a batch; with --wait, follow it and write --out."""
    if not file.is_file():
        _fail(f"input file not found: {file}", 2)
    if endpoint not in ENDPOINTS:
        _fail(f"--endpoint must be one of {', '.join(ENDPOINTS)}", 2)
    metadata = {"policy": policy} if policy else {}
    if max_cost is not None:
        metadata["max_cost_usd"] = _parse_usd(max_cost)
    client = _client(base_url, api_key)
    console = _console()
    try:
        with _clear_errors(base_url):
            with _upload_source(file, model) as source:
                upload = client.files.create(file=(file.name, source), purpose="batch")
            batch = client.batches.create(
                input_file_id=upload.id,
                endpoint=endpoint,  # type: ignore[arg-type]
                completion_window=completion_window,  # type: ignore[arg-type]
                metadata=metadata,
            )
    except KeyboardInterrupt:
        _fail("interrupted before the batch was created; nothing runs", EXIT_INTERRUPTED)
    console.print(f"batch {batch.id} created ({batch.status}) from {file} as {upload.id}")
    if not (wait or out):
        console.print(f"follow it with: batchgw status {batch.id} --wait --out results.jsonl")
        return
    _wait_and_collect(client, batch.id, out, base_url)


def _parse_usd(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        _fail(f"--max-cost must be an amount in USD, got {text!r}", 2)
    if not value.is_finite() or value <= 0:
        _fail(f"--max-cost must be a positive amount in USD, got {text!r}", 2)
    return str(value)


@contextlib.contextmanager
def _upload_source(file: Path, model: str | None) -> Iterator[Any]:
    """The file to upload: FILE itself, or a copy with body.model rewritten line by line (flat memory)."""
    if model is None:
        with file.open("rb") as handle:
            yield handle
        return
    with tempfile.TemporaryFile() as copy:
        with file.open("rb") as source:
            for line in source:
                copy.write(_with_model(line, model))
        copy.seek(0)
        yield copy


def _with_model(line: bytes, model: str) -> bytes:
    """``line`` with body.model set; a line that is not a request object is kept for the gateway to report."""
    try:
        request = json.loads(line)
    except ValueError:
        return line
    if not isinstance(request, dict) or not isinstance(request.get("body"), dict):
        return line
    request["body"]["model"] = model
    return json.dumps(request, ensure_ascii=False).encode() + b"\n"


def status(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Show progress until the batch ends.")] = False,
    out: Out = None,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Show one batch; with --wait, follow it to its end and write the merged results to --out."""
    client = _client(base_url, api_key)
    if wait or out:
        _wait_and_collect(client, batch_id, out, base_url)
        return
    with _clear_errors(base_url):
        batch = client.batches.retrieve(batch_id)
    _console().print(_batch_table(batch))


def ls(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="How many of the newest batches.")] = 20,
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """List your newest batches."""
    from rich import box
    from rich.table import Column, Table

    client = _client(base_url, api_key)
    with _clear_errors(base_url):
        page = client.batches.list(limit=limit)
    if not page.data:
        _console().print("no batches yet")
        return
    table = Table(
        Column("id", no_wrap=True, min_width=30),
        Column("status", no_wrap=True),
        Column("requests", no_wrap=True),
        "providers",
        Column("cost", no_wrap=True),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for batch in page.data:
        meta = batch.metadata or {}
        table.add_row(
            batch.id,
            batch.status,
            requests_text(batch),
            meta.get("gateway_providers") or "-",
            usd_text(meta.get("gateway_cost_usd")),
        )
    _console().print(table)


def _batch_table(batch: Batch) -> Any:
    from rich.table import Table

    counts = batch.request_counts
    meta = dict(batch.metadata or {})
    table = Table("field", "value", title=f"batch {batch.id}", show_header=False)
    rows = [
        ("status", batch.status),
        ("endpoint", batch.endpoint),
        ("completion window", batch.completion_window),
        ("requests", f"{counts.completed} done, {counts.failed} failed of {counts.total}" if counts else "-"),
        ("providers", meta.pop("gateway_providers", "") or "-"),
        ("cost", usd_text(meta.pop("gateway_cost_usd", ""))),
        *([("paid twice", usd_text(meta.pop("gateway_paid_twice_usd")))] if "gateway_paid_twice_usd" in meta else []),
        *([("waiting", meta.pop("gateway_waiting"))] if "gateway_waiting" in meta else []),
        ("created", time_text(batch.created_at)),
        ("in progress", time_text(batch.in_progress_at)),
        ("finished", time_text(batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at)),
        ("input file", batch.input_file_id),
        ("output file", batch.output_file_id or "-"),
        ("error file", batch.error_file_id or "-"),
        *sorted(meta.items()),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    for error in (batch.errors.data or [])[:10] if batch.errors else []:
        table.add_row("error", _error_text(error))
    return table


def _wait_and_collect(client: openai.OpenAI, batch_id: str, out: Path | None, base_url: str) -> None:
    """Follow the batch with a live progress bar; Ctrl-C stops waiting but leaves the batch running."""
    console = _console()
    # Set explicitly: a shell that started this command in the background may have left SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    resume = f"batchgw status {batch_id} --wait" + (f" --out {out}" if out else "")
    console.print(f"waiting for {batch_id} (Ctrl-C stops waiting; the batch keeps running)")
    try:
        with _clear_errors(base_url):
            batch = follow(client, batch_id, console)
    except KeyboardInterrupt:
        console.print(f"\nstopped waiting: batch {batch_id} is still running on the gateway.\nresume with: {resume}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    counts = batch.request_counts
    summary = f"{counts.completed} done, {counts.failed} failed of {counts.total}" if counts else ""
    console.print(f"batch {batch_id} {batch.status}: {summary}")
    for error in (batch.errors.data or [])[:10] if batch.errors else []:
        console.print(f"  {_error_text(error)}")
    if out is not None:
        try:
            with _clear_errors(base_url):
                written = write_results(client, batch, out)
        except KeyboardInterrupt:
            _fail(f"interrupted while writing {out}; write it again with: {resume}", EXIT_INTERRUPTED)
        console.print(f"wrote {written} result lines to {out}")
    elif batch.output_file_id or batch.error_file_id:
        files = ", ".join(
            f"{what} file {file_id}"
            for what, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id))
            if file_id
        )
        console.print(f"results are on the gateway ({files}); write them with: batchgw download {batch_id} --out FILE")
    if batch.status != "completed":
        raise typer.Exit(1)


def cancel(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch id.")],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Cancel a batch: unfinished requests stop, finished ones keep their results (fetch them with download)."""
    client = _client(base_url, api_key)
    with _clear_errors(base_url):
        batch = client.batches.cancel(batch_id)
    _console().print(
        f"batch {batch.id} {batch.status}: {requests_text(batch)} requests done; finished requests keep their results "
        f"(batchgw download {batch.id} --out FILE once it has ended)"
    )


def download(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch id.")],
    out: Annotated[
        Path, typer.Option("--out", dir_okay=False, callback=_writable_out, help="Where to write the merged results.")
    ],
    base_url: BaseUrl = DEFAULT_BASE_URL,
    api_key: ApiKey = None,
) -> None:
    """Write an ended batch's results to --out: output and error lines together, in input order."""
    client = _client(base_url, api_key)
    with _clear_errors(base_url):
        batch = client.batches.retrieve(batch_id)
        if batch.status not in TERMINAL:
            raise ClientError(
                f"batch {batch_id} is {batch.status}: its results are not complete yet; "
                f"wait for them with: batchgw status {batch_id} --wait --out {out}"
            )
        written = write_results(client, batch, out)
    _console().print(f"wrote {written} result lines of batch {batch_id} ({batch.status}) to {out}")
