"""Provider requests whose bytes go out only while a condition holds: a create call's lease.

A worker frozen past its lease (SIGSTOP, a stopped VM, a long pause) resumes exactly where it stopped:
possibly after its last check that it still owns the shard and before the create request's first byte,
or between two writes of that request. Its heartbeat notices the lost lease only on its next tick, after
those writes have run, and a create that reaches the provider then makes a second, billed provider batch
next to the one the shard's new owner created. So the provider HTTP client's connections ask the
condition the caller set for the request (:func:`sending_only_while`) right before each write, with no
await between the check and the socket write: a refused write raises, the connection is dropped, and a
request cut off after its headers creates nothing at the provider.
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
    """Within the block (in this task), every write of a request on a :class:`FencedTransport` first asks
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
        if fence is not None and not fence.holds():
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


class FencedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (HTTP/1.1, certificates verified, no proxy) whose connections honour
    :func:`sending_only_while`."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        # httpx takes no network backend of its own: its pool is replaced by the same pool on a fenced one.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_FencedBackend(httpcore.AnyIOBackend()),
        )
