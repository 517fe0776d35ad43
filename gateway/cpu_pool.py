"""The CPU-heavy steps of the data path, in processes of their own.

Validating an input file and joining a shard's results on ``custom_id`` are Python loops over every line
of a file. Run in a thread, they hold the interpreter lock that the worker's event loop needs (and, in a
single-process ``batchgw serve``, the API's too): polls, hand-offs and status reads wait behind them, and
several joins at once take turns on one core. A :class:`CpuPool` runs them in a small pool of processes
instead (``worker.cpu_processes``; 0 keeps them in threads of this process).

A step sent here is a module-level function of paths and small values: the files are the hand-off, and what
it returns is a small summary. Its module keeps its imports light, since each process imports it once.
The processes start on first use with ``spawn`` (nothing of this process's threads, connections or event
loop is inherited), log as this process does, and end when it ends, killed included. Nothing a step writes is
used until the calling stage adopts it in its fenced transaction, so a step whose caller lost its lease, or
died, changes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class CpuProcessLost(RuntimeError):
    """The process running a step ended before the step did (killed, or out of memory)."""


class CpuPool:
    """Runs CPU-heavy steps in ``processes`` processes of their own (0: in threads of this process)."""

    def __init__(self, processes: int, log_format: str = "text", log_level: str = "INFO") -> None:
        self.processes = processes
        self._log = (log_format, log_level)
        self._executor: ProcessPoolExecutor | None = None
        self._preload: tuple[str, ...] = ()

    async def run(self, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``step(*args, **kwargs)`` in a process of the pool (or a thread), without holding this event loop.

        Raises what the step raised, or :class:`CpuProcessLost` when its process died under it: the pool is
        started again for the next step, and the caller's stage retries as after any failure.
        """
        call = functools.partial(step, *args, **kwargs)
        if self.processes == 0:
            return await asyncio.to_thread(call)
        executor = self._executor or self._start()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, call)
        except BrokenProcessPool:
            if self._executor is executor:
                self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
            raise CpuProcessLost(
                f"the process running {step.__name__} ended before it finished (killed, or out of memory)"
            ) from None

    def warm(self, modules: Sequence[str]) -> None:
        """Start the processes now, each importing ``modules`` (the steps' own), so that the first step does not
        wait for a process to start (a worker calls this as it starts)."""
        self._preload = tuple(modules)
        if self.processes and self._executor is None:
            executor = self._start()
            for _ in range(self.processes):
                executor.submit(int)  # a no-op that makes the pool start a process

    def _start(self) -> ProcessPoolExecutor:
        self._executor = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_prepare_process,
            initargs=(*self._log, self._preload),
        )
        return self._executor

    def close(self) -> None:
        """Stop the processes at once: a step still running in one has no caller left (its stage was stopped
        and is retried after a restart), so it is ended rather than waited for."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        terminate = getattr(executor, "terminate_workers", None)  # Python 3.14+
        if terminate is not None:
            terminate()
        else:
            for process in list(getattr(executor, "_processes", {}).values()):
                process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)


def _prepare_process(log_format: str, log_level: str, modules: tuple[str, ...]) -> None:
    """A pool process logs to stderr in the gateway's format, as its parent does, imports ``modules``, and ends
    with its parent."""
    from gateway.logs import install_handler

    install_handler(log_format, log_level)
    for name in modules:
        importlib.import_module(name)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), name="parent-watch", daemon=True).start()


def _exit_with_parent(sentinel: int) -> None:
    """Wait for the parent's end, then end this process: a worker killed (SIGKILL) leaves no process waiting for
    work that will never come, and nothing a step of it was writing can be adopted any more."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


__all__ = ["CpuPool", "CpuProcessLost"]
