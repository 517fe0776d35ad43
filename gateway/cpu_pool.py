"""The CPU-heavy steps of the data path, in processes of their own.

Validating an input file and joining a shard's results on ``custom_id`` are Python loops over every line
of a file. Run in a thread, they hold the interpreter lock that the worker's event loop needs (and, in a
single-process ``batchgw serve``, the API's too): polls, hand-offs and status reads wait behind them, and
several joins at once take turns on one core. A :class:`CpuPool` runs them in a small pool of processes
instead (``worker.cpu_processes``; 0 keeps them in threads of this process).

A step sent here is a module-level function of paths and small values: the files are the hand-off, and what
it returns is a small summary. Its module keeps its imports light, since each process imports it once, and so
does :mod:`gateway.cli`: a spawned process imports its parent's main module first.
The processes start with ``spawn`` (nothing of this process's threads, connections or event loop is
inherited), log as this process does, leave signals to it (a Ctrl-C or a service manager's SIGTERM reaches
the whole process group: the worker drains, its steps are not cut), and end when it ends, killed included.
Nothing a step writes is used until the calling stage adopts it in its fenced transaction, so a step whose
caller lost its lease, or died, changes nothing.

Each process is a lane of its own (a one-process executor), and steps are handed to a lane only as it becomes
free, never queued in the pool: a process that dies (killed, out of memory) fails the step it was running, not
a step in another lane nor steps that waited, and a caller cancelled while it waits sends nothing. The first
lane's process starts with the pool (:meth:`CpuPool.warm`); another lane's starts when a step is sent while
every started one is busy, so that shards ending together are joined side by side, and then stays. (One
executor of several processes would start them the same way, but its watch over its processes can miss the
death of one it started while another ran a step, and one death breaks every step it runs.)
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class CpuProcessLost(RuntimeError):
    """A process of the pool ended while it ran the step (killed, out of memory, or it could not start)."""


class CpuPool:
    """Runs CPU-heavy steps in ``processes`` processes of their own (0: in threads of this process)."""

    def __init__(self, processes: int, log_format: str = "text", log_level: str = "INFO") -> None:
        self.processes = processes
        self._log = (log_format, log_level)
        self._lanes: list[ProcessPoolExecutor | None] = [None] * max(0, processes)
        """One executor of one process per lane, started when a step first needs it."""
        self._busy = [False] * max(0, processes)
        self._preload: tuple[str, ...] = ()
        self._free = asyncio.Semaphore(max(1, processes))
        self._reserved = 0
        """Steps :meth:`start_if_free` started that have not ended (some may not hold their process yet)."""
        self._closed = False

    async def run(self, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``step(*args, **kwargs)`` in a process of the pool (or a thread), without holding this event loop.

        Raises what the step raised, or :class:`CpuProcessLost` when its process died while the step ran: that
        lane starts afresh for its next step, and the caller's stage retries as after any failure.
        """
        call = functools.partial(step, *args, **kwargs)
        if self.processes == 0:
            return await asyncio.to_thread(call)
        async with self._free:
            if self._closed:
                raise RuntimeError("the CPU pool is closed")
            lane = self._busy.index(False)  # the first free lane: a second process only when the first is busy
            self._busy[lane] = True
            try:
                executor = self._lanes[lane] or self._start(lane)
                try:
                    return await asyncio.get_running_loop().run_in_executor(executor, call)
                except BrokenProcessPool as exc:
                    if self._lanes[lane] is executor:
                        log.warning("a CPU process ended while it ran %s; its lane starts afresh", step.__name__)
                        self._lanes[lane] = None
                        executor.shutdown(wait=False, cancel_futures=True)
                    raise CpuProcessLost(
                        f"a CPU process ended while it ran {step.__name__} (killed, out of memory, or it could not "
                        "start)"
                    ) from exc
            finally:
                self._busy[lane] = False

    def start_if_free(self, step: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Task[T] | None:
        """``step`` started at once in a process of the pool that is free now, as a task; None when every
        process is busy, the pool has none (0 processes) or is closed. For work worth doing only when it costs
        no wait (checking an upload while it arrives), never in a thread of this process."""
        if not self.has_free_process():
            return None
        self._reserved += 1
        task = asyncio.ensure_future(self.run(step, *args, **kwargs))

        def release(_: object) -> None:
            self._reserved -= 1

        task.add_done_callback(release)
        return task

    def has_free_process(self) -> bool:
        """True when :meth:`start_if_free` would start a step now."""
        return self.processes > 0 and not self._closed and not self._free.locked() and self._reserved < self.processes

    def recycle(self) -> None:
        """Kill the pool's processes now (a step stuck in one, a process frozen): the steps they run fail with
        :class:`CpuProcessLost`, and the next step starts a new process."""
        for lane, executor in enumerate(self._lanes):
            self._lanes[lane] = None
            if executor is not None:
                _kill_processes(executor)
                executor.shutdown(wait=False)  # steps not yet picked up fail as lost too, rather than as cancelled

    def warm(self, modules: Sequence[str]) -> None:
        """Start the first lane's process now, importing ``modules`` (the steps' own), so that the first step does
        not wait for a process to start (a worker calls this as it starts). Every process imports them as it
        starts; the other lanes' start when steps overlap."""
        self._preload = tuple(modules)
        if self.processes and self._lanes[0] is None and not self._closed:
            self._start(0).submit(int)  # a no-op that makes the executor start its process

    def _start(self, lane: int) -> ProcessPoolExecutor:
        executor = self._lanes[lane] = ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_prepare_process,
            initargs=(*self._log, self._preload),
        )
        return executor

    def close(self) -> None:
        """Stop the processes at once: a step still running in one has no caller left (its stage was stopped
        and is retried after a restart), so it is ended rather than waited for. The pool takes no more steps."""
        self._closed = True
        for lane, executor in enumerate(self._lanes):
            self._lanes[lane] = None
            if executor is not None:
                _kill_processes(executor)
                executor.shutdown(wait=True, cancel_futures=True)


def _kill_processes(executor: ProcessPoolExecutor) -> None:
    kill = getattr(executor, "kill_workers", None)  # Python 3.14+
    if kill is not None:
        kill()
    else:
        for process in list(getattr(executor, "_processes", {}).values()):
            process.kill()  # SIGKILL: a process stopped by SIGSTOP ends too


def _prepare_process(log_format: str, log_level: str, modules: tuple[str, ...]) -> None:
    """A pool process logs to stderr in the gateway's format, as its parent does, imports ``modules``, leaves
    SIGINT and SIGTERM to its parent, and ends with it."""
    from gateway.logs import install_handler

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
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
