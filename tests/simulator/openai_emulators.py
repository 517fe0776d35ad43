"""Helpers of the OpenAI emulator tests: the emulated providers, the SDK client and batch round trips."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Final

import httpx
import openai
from openai.types import Batch, FileObject

from gateway.simulator import ProviderSpec, SimulatorCluster

KEY = "sk-test"
CHAT: Final = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
HTTP = httpx.Client(timeout=10)


def sdk(cluster: SimulatorCluster, name: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url(name), api_key=key, max_retries=0, _strict_response_validation=True)


def control(cluster: SimulatorCluster, method: str, path: str, body: Any = None) -> httpx.Response:
    return HTTP.request(method, f"{cluster.control_url}{path}", json=body)


def set_faults(cluster: SimulatorCluster, name: str = "main", **faults: Any) -> dict[str, Any]:
    response = control(cluster, "POST", f"/providers/{name}/faults", faults)
    assert response.status_code == 200, response.text
    return response.json()


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def lines_of(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [chat_line(f"req-{i:03d}", f"question number {i}", **extra) for i in range(count)]


def upload(client: openai.OpenAI, lines: list[dict[str, Any]] | list[str], name: str = "in.jsonl") -> FileObject:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    return client.files.create(file=(name, text.encode()), purpose="batch")


def submit(client: openai.OpenAI, lines: list[dict[str, Any]] | list[str], **kwargs: Any) -> Batch:
    file = upload(client, lines)
    endpoint = kwargs.pop("endpoint", CHAT)
    return client.batches.create(input_file_id=file.id, endpoint=endpoint, completion_window="24h", **kwargs)


def wait(client: openai.OpenAI, batch_id: str, until: Callable[[Batch], bool] | None = None) -> Batch:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if until(batch) if until else batch.status in TERMINAL:
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} stuck in {batch.status}")


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def emulators() -> SimulatorCluster:
    """Two emulated OpenAI providers: ``main`` (keyed, chat and embeddings) and ``slow`` (keyless)."""
    specs = [
        ProviderSpec(name="main", models=["gpt-4o-mini", "llama-3.3-70b", "text-embedding-3-small"], api_key=KEY),
        ProviderSpec(name="slow", models=["gpt-4o-mini"], processing_delay_s=1.5),
    ]
    return SimulatorCluster(specs, control_port=0)
