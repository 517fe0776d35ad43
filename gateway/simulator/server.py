"""Serving emulated providers: one uvicorn server per provider, a control server, and the cluster of them.

Every provider app sits behind :class:`FaultGate`, which stamps ``x-request-id``, writes the request log and
answers the per-call faults (outage, auth, 429, 5xx, latency) before the protocol routes see the call.
``down = "refuse"`` really closes the listening socket, ``down = "reset"`` accepts connections and resets
them (TCP RST) before any byte is answered; switching back reopens the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator, MutableMapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from gateway.simulator.anthropic_protocol import AnthropicDriver
from gateway.simulator.config import ProviderSpec, SimulatorConfig, default_config, load_config
from gateway.simulator.core import EMULATOR_KEY, LOG_DETAIL, ApiError, EmulatorState, Faults, ProtocolDriver, random_id
from gateway.simulator.gemini_protocol import GeminiDriver
from gateway.simulator.openai_protocol import OpenAIDriver

log = logging.getLogger(__name__)

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
T = TypeVar("T")
Req = Request[Any, Any, Any]

DRIVERS: dict[str, Callable[[], ProtocolDriver]] = {
    "openai": OpenAIDriver,
    "anthropic": AnthropicDriver,
    "gemini": GeminiDriver,
}
BODY_SLACK_BYTES = 1024 * 1024  # room for multipart framing around the largest accepted file
WATCH_INTERVAL_S = 0.1


def driver_for(kind: str) -> ProtocolDriver:
    """A fresh protocol driver for an emulator kind."""
    if kind not in DRIVERS:
        raise ValueError(f"unknown emulator kind {kind!r}; known kinds: {', '.join(sorted(DRIVERS))}")
    return DRIVERS[kind]()


def _exception_handlers(render: Callable[[ApiError], dict[str, Any]]) -> dict[Any, Any]:
    def respond(err: ApiError) -> Response[Any]:
        return Response(render(err), status_code=err.status, headers=err.headers, media_type="application/json")

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
        exception_handlers=_exception_handlers(state.driver.error_body),
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

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record()  # before the last byte: a client holding the answer always finds the call in the log
            await send(message)

        try:
            if self.state.faults.latency_s:
                await asyncio.sleep(self.state.faults.latency_s)
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            err = self.state.call_fault(headers)
            if err is None:
                await self.app(scope, receive, send_with_id)
                return
            body = msgspec.json.encode(self.state.driver.error_body(err))
            head = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in err.headers.items())]
            await send_with_id({"type": "http.response.start", "status": err.status, "headers": head})
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            record()


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner, since several share one event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _Listener:
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


class ProviderRunner(_Listener):
    """One emulated provider: its state, its app, and a listener that follows the ``down`` fault."""

    def __init__(self, spec: ProviderSpec, host: str) -> None:
        self.state = EmulatorState(spec, driver_for(spec.kind))
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


def build_control_app(cluster: SimulatorCluster) -> Litestar:
    """The control API: list providers, switch faults, reset, read logs and counters, shift clocks."""

    def runner(request: Req) -> ProviderRunner:
        name = request.path_params["name"]
        if name not in cluster.names():
            raise ApiError(404, f"No emulated provider named {name!r}.", param="name")
        return cluster.runner(name)

    async def json_object(request: Req) -> dict[str, Any]:
        try:
            return msgspec.json.decode(await request.body() or b"{}", type=dict[str, Any])
        except msgspec.MsgspecError:
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json") from None

    @get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @get("/providers")
    async def providers() -> list[dict[str, Any]]:
        return [cluster.runner(name).describe() for name in cluster.names()]

    @get("/providers/{name:str}")
    async def provider(request: Req) -> dict[str, Any]:
        return runner(request).describe()

    @post("/providers/{name:str}/faults", status_code=200)
    async def set_faults(request: Req) -> Any:
        target = runner(request)
        try:
            faults = target.state.update_faults(await json_object(request))
        except msgspec.ValidationError as exc:
            raise ApiError(400, f"Invalid faults: {exc}", code="invalid_value") from None
        await target.reconcile()
        return msgspec.to_builtins(faults)

    @post("/providers/{name:str}/reset", status_code=200)
    async def reset(request: Req) -> dict[str, Any]:
        target = runner(request)
        target.state.reset()
        await target.reconcile()
        return target.describe()

    @get("/providers/{name:str}/log")
    async def request_log(request: Req) -> dict[str, Any]:
        return {"object": "list", "data": msgspec.to_builtins(list(runner(request).state.log))}

    @get("/providers/{name:str}/stats")
    async def stats(request: Req) -> dict[str, Any]:
        state = runner(request).state
        statuses: dict[str, int] = {}
        for job in state.jobs.values():
            statuses[job.status] = statuses.get(job.status, 0) + 1
        counts = msgspec.to_builtins(state.stats)
        return {**counts, "files_stored": len(state.files.files), "batches": statuses}

    @get("/providers/{name:str}/invoice")
    async def invoice(request: Req) -> dict[str, Any]:
        """What the provider would bill: per batch, the requests that ran to a successful answer and their tokens
        (completed requests of cancelled and expired batches are billed too, as real providers do)."""
        state = runner(request).state
        batches = [
            {
                "id": job.id,
                "status": job.status,
                "metadata": job.metadata,
                "requests_billed": job.completed,
                "input_tokens": job.input_tokens,
                "output_tokens": job.output_tokens,
            }
            for job in state.jobs.values()
        ]
        jobs = list(state.jobs.values())
        totals = {
            "requests_billed": sum(job.completed for job in jobs),
            "input_tokens": sum(job.input_tokens for job in jobs),
            "output_tokens": sum(job.output_tokens for job in jobs),
        }
        return {"object": "invoice", "provider": state.name, "batches": batches, **totals}

    @post("/providers/{name:str}/clock", status_code=200)
    async def clock(request: Req) -> dict[str, Any]:
        state = runner(request).state
        advance = (await json_object(request)).get("advance_s", 0)
        if isinstance(advance, bool) or not isinstance(advance, int | float):
            raise ApiError(400, "'advance_s' must be a number of seconds.", param="advance_s")
        state.clock.advance(float(advance))
        return {"now": state.clock.now(), "offset_s": state.clock.offset_s}

    return Litestar(
        route_handlers=[health, providers, provider, set_faults, reset, request_log, stats, invoice, clock],
        exception_handlers=_exception_handlers(OpenAIDriver().error_body),
        openapi_config=None,
        logging_config=None,
    )


class SimulatorCluster:
    """Several emulated providers and one control server on loopback.

    Use ``start()``/``stop()`` (or ``with``) from synchronous code: the servers then run in a background
    thread with their own event loop. Or ``await serve()`` inside a running loop. ``control_port`` 0 picks
    a free port and ``None`` runs no control server. A cluster runs once.
    """

    def __init__(self, specs: Sequence[ProviderSpec], control_port: int | None = 0, host: str = "127.0.0.1") -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")
        self.host = host
        self._runners = {spec.name: ProviderRunner(spec, host) for spec in specs}
        self._control = None if control_port is None else _Listener(build_control_app(self), host, control_port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def names(self) -> list[str]:
        return list(self._runners)

    def runner(self, name: str) -> ProviderRunner:
        if name not in self._runners:
            raise KeyError(f"no emulated provider {name!r}; known: {', '.join(self._runners)}")
        return self._runners[name]

    def state(self, name: str) -> EmulatorState:
        """The live in-process state of a provider (faults, jobs, files, log, clock)."""
        return self.runner(name).state

    def port_of(self, name: str) -> int:
        return self.runner(name).port

    def base_url(self, name: str) -> str:
        """Base URL for SDK clients, e.g. ``http://127.0.0.1:9101/v1``."""
        return self.runner(name).base_url

    @property
    def control_url(self) -> str:
        if self._control is None:
            raise RuntimeError("this cluster runs no control server")
        return f"http://{self.host}:{self._control.port}"

    async def serve(self, on_ready: Callable[[SimulatorCluster], None] | None = None) -> None:
        """Serve in the running event loop until ``stop()`` is called or the task is cancelled."""
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        watchers: list[asyncio.Task[None]] = []
        try:
            for runner in self._runners.values():
                await runner.open()  # even when starting refused, so that port 0 resolves
                await runner.reconcile()
                watchers.append(asyncio.create_task(runner.watch()))
            if self._control is not None:
                await self._control.open()
            if on_ready is not None:
                on_ready(self)
            await self._stop.wait()
        finally:
            for task in watchers:
                task.cancel()
            listeners: list[_Listener] = [*self._runners.values(), *([self._control] if self._control else [])]
            await asyncio.gather(*(listener.close() for listener in listeners))
            for runner in self._runners.values():
                await runner.stop_resetting()
                runner.state.close()

    def start(self, timeout: float = 15.0) -> None:
        """Serve in a background thread; returns once every server listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self.serve(on_ready=lambda _: ready.set()))
            except BaseException as exc:
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=main, name="batchgw-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the simulator did not start in time")
        if failure:
            raise failure[0]

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every server and remove the emulators' files."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> SimulatorCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _in_loop(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine in the cluster's loop from another thread and wait for it."""
        if self._loop is None or not self._loop.is_running():
            work.close()
            raise RuntimeError("the cluster is not running")
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=15)

    def set_faults(self, name: str, **changes: Any) -> Faults:
        """Thread-safe fault switch; once running, returns after the listening socket follows ``down``."""
        runner = self.runner(name)
        if self._loop is None:
            return runner.state.update_faults(changes)

        async def apply() -> Faults:
            faults = runner.state.update_faults(changes)
            await runner.reconcile()
            return faults

        return self._in_loop(apply())

    def reset(self, name: str) -> None:
        """Thread-safe equivalent of ``POST /providers/{name}/reset``."""
        runner = self.runner(name)

        async def apply() -> None:
            runner.state.reset()
            await runner.reconcile()

        self._in_loop(apply())


