"""Helpers the adapter tests share: request lines, shard files, waiting for a provider batch, reading results."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from gateway.providers.base import PollResult, ProviderAdapter, ShardSubmission, SyncRequest
from gateway.providers.http import RetryPolicy
from gateway.simulator import SimulatorCluster

CHAT = "/v1/chat/completions"
FAST_RETRY = RetryPolicy(attempts=3, initial_s=0.01, max_s=0.05, retry_after_cap_s=2.0)
"""Retries quick enough for a test, with the same number of attempts as production."""


def chat_line(custom_id: str, text: str, model: str, **fields: Any) -> dict[str, Any]:
    """One OpenAI batch input line asking ``model`` one user question, plus any extra body fields."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], **fields}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def sync_request(custom_id: str, model: str, text: str = "hello", **fields: Any) -> SyncRequest:
    """One chat request of a synchronous shard, asking ``model`` one user question (16 tokens at most)."""
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 16, **fields}
    return SyncRequest(custom_id, CHAT, msgspec.json.encode(body), estimated_tokens=20)


async def executed(adapter: ProviderAdapter, item: SyncRequest) -> dict[str, Any]:
    """The decoded output line ``adapter`` gives for ``item``."""
    line: dict[str, Any] = msgspec.json.decode(await adapter.execute(item))
    return line


def questions(count: int, model: str, **fields: Any) -> list[dict[str, Any]]:
    """``count`` plain lines ``req-000``, ``req-001``... asking "question N"."""
    return [chat_line(f"req-{index:03d}", f"question {index}", model, **fields) for index in range(count)]


def write_shard(folder: Path, lines: list[dict[str, Any]], model: str, endpoint: str = CHAT) -> ShardSubmission:
    """Write ``lines`` as a shard input file in ``folder`` and describe it as the pipeline would."""
    path = folder / f"shard-{uuid.uuid4().hex[:8]}.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(line) + b"\n" for line in lines))
    return ShardSubmission(
        shard_id=f"shard-{uuid.uuid4().hex[:6]}",
        submit_token=f"tok-{uuid.uuid4().hex}",
        endpoint=endpoint,
        provider_model=model,
        input_path=path,
        request_count=len(lines),
    )


async def wait_terminal(adapter: ProviderAdapter, batch_id: str, timeout: float = 20.0) -> PollResult:
    """Poll until the provider batch ends; fail the test if it has not ended after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await adapter.poll(batch_id)
        if result.state.is_terminal:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not end within {timeout} s")


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The decoded JSON lines of a result file, in file order."""
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]


async def calls(cluster: SimulatorCluster, name: str, method: str, path_part: str) -> list[Any]:
    """The calls emulator ``name`` logged with this method and a path containing ``path_part``."""
    await asyncio.sleep(0.1)  # a call is logged as its answer is sent; give the last one time to land
    return [entry for entry in cluster.state(name).log if entry.method == method and path_part in entry.path]
