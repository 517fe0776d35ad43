"""Fenced sends on a real loopback server: a request's bytes go out only while its fence holds, checked
right before each write, and a request without a fence (another task's) is never held back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from gateway.context import provider_http_client
from gateway.providers.send_fence import sending_only_while


class Refused(Exception):
    pass


@dataclass
class Received:
    """One request as the server received it: its head, its body bytes, and whether it arrived whole."""

    head: bytes
    body: bytes = b""
    whole: bool = False

    def __repr__(self) -> str:
        return f"Received(head={self.head[:40]!r}..., body={len(self.body)} bytes, whole={self.whole})"


@dataclass
class RecordingServer:
    """An HTTP/1.1 server that answers whole requests 200 and keeps every request it received, whole or
    cut off (recorded when its connection closes)."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[RecordingServer]:
    recording = RecordingServer()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.closing(writer):
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as cut:
                    if cut.partial:
                        recording.requests.append(Received(cut.partial))
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                try:
                    body = await reader.readexactly(length)
                except asyncio.IncompleteReadError as cut:
                    recording.requests.append(Received(head, cut.partial))
                    return
                recording.requests.append(Received(head, body, whole=True))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()

    listening = await asyncio.start_server(serve, "127.0.0.1", 0)
    recording.url = f"http://127.0.0.1:{listening.sockets[0].getsockname()[1]}/create"
    async with listening:
        yield recording


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with provider_http_client() as client:
        yield client


async def chunks(count: int, size: int) -> AsyncIterator[bytes]:
    """A streamed body: chunk ``i`` is ``size`` bytes of the letter ``A + i``, each sent in writes of its own."""
    for index in range(count):
        yield bytes([65 + index]) * size


async def arrived(server: RecordingServer, count: int) -> list[Received]:
    """The server's requests once ``count`` have arrived (a cut-off one arrives when its connection closes)."""
    for _ in range(300):
        if len(server.requests) >= count:
            return server.requests
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server received {server.requests}")


async def test_a_fence_that_holds_asks_before_every_write_and_sends_it_all(
    http: httpx.AsyncClient, server: RecordingServer
) -> None:
    asked: list[int] = []

    def holds() -> bool:
        asked.append(1)
        return True

    body = b"".join(bytes([65 + index]) * 70_000 for index in range(4))
    with sending_only_while(holds, Refused):
        answer = await http.post(server.url, content=chunks(4, 70_000), headers={"content-length": str(len(body))})
    assert answer.status_code == 200
    assert len(asked) >= 5  # the head, then each of the four body chunks
    [request] = await arrived(server, 1)
    assert request.whole and request.body == body


async def test_a_fence_that_stops_holding_mid_body_cuts_the_request_off(
    http: httpx.AsyncClient, server: RecordingServer
) -> None:
    answers = iter([True, True])  # the head and the first chunk; every later write is refused

    def holds() -> bool:
        return next(answers, False)

    with pytest.raises(Refused), sending_only_while(holds, Refused):
        await http.post(server.url, content=chunks(4, 70_000), headers={"content-length": str(4 * 70_000)})
    [request] = await arrived(server, 1)
    assert request.head.startswith(b"POST /create HTTP/1.1")
    assert not request.whole
    assert request.body == b"A" * 70_000  # the first chunk only: the refused ones never left


async def test_a_fence_that_never_holds_sends_nothing(http: httpx.AsyncClient, server: RecordingServer) -> None:
    with pytest.raises(Refused), sending_only_while(lambda: False, Refused):
        await http.post(server.url, json={"create": "a batch"})
    await asyncio.sleep(0.2)
    assert server.requests == []


async def test_the_fence_binds_its_own_task_only(http: httpx.AsyncClient, server: RecordingServer) -> None:
    """A fenced create refused while an unfenced request of another task shares the client: the other
    request goes out whole, and so does a request sent after the fenced block."""

    async def fenced() -> None:
        with sending_only_while(lambda: False, Refused):
            await http.post(server.url, json={"fenced": True})

    async def free() -> int:
        return (await http.post(server.url, json={"free": True})).status_code

    outcomes = await asyncio.gather(fenced(), free(), return_exceptions=True)
    assert isinstance(outcomes[0], Refused) and outcomes[1] == 200
    assert (await http.post(server.url, json={"after": True})).status_code == 200
    assert sorted(r.body for r in await arrived(server, 2)) == [b'{"after":true}', b'{"free":true}']
    assert all(r.whole for r in server.requests)


async def test_the_end_of_a_body_of_known_length_is_never_refused(
    http: httpx.AsyncClient, server: RecordingServer
) -> None:
    """The lease is lost once the body's last byte is written: the request is whole at the server, so the call
    goes on and its answer (naming what the server made of it) is read, not thrown away."""
    answers = iter([True, True])  # the head and the body; the end of the message is an empty write

    def holds() -> bool:
        return next(answers, False)

    with sending_only_while(holds, Refused):
        answer = await http.post(server.url, json={"create": "a batch"})
    assert answer.status_code == 200
    [request] = await arrived(server, 1)
    assert request.whole and request.body == b'{"create":"a batch"}'


async def test_requests_through_the_environments_proxy_are_fenced_too(
    server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider client takes its proxy from the environment, as httpx does, and fences the proxy's
    connections as its own: the recording server is the proxy here."""
    monkeypatch.setenv("HTTP_PROXY", server.url.removesuffix("/create"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with provider_http_client() as http:
        answer = await http.post("http://provider.invalid/create", json={"via": "proxy"})
        with pytest.raises(Refused), sending_only_while(lambda: False, Refused):
            await http.post("http://provider.invalid/create", json={"fenced": True})
    assert answer.status_code == 200
    [request] = await arrived(server, 1)
    assert request.head.startswith(b"POST http://provider.invalid/create HTTP/1.1"), "sent to the proxy"
    await asyncio.sleep(0.2)
    assert len(server.requests) == 1, "the fenced request sent the proxy nothing"
