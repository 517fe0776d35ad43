"""Provider requests whose bytes go out only while a condition holds: a create call's lease.

A worker frozen past its lease (SIGSTOP, a stopped VM, a long pause) resumes exactly where it stopped:
possibly after its last check that it still owns the shard and before the create request's first byte,
or between two writes of that request. Its heartbeat notices the lost lease only on its next tick, after
those writes have run, and a create that reaches the provider then makes a second, billed provider batch
next to the one the shard's new owner created. So the provider HTTP client's connections ask the
condition the caller set for the request (:func:`sending_only_while`) right before each write: a refused
write raises, the connection is dropped, and a request cut off before its last byte creates nothing at the
provider. Between the check and the socket there is no await, unless the socket's send buffer is full (a
large body): a chunk checked before a freeze may then go out after it. Were it the request's last, the
provider creates the batch, and its answer, read as usual, is recorded as an orphan (cancelled) because
the worker's lease is gone.
"""

from __future__ import annotations

import contextlib
import contextvars
import ssl
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import httpcore
import httpx


@dataclass(frozen=True)
class _Fence:
    holds: Callable[[], bool]
    refusal: Callable[[], BaseException]


_fence: contextvars.ContextVar[_Fence | None] = contextvars.ContextVar("send_fence", default=None)


@contextlib.contextmanager
def sending_only_while(holds: Callable[[], bool], refusal: Callable[[], BaseException]) -> Iterator[None]:
    """Within the block (in this task), every write of a request on a client of :func:`fence_sends` first asks
    ``holds()``; when it answers ``False`` the write raises ``refusal()`` instead of sending anything."""
    token = _fence.set(_Fence(holds, refusal))
    try:
        yield
    finally:
        _fence.reset(token)


class _FencedStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        fence = _fence.get()
        # An empty write (the end of a body of known length) sends nothing: refusing it would fail a request
        # the server may already hold whole, and lose the answer that names what it created.
        if buffer and fence is not None and not fence.holds():
            raise fence.refusal()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _FencedStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _FencedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _FencedStream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _FencedStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def fence_sends(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Make every connection ``client`` opens, its own and its proxies' (as httpx set them up from the
    environment), honour :func:`sending_only_while`; returns ``client``.

    httpx takes no network backend of its own, so each of the client's connection pools is given a fenced
    one wrapping the backend it had. An httpx that no longer keeps its pools this way fails here, at start,
    rather than leaving creates unfenced."""
    transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(backend, httpcore.AsyncNetworkBackend):
            raise RuntimeError(f"cannot fence the sends of {type(transport).__name__}: no httpcore connection pool")
        if not isinstance(backend, _FencedBackend):
            pool._network_backend = _FencedBackend(backend)  # type: ignore[union-attr]
    return client
