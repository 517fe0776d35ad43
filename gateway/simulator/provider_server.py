"""The server of one emulated provider: its app behind the fault gate, on a listener that follows ``down``.

:class:`FaultGate` stamps ``x-request-id``, writes the request log and answers the per-call faults (outage,
auth, 429, 5xx, latency) before the protocol routes see the call. ``down = "refuse"`` really closes the
listening socket, ``down = "reset"`` accepts connections and resets them (TCP RST) before any byte is
answered; switching back reopens the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from gateway.simulator.anthropic_protocol import AnthropicDriver
from gateway.simulator.bedrock_protocol import BedrockDriver
from gateway.simulator.config import ProviderSpec
from gateway.simulator.errors import ApiError
from gateway.simulator.gemini_protocol import GeminiDriver
from gateway.simulator.mistral_protocol import MistralDriver
from gateway.simulator.model import random_id
from gateway.simulator.openai_protocol import OpenAIDriver
from gateway.simulator.openrouter_protocol import OpenRouterDriver
from gateway.simulator.state import EMULATOR_KEY, LOG_DETAIL, EmulatorState, ProtocolDriver

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DRIVERS: dict[str, Callable[[ProviderSpec], ProtocolDriver]] = {
    "openai": lambda spec: OpenAIDriver(spec.dialect),
    "anthropic": lambda _: AnthropicDriver(),
    "gemini": lambda _: GeminiDriver(),
    "mistral": lambda _: MistralDriver(),
    "bedrock": lambda spec: BedrockDriver(spec.region, spec.s3_endpoint_url),
    "openrouter": lambda _: OpenRouterDriver(),
}
BODY_SLACK_BYTES = 1024 * 1024  # room for multipart framing around the largest accepted file
WATCH_INTERVAL_S = 0.1
CLIENT_CLOSED_REQUEST = 499
"""The status the request log gives a call whose client closed the connection before any answer."""


def driver_for(spec: ProviderSpec) -> ProtocolDriver:
    """A fresh protocol driver for an emulated provider's kind (and dialect)."""
    if spec.kind not in DRIVERS:
        raise ValueError(f"unknown emulator kind {spec.kind!r}; known kinds: {', '.join(sorted(DRIVERS))}")
    return DRIVERS[spec.kind](spec)


def exception_handlers(render: Callable[[ApiError], dict[str, Any]]) -> dict[Any, Any]:
    """Litestar exception handlers that answer every error in the body shape ``render`` gives."""

    def respond(err: ApiError) -> Response[Any]:
        body = render(err)  # first: rendering may add headers (Bedrock names the exception in one)
        return Response(body, status_code=err.status, headers=err.headers, media_type="application/json")

    def api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
        return respond(exc)

    def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        message = str(exc.detail)
        if exc.status_code in (404, 405):  # unknown routes; the protocols raise ApiError for unknown ids
            message = f"Invalid URL ({request.method} {request.url.path})"
        return respond(ApiError(exc.status_code, message))

    def unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        log.error("emulator route crashed", exc_info=exc)
        return respond(ApiError(500, "The server had an error while processing your request."))

    return {ApiError: api_error, HTTPException: http_error, Exception: unexpected}


def build_provider_app(state: EmulatorState) -> Litestar:
    """The Litestar app of one emulated provider (without the fault gate)."""
    return Litestar(
        route_handlers=state.driver.route_handlers(),
        state=State({EMULATOR_KEY: state}),
        exception_handlers=exception_handlers(state.driver.error_body),
        request_max_body_size=state.max_file_bytes + BODY_SLACK_BYTES,
        openapi_config=None,
        logging_config=None,
    )


