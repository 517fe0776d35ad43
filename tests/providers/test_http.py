"""The HTTP base of the adapters: the status table, sanitising, the download that starts again cleanly
after a cut, and a wrong key, from the adapter up to what a gateway's client and log see.

Downloads are cut for real: a TCP relay in front of each emulator drops the connection part-way
through the first download of a result file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from gateway.providers.base import (
    ProviderAuthFailed,
    ProviderBatchState,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SyncRequest,
)
from gateway.providers.config import ProviderConfig
from gateway.providers.error_text import sanitise
from gateway.providers.http import HttpAdapter
from gateway.providers.registry import build_adapter
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.conftest import ENGINE_ENV, GatewayProcess
from tests.providers import support
from tests.providers.support import CHAT, FAST_RETRY

MODEL = "shared-model"
RIGHT_KEY = "sk-proj-R1ghtKeyQ7vLm2Xc9Tb4Nw8Hs3Jd6"
WRONG_KEY = "sk-proj-Wr0ngKeyZ5gYk1Pq7Mv3Bt9Cx2Lf4"
KEY_ENV = "BATCHGW_TEST_KEYED_PROVIDER_KEY"
EMULATOR_KIND = {"openai": "openai", "anthropic": "anthropic", "gemini": "gemini", "openai_sync": "openai"}
BASE_PATH = {"openai": "/v1", "anthropic": "", "gemini": "", "openai_sync": "/v1"}
DOWNLOAD_MARK = {"openai": b"/content", "anthropic": b"/results", "gemini": b":download"}


def fragments(key: str, size: int = 4) -> set[str]:
    """Every ``size``-character piece of a key."""
    return {key[i : i + size] for i in range(len(key) - size + 1)}


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        *(ProviderSpec(name=f"plain-{kind}", kind=kind, models=[MODEL]) for kind in ("openai", "anthropic", "gemini")),
        *(
            ProviderSpec(name=f"keyed-{kind}", kind=kind, models=[MODEL], api_key=RIGHT_KEY)
            for kind in ("openai", "anthropic", "gemini")
        ),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


# --------------------------------------------------------------------------- the status table


class _Bare(HttpAdapter):
    kind = "bare"

    async def health(self) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ProviderRejected), (401, ProviderAuthFailed), (403, ProviderAuthFailed), (404, ProviderRejected),
        (408, ProviderUnavailable), (409, ProviderRejected), (429, ProviderRateLimited), (500, ProviderUnavailable),
        (503, ProviderUnavailable), (529, ProviderUnavailable),
    ],
)  # fmt: skip
def test_status_table(status: int, expected: type[ProviderError]) -> None:
    config = ProviderConfig(name="p", kind="bare", base_url="https://api.example.com/v1", api_key_env="P_KEY")
    adapter = _Bare(config=config, http=httpx.AsyncClient(), api_key="k")
    response = httpx.Response(status, json={"error": {"message": "no"}}, headers={"retry-after-ms": "1500"})
    error = adapter._status_error("GET", "/x", response)
    assert type(error) is expected
    if isinstance(error, ProviderUnavailable):
        assert error.retry_after_s == 1.5
    if isinstance(error, ProviderRejected):
        assert error.status_code == status
    if isinstance(error, ProviderAuthFailed):
        assert f"authentication failed (HTTP {status}): check the key in P_KEY" in str(error)


# --------------------------------------------------------------------------- sanitising

OPENAI_401 = (
    "Incorrect API key provided: sk-proj-Wr0***************Lf4. "
    "You can find your API key at https://platform.openai.com/account/api-keys."
)


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        (OPENAI_401, ["Incorrect API key provided: ***.", "at prov."], ["Wr0", "Lf4", "platform", "https"]),
        (f"key {WRONG_KEY} refused", ["key *** refused"], [WRONG_KEY]),
        ("ending in …Bt9Cx2Lf4 and Z5gYk", ["ending in", "and"], ["Bt9C", "Z5gY"]),  # pieces of the key only
        ("use Authorization: Bearer abc.def-ghi please", ["Bearer ***", "please"], ["abc.def"]),
        ("other key sk-ant-api03-AbCdEf0123456789 masked sk-abc***xyz", ["other key ***", "masked ***"], ["AbCd"]),
        ("google AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStU bad", ["google *** bad"], ["AIza"]),
        ("see http://10.0.0.7:8080/v1/files?key=1, then", ["see prov, then"], ["10.0.0.7"]),
        ("host 10.0.0.7:8080 and 10.0.0.7 timed out", ["host prov and prov timed out"], ["10.0.0.7"]),
        ("docs (url=https://platform.example/docs).", ["docs (url=prov)."], ["platform"]),
        (
            "No such batch object: batch_abc123 (x-api-key header; project quota; model xai-grok-beta)",
            ["No such batch object: batch_abc123 (x-api-key header; project quota; model xai-grok-beta)"],
            [],
        ),
        ("word " * 1000 + WRONG_KEY[:20], ["word word", " ..."], [WRONG_KEY[:12]]),  # cut before sanitising
    ],
)
def test_sanitise(text: str, kept: list[str], gone: list[str]) -> None:
    clean = sanitise(text, provider="prov", secret=WRONG_KEY, base_url="http://10.0.0.7:8080/v1")
    for part in kept:
        assert part in clean, clean
    for part in gone:
        assert part not in clean, clean
    assert not fragments(WRONG_KEY.removeprefix("sk-proj-")) & fragments(clean)


def test_sanitise_without_a_configured_key_still_drops_key_shapes() -> None:
    clean = sanitise(OPENAI_401, provider="prov")
    assert clean == "Incorrect API key provided: ***. You can find your API key at prov."


# --------------------------------------------------------------------------- a download cut part-way


class CuttingRelay:
    """A loopback TCP relay to an emulator; the first ``cuts`` requests whose request line holds ``mark``
    lose their connection once ``after_bytes`` of the answer went through."""

    def __init__(self, target_port: int, mark: bytes, *, cuts: int = 1, after_bytes: int = 6000) -> None:
        self.target_port, self.mark, self.cuts, self.after_bytes = target_port, mark, cuts, after_bytes
        self.marked = 0
        self.cut_at: list[int] = []
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> CuttingRelay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        upstream_in, upstream_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            head = await client_in.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            client_out.close()
            upstream_out.close()
            return
        cut = self.mark in head.split(b"\r\n", 1)[0]
        if cut:
            self.marked += 1
            cut = self.cuts > 0
            self.cuts -= 1
        upstream_out.write(head)
        limit = self.after_bytes if cut else None

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while chunk := await source.read(4096):
                    if limit is not None and sent + len(chunk) >= limit:
                        sink.write(chunk[: limit - sent])
                        await sink.drain()
                        self.cut_at.append(limit)
                        sink.transport.abort()  # the connection drops mid-answer
                        return
                    sink.write(chunk)
                    sent += len(chunk)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(client_in, upstream_out, None), pump(upstream_in, client_out, limit))
        upstream_out.close()


def chat_line(custom_id: str, text: str) -> dict[str, Any]:
    return support.chat_line(custom_id, text, MODEL, max_tokens=64)


def long_questions(folder: Path, count: int) -> ShardSubmission:
    lines = [chat_line(f"req-{i:04d}", f"question {i}: " + "tell me more " * 8) for i in range(count)]
    return support.write_shard(folder, lines, MODEL)


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
async def test_download_cut_part_way_is_retried_without_duplicates(
    kind: str, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    count = 120
    name = f"plain-{kind}"
    cluster.reset(name)
    async with (
        CuttingRelay(cluster.port_of(name), DOWNLOAD_MARK[kind]) as relay,
        # One connection per call, so that the relay sees each call on its own connection.
        httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as http,
    ):
        config = ProviderConfig(
            name=name, kind=kind, base_url=f"http://127.0.0.1:{relay.port}{BASE_PATH[kind]}", timeout_s=5,
            options={"inline_max_bytes": 0} if kind == "gemini" else {},  # results come back as a file
        )  # fmt: skip
        adapter = build_adapter(config, http)
        assert isinstance(adapter, HttpAdapter)
        adapter.retry = FAST_RETRY
        shard = long_questions(tmp_path, count)
        batch_id = (await adapter.submit(shard)).provider_batch_id
        assert (await support.wait_terminal(adapter, batch_id)).state is ProviderBatchState.COMPLETED
        dest = tmp_path / "results.jsonl"
        dest.write_bytes(b'{"custom_id":"earlier"}\n')
        await adapter.fetch_results(batch_id, dest, input_path=shard.input_path)

    assert relay.marked == 2 and relay.cut_at == [relay.after_bytes], "one cut download, then one whole one"
    size = dest.stat().st_size
    assert size > 2 * relay.after_bytes, "the cut came part-way through the file"
    ids = [msgspec.json.decode(line)["custom_id"] for line in dest.read_bytes().splitlines()]
    assert ids[0] == "earlier" and len(ids) == count + 1 and sorted(ids[1:]) == [f"req-{i:04d}" for i in range(count)]


# --------------------------------------------------------------------------- a wrong key


def keyed_config(cluster: SimulatorCluster, kind: str) -> ProviderConfig:
    base = cluster.base_url(f"keyed-{EMULATOR_KIND[kind]}").removesuffix("/v1") + BASE_PATH[kind]
    return ProviderConfig(name="keyed", kind=kind, base_url=base, api_key_env=KEY_ENV, models=[MODEL], timeout_s=5)


def assert_clean(text: str, cluster: SimulatorCluster, kind: str) -> None:
    """No piece of the wrong key, no address of the emulator."""
    emulator = cluster.base_url(f"keyed-{EMULATOR_KIND[kind]}")
    host = emulator.removeprefix("http://").split("/")[0]
    assert WRONG_KEY not in text and not fragments(WRONG_KEY) & fragments(text), text
    assert emulator not in text and host not in text and "http://" not in text, text


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini", "openai_sync"])
async def test_wrong_key_raises_auth_failed_with_a_clean_message(
    kind: str, cluster: SimulatorCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(KEY_ENV, WRONG_KEY)
    async with httpx.AsyncClient() as http:
        adapter = build_adapter(keyed_config(cluster, kind), http)  # as the gateway builds it
        assert isinstance(adapter, HttpAdapter)
        adapter.retry = FAST_RETRY
        with pytest.raises(ProviderAuthFailed) as info:
            if kind == "openai_sync":
                body = msgspec.json.encode(chat_line("a", "hello")["body"])
                await adapter.execute(SyncRequest("a", CHAT, body, estimated_tokens=10))
            else:
                await adapter.submit(long_questions(tmp_path, 2))
        health = await adapter.health()
    message = str(info.value)
    assert info.value.status_code == 401 and isinstance(info.value, ProviderRejected)
    assert (
        "provider keyed: POST /" in message
        and f"authentication failed (HTTP 401): check the key in {KEY_ENV}" in message
    )
    assert_clean(message, cluster, kind)
    assert not health.healthy and "authentication failed (HTTP 401)" in health.detail
    assert_clean(health.detail, cluster, kind)
    log = cluster.state(f"keyed-{EMULATOR_KIND[kind]}").log
    assert log and log[-1].status == 401, "the emulator refused the key"


async def test_the_emulated_openai_401_names_a_fragment_and_a_url(cluster: SimulatorCluster) -> None:
    """What the adapter must clean up: the OpenAI protocol's 401 shows part of the key and an address."""
    async with httpx.AsyncClient() as http:
        base = cluster.base_url("keyed-openai")
        answer = await http.get(f"{base}/models", headers={"Authorization": f"Bearer {WRONG_KEY}"})
    message = answer.json()["error"]["message"]
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    assert f"{WRONG_KEY[:6]}*" in message and f"*{WRONG_KEY[-4:]}." in message and WRONG_KEY not in message
    assert base.removesuffix("/v1").removeprefix("http://") in message


