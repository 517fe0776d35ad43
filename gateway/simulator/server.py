"""Serving emulated providers: the cluster of provider servers and a control server, and ``batchgw simulate``.

Each provider runs on a server of its own (:mod:`gateway.simulator.provider_server`); the control server
(:mod:`gateway.simulator.control_server`) switches their faults and reads their logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.simulator.config import ProviderSpec, SimulatorConfig, default_config, load_config
from gateway.simulator.control_server import build_control_app
from gateway.simulator.jobs import exclude_jobs_from_gc
from gateway.simulator.provider_server import Listener, ProviderRunner
from gateway.simulator.state import EmulatorState, Faults

T = TypeVar("T")


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
        self._control = None if control_port is None else Listener(build_control_app(self), host, control_port)
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
            listeners: list[Listener] = [*self._runners.values(), *([self._control] if self._control else [])]
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
        kind = state.kind if state.spec.dialect == "openai" else f"{state.kind}, {state.spec.dialect} dialect"
        lines.append(f"{name} ({kind}) {cluster.base_url(name)}  models: {', '.join(state.models)}{key}")
    with contextlib.suppress(RuntimeError):
        lines.append(f"control {cluster.control_url}")
    return "\n".join(lines)


def run_simulate(config_path: Path | None, control_port: int | None) -> None:
    """Serve the configured (or built-in) emulated providers until Ctrl-C, printing their base URLs.

    ``control_port`` overrides the configuration's. A port already in use ends with ``SystemExit``.
    """
    config = load_config(config_path) if config_path is not None else default_config()
    exclude_jobs_from_gc()
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