class FaultGate:
    """ASGI wrapper of a provider app: request ids, the request log and the per-call faults."""

    def __init__(self, app: Any, state: EmulatorState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, status, received_at = random_id("req_", 32), 500, self.state.clock.now()
        detail: dict[str, Any] = {}
        scope.setdefault("state", {})[LOG_DETAIL] = detail

        recorded = False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self.state.record_call(scope["method"], scope["path"], status, request_id, detail, received_at)

        answered = gone = False

        async def receive_noting_disconnect() -> Message:
            nonlocal status, gone
            message = await receive()
            if message["type"] == "http.disconnect" and not answered:
                # The client went before any answer (a request cut off): whatever the app answers is never read.
                status, gone = CLIENT_CLOSED_REQUEST, True
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                answered = True
                status = status if gone else message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record()  # before the last byte: a client holding the answer always finds the call in the log
            await send(message)

        self.state.calls_in_flight += 1
        self.state.most_calls_in_flight = max(self.state.most_calls_in_flight, self.state.calls_in_flight)
        try:
            if self.state.faults.latency_s:
                await asyncio.sleep(self.state.faults.latency_s)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            err = self.state.call_fault(headers)
            if err is None:
                await self.app(scope, receive_noting_disconnect, send_with_id)
                return
            body = msgspec.json.encode(self.state.driver.error_body(err))  # before the headers, as in respond
            head = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in err.headers.items())]
            await send_with_id({"type": "http.response.start", "status": err.status, "headers": head})
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            self.state.calls_in_flight -= 1
            record()


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner, since several share one event loop, and that drops every
    connection it holds when it stops, as a server that goes down does."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Without this, uvicorn lets open connections finish what they were sending (a kept-alive connection's next
        # request included) for up to a second after the socket stopped listening: a provider "down" would
        # still answer on them.
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await super().shutdown(sockets)


class Listener:
    """One uvicorn server on a socket bound here first, so that port 0 resolves before serving."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        # IPPROTO_TCP, for asyncio to set TCP_NODELAY on the connections it accepts: without it an answer
        # on a kept-alive connection waits about 40 ms for the client's delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, log_level="warning", timeout_graceful_shutdown=1
        )
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"the server on {self.host}:{self.port} stopped during startup")
            await asyncio.sleep(0.01)
        self._server, self._task = server, task

    async def close(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            server.should_exit = True
            await task


class _Resetter:
    """A listener that accepts each connection and resets it at once, as a crashing proxy would."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._server: asyncio.Server | None = None

    async def open(self) -> None:
        async def reset(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()

        self._server = await asyncio.start_server(reset, self.host, self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


class ProviderRunner(Listener):
    """One emulated provider: its state, its app, and a listener that follows the ``down`` fault."""

    def __init__(self, spec: ProviderSpec, host: str) -> None:
        self.state = EmulatorState(spec, driver_for(spec))
        super().__init__(FaultGate(build_provider_app(self.state), self.state), host, spec.port)
        self._lock = asyncio.Lock()
        self._resetter: _Resetter | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}{self.state.driver.base_path}"

    async def reconcile(self) -> None:
        """Open or close the listening socket to match ``faults.down`` (serving, refusing or resetting)."""
        async with self._lock:
            down = self.state.faults.down
            serving = down not in ("refuse", "reset")
            if not serving and self.listening:
                await self.close()
            if down != "reset" and self._resetter is not None:
                await self._resetter.close()
                self._resetter = None
            if down == "reset" and self._resetter is None:
                self._resetter = _Resetter(self.host, self.port)
                await self._resetter.open()
            if serving and not self.listening:
                await self.open()

    async def stop_resetting(self) -> None:
        """Close the resetting listener, if one runs."""
        if self._resetter is not None:
            await self._resetter.close()
            self._resetter = None

    async def watch(self) -> None:
        """Follow fault changes made in-process (code may set ``state.faults.down`` directly)."""
        while True:
            await self.reconcile()
            await asyncio.sleep(WATCH_INTERVAL_S)

    def describe(self) -> dict[str, Any]:
        state = self.state
        return {
            "name": state.name, "kind": state.kind, "port": self.port, "listening": self.listening,
            "base_url": self.base_url, "models": state.models, "api_key_required": bool(state.api_key),
            "processing_delay_s": state.processing_delay_s, "faults": msgspec.to_builtins(state.faults),
        }  # fmt: skip
