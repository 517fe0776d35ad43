"""Results of a finished batch, for the client commands: its output and error files joined on ``custom_id``
and written in the order of its input file, with flat memory (lines are found again by offset)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai
    from openai.types import Batch


class ResultsMismatch(Exception):
    """Result lines that match no request of the input file."""


def write_results(client: openai.OpenAI, batch: Batch, out: Path) -> int:
    """Output and error lines joined on custom_id, in the order of the batch's input file."""
    with tempfile.TemporaryDirectory() as folder:
        results: dict[str, tuple[Path, int]] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                path = Path(folder) / file_id
                download(client, file_id, path)
                with path.open("rb") as lines:
                    offset = 0
                    for line in lines:
                        if line.strip():
                            results.setdefault(str(json.loads(line)["custom_id"]), (path, offset))
                        offset += len(line)
        source = Path(folder) / "input.jsonl"
        download(client, batch.input_file_id, source)
        written = 0
        handles: dict[Path, Any] = {}
        try:
            with source.open("rb") as requests, out.open("wb") as target:
                for line in requests:
                    custom_id = custom_id_of(line)
                    if custom_id is None or custom_id not in results:
                        continue
                    path, offset = results.pop(custom_id)
                    handle = handles.get(path) or handles.setdefault(path, path.open("rb"))
                    handle.seek(offset)
                    result = handle.readline()
                    target.write(result if result.endswith(b"\n") else result + b"\n")
                    written += 1
        finally:
            for handle in handles.values():
                handle.close()
        if results:
            raise ResultsMismatch(f"{len(results)} result lines match no request of the input file")
        return written


def custom_id_of(line: bytes) -> str | None:
    try:
        request = json.loads(line)
    except ValueError:
        return None
    return str(request["custom_id"]) if isinstance(request, dict) and "custom_id" in request else None


def download(client: openai.OpenAI, file_id: str, path: Path) -> None:
    with client.files.with_streaming_response.content(file_id) as response, path.open("wb") as target:
        for chunk in response.iter_bytes():
            target.write(chunk)