def test_gateway_with_a_wrong_key_shows_clients_and_its_log_no_key_and_no_url(
    gateway_factory: Any, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    """The gateway's client and its log see that the provider refused the key, and nothing of the key."""
    config = keyed_config(cluster, "openai")
    path = tmp_path / "providers.toml"
    path.write_text(
        f'[providers.keyed]\nkind = "openai"\nbase_url = {json.dumps(config.base_url)}\n'
        f'api_key_env = "{KEY_ENV}"\nmodels = {{ "{MODEL}" = "{MODEL}" }}\n',
        encoding="utf-8",
    )
    gateway: GatewayProcess = gateway_factory({"BATCHGW_CONFIG_FILE": str(path), KEY_ENV: WRONG_KEY, **ENGINE_ENV})
    gateway.start()
    client = gateway.client(gateway.create_key("acme"))
    upload = b"".join(json.dumps(chat_line(f"r{i}", "hi")).encode() + b"\n" for i in range(3))
    file = client.files.create(file=("input.jsonl", upload), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")

    deadline = time.monotonic() + 30
    while "authentication failed" not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    auth_lines = [line for line in gateway.log().splitlines() if "authentication failed" in line]
    assert auth_lines, f"the refusal is not in the gateway's log:\n{gateway.log()}"
    assert f"authentication failed (HTTP 401): check the key in {KEY_ENV}" in auth_lines[0]
    for line in auth_lines:
        assert_clean(line[line.index("provider keyed:") :], cluster, "openai")
    # The start-up line names each provider's host for the operator; nothing else in the log may.
    startup = "gateway.config: provider keyed:"
    operational = "\n".join(line for line in gateway.log().splitlines() if startup not in line)
    assert_clean_of_long_pieces(operational, cluster)

    time.sleep(0.5)  # whatever the engine does next with the refusal, the client's view stays clean
    seen = client.batches.retrieve(batch.id)
    assert_clean_of_long_pieces(seen.model_dump_json(), cluster)
    for error in seen.errors.data if seen.errors and seen.errors.data else []:
        assert_clean(error.message or "", cluster, "openai")
    for file_id in (seen.error_file_id, seen.output_file_id):
        if file_id:
            for line in client.files.content(file_id).text.splitlines():
                line_error = json.loads(line).get("error") or {}
                assert_clean(str(line_error.get("message", "")), cluster, "openai")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_missing")  # the gateway still answers its clients


def assert_clean_of_long_pieces(text: str, cluster: SimulatorCluster) -> None:
    """For text that also holds random ids: no piece of the wrong key of 6 characters or more, not the
    4 characters the emulator shows, and no address of the emulator."""
    emulator = cluster.base_url("keyed-openai")
    assert WRONG_KEY not in text and not fragments(WRONG_KEY, 6) & fragments(text, 6)
    assert f"{WRONG_KEY[-4:]}." not in text and WRONG_KEY[:6] not in text
    assert emulator.removeprefix("http://").split("/")[0] not in text