async def serve_forever(config: SimulatorConfig, on_ready: Callable[[SimulatorCluster], None] | None = None) -> None:
    """Run the configured providers and control server in the current loop until cancelled."""
    await SimulatorCluster(config.providers, control_port=config.control_port).serve(on_ready)


def describe_cluster(cluster: SimulatorCluster) -> str:
    """One line per provider with its base URL, then the control URL."""
    lines = []
    for name in cluster.names():
        state = cluster.state(name)
        key = f", api key {state.api_key}" if state.api_key else ""
        lines.append(f"{name} ({state.kind}) {cluster.base_url(name)}  models: {', '.join(state.models)}{key}")
    with contextlib.suppress(RuntimeError):
        lines.append(f"control {cluster.control_url}")
    return "\n".join(lines)


def run_simulate(config_path: Path | None, control_port: int | None) -> None:
    """Serve the configured (or built-in) emulated providers until Ctrl-C, printing their base URLs.

    ``control_port`` overrides the configuration's. A port already in use ends with ``SystemExit``.
    """
    config = load_config(config_path) if config_path is not None else default_config()
    if control_port is not None:
        config.control_port = control_port

    def announce(cluster: SimulatorCluster) -> None:
        print(describe_cluster(cluster), "Press Ctrl-C to stop.", sep="\n", flush=True)

    async def main() -> None:
        task = asyncio.current_task()
        if task is not None:
            with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await serve_forever(config, announce)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except OSError as exc:
        raise SystemExit(f"batchgw simulate: {exc}") from None
    print("Simulator stopped.", flush=True)
