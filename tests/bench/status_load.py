"""Status reads under load: one batch's ``GET`` from many keep-alive connections, timed, with the server's CPU.

The client speaks HTTP/1.1 on plain asyncio streams, so that it costs a fraction of what a full client library
does (see :func:`status_load`). :mod:`tests.bench.bench_floor` runs it against the emulator and the gateway in turn.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import dataclass

import httpx

from tests.bench import cpu_seconds

STATUS_CONNECTIONS = 32


@dataclass
class StatusFigures:
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float
    """The server process's CPU milliseconds per read (the gateway's API process: a database server's CPU is
    not counted)."""
    client_cpu_share: float
    """This process's CPU seconds per second of the run (1.0: one core busy)."""


async def status_load(url: str, api_key: str, seconds: float, server_pid: int) -> StatusFigures:
    """GET ``url`` from ``STATUS_CONNECTIONS`` keep-alive connections for ``seconds``; throughput, latency, and
    the CPU time of the server's process (``server_pid``; not a database server's) and of this client.

    The client speaks HTTP/1.1 on plain asyncio streams (the request's bytes built once, an answer read by its
    ``content-length``), so that it costs a fraction of what a full client library does: the server, not the
    client, should be the bottleneck. The connections are opened and warmed before the timed run.
    """
    target = httpx.URL(url)
    port = target.port or (443 if target.scheme == "https" else 80)
    request = (
        f"GET {target.raw_path.decode()} HTTP/1.1\r\nHost: {target.host}:{port}\r\n"
        f"Authorization: Bearer {api_key}\r\n\r\n"
    ).encode()
    latencies: list[float] = []

    async def read_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise RuntimeError("the server closed a status-read connection") from None
        status = head.split(b" ", 2)[1]
        lengths = [line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if not lengths:
            raise RuntimeError(f"a status read answered {status.decode()} without a content-length: {head[:300]!r}")
        body = await reader.readexactly(int(lengths[0].split(b":", 1)[1]))
        if status != b"200":
            raise RuntimeError(f"status read answered {status.decode()}: {body[:200]!r}")

    async def one_connection(until: float, ready: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(target.host, port)
        try:
            while time.monotonic() < until:  # warm: the route, the connection, any cache
                await read_one(reader, writer)
            await ready.wait()
            while time.monotonic() < deadline:
                sent = time.monotonic()
                await read_one(reader, writer)
                latencies.append(time.monotonic() - sent)
        finally:
            writer.close()
            await writer.wait_closed()

    ready = asyncio.Event()
    deadline = math.inf
    warm_until = time.monotonic() + 0.5
    connections = [asyncio.create_task(one_connection(warm_until, ready)) for _ in range(STATUS_CONNECTIONS)]
    await asyncio.sleep(0.6)
    server_before, client_before = cpu_seconds([server_pid]), cpu_seconds([os.getpid()], children=False)
    started = time.monotonic()
    deadline = started + seconds
    ready.set()
    await asyncio.gather(*connections)
    elapsed = time.monotonic() - started
    server_cpu = cpu_seconds([server_pid]) - server_before
    client_cpu = cpu_seconds([os.getpid()], children=False) - client_before
    latencies.sort()
    return StatusFigures(
        rps=len(latencies) / elapsed,
        p50_ms=latencies[len(latencies) // 2] * 1000,
        p99_ms=latencies[int(len(latencies) * 0.99)] * 1000,
        server_cpu_ms=server_cpu / len(latencies) * 1000,
        client_cpu_share=client_cpu / elapsed,
    )
