"""An upload's lines checked while they arrive, so that a batch naming the file need not read it again.

The API hands each piece of the file it stores to a check process of its own (``limits.upload_check_processes``,
:mod:`gateway.cpu_pool`) over a local socket, and the check (:func:`~gateway.pipeline.input_lines.check_upload`)
runs while the upload does, on another core, not after it. What it finds for a file with no problem is kept
with the file; the validate stage adopts it for a batch it applies to.

The check process starts with the API (:func:`warm`), so that its first large upload does not wait for it.
The check is an optimisation, never a gate: with no free process, a check process that is slow to start,
stalls or dies, the upload goes on and its batches check the file in full as before. It slows an upload down
only as far as it keeps up with it (the socket's buffer is bounded), and then at the check's own pace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from gateway.cpu_pool import CpuPool
from gateway.pipeline.input_lines import CheckedUpload, UploadLimits, check_upload
from gateway.settings import LimitSettings

log = logging.getLogger(__name__)

CONNECT_S = 5.0
"""Longest wait for the check process to take the upload's first piece (it is started when the API starts)."""
STALL_S = 10.0
"""Longest wait for the check to take more bytes, or to give its verdict after the last ones: then the upload
goes on without it."""
BUFFERED_BYTES = 8 * 1024 * 1024
"""Bytes queued for the check before the upload waits for it."""
SEND_BYTES = 1024 * 1024
"""Queued pieces are joined into writes of about this size."""
SEND_BUFFER_BYTES = 4 * 1024 * 1024
CHECK_FROM_BYTES = 1024 * 1024
"""Uploads announced smaller are not checked while they arrive: checking them with their batch costs
milliseconds, less than handing them to a check process."""


class UploadLineCheck:
    """One upload's check: :meth:`feed` each piece of the file as it is stored, then ask :meth:`verdict`.

    Pieces queue here and a sender task writes them to the socket in large writes, so the upload runs ahead of
    the check by up to :data:`BUFFERED_BYTES` and the two overlap on two cores."""

    def __init__(
        self,
        task: asyncio.Task[CheckedUpload | None] | None,
        listener: socket.socket | None,
        folder: Path | None = None,
    ) -> None:
        self._task = task
        self._listener = listener
        self._folder = folder
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._has_data = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._ended = False
        self._sender: asyncio.Task[None] | None = None
        self._given_up = task is None or listener is None

    async def feed(self, piece: bytes) -> None:
        """Queue ``piece`` for the check, waiting only while the check is :data:`BUFFERED_BYTES` behind."""
        if self._given_up:
            return
        if self._task is not None and self._task.done():
            self._give_up("the check ended before the file did (at a problem in it, or its process was lost)")
            return
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
            self._sender.add_done_callback(_settled)
        self._queue.append(piece)
        self._queued += len(piece)
        self._has_data.set()
        if self._queued > BUFFERED_BYTES:
            self._has_room.clear()
            try:
                async with asyncio.timeout(STALL_S):  # not wait_for: it may swallow a cancel of the request
                    await self._has_room.wait()
            except TimeoutError:
                self._give_up(f"the check took no bytes for {STALL_S:.0f} s")

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            assert self._listener is not None and self._task is not None
            stream = await self._accepted(loop, self._listener, self._task)
            if stream is None:
                return
            if self._folder is not None:  # connected: the path is not needed any more, and a crash leaves none behind
                shutil.rmtree(self._folder, ignore_errors=True)
            with stream:
                # The kernel's buffer lets the check read on while this event loop serves the upload (the system's
                # wmem_max caps it).
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
                while not self._given_up:
                    await self._has_data.wait()
                    self._has_data.clear()
                    while self._queue:
                        pieces = [self._queue.popleft()]
                        joined = len(pieces[0])
                        while self._queue and joined < SEND_BYTES:
                            pieces.append(self._queue.popleft())
                            joined += len(pieces[-1])
                        data = b"".join(pieces)
                        await loop.sock_sendall(stream, data)
                        self._queued -= len(data)
                        if self._queued <= BUFFERED_BYTES // 2:
                            self._has_room.set()
                    if self._ended:
                        stream.shutdown(socket.SHUT_WR)  # the end of the file: the check gives its verdict
                        return
        except (OSError, TimeoutError) as exc:
            self._give_up(f"{type(exc).__name__}: {exc}")

    async def _accepted(
        self, loop: asyncio.AbstractEventLoop, listener: socket.socket, task: asyncio.Task[Any]
    ) -> socket.socket | None:
        """The check process's connection; None (given up) when it does not come within :data:`CONNECT_S`, or the
        check ended first (its process died as it started, say)."""
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        try:
            await asyncio.wait({accepting, task}, timeout=CONNECT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not accepting.done():
                # The connection may arrive in this very turn of the loop, its accept already queued to run after
                # this: its reader is taken off first, else it would set a result on the cancelled accept (Python
                # 3.11's loop logs that as an error with a traceback) and the connection would be left open.
                loop.remove_reader(listener.fileno())
                accepting.cancel()
        if accepting.done() and not accepting.cancelled() and accepting.exception() is None:
            return accepting.result()[0]
        self._give_up("the check process did not take the upload" if not task.done() else "the check ended first")
        return None

    @property
    def check_ran(self) -> bool:
        """True once the check process has read the whole stream it was sent and returned (a verdict or none)."""
        task = self._task
        return task is not None and task.done() and not task.cancelled() and task.exception() is None

    async def verdict(self, size: int) -> CheckedUpload | None:
        """What the check found for a clean file of ``size`` bytes (the whole upload), or None."""
        if self._given_up or self._sender is None or self._task is None:
            return None
        self._ended = True
        self._has_data.set()
        try:
            async with asyncio.timeout(STALL_S):
                await asyncio.wait({self._sender})
            if self._given_up:  # the sender gave up: the check saw no end of file and gives no verdict
                return None
            async with asyncio.timeout(STALL_S):
                await asyncio.wait({self._task})
            if self._task.cancelled():  # the pool was closed under it (the process is stopping)
                return None
            found = self._task.result()
        except Exception as exc:  # the check only saves work: any failure means "check it again later"
            self._give_up(f"{type(exc).__name__}: {exc}")
            return None
        if self._given_up or found is None or found.check.get("size") != size:
            return None
        return found

    def _give_up(self, reason: str) -> None:
        if not self._given_up:
            log.info("checking an upload while it arrives stopped (%s); its batches will check it", reason)
        self._stop()

    def _stop(self) -> None:
        self._given_up = True
        self._queue.clear()
        self._has_room.set()
        self._has_data.set()  # a sender waiting for data sees it is given up
        if self._sender is not None and self._sender is not asyncio.current_task():
            self._sender.cancel()

    async def aclose(self) -> None:
        """Stop sending, and wait until the sender has let go of the socket (the check process then ends its
        step at the end of the stream)."""
        self._stop()
        if self._sender is not None and self._sender is not asyncio.current_task():
            await asyncio.wait({self._sender})  # a cancel of the request itself goes on to its caller


@contextlib.asynccontextmanager
async def checking_upload(
    pools: Sequence[CpuPool], limits: LimitSettings, declared_bytes: int | None = None
) -> AsyncIterator[UploadLineCheck]:
    """A check for one upload, in the first of ``pools`` with a free process (started with the first upload it
    checks); one that checks nothing for an upload announced below :data:`CHECK_FROM_BYTES`, when no process is
    free or when the check cannot be set up (its socket's folder, say). A pool whose step outlives its upload is
    replaced on its own: give each check process a pool of its own, so that no other upload's check ends with it."""
    worth_it = declared_bytes is None or declared_bytes >= CHECK_FROM_BYTES
    pool = next((pool for pool in pools if pool.has_free_process()), None) if worth_it else None
    opened = _listening() if pool is not None else None
    if pool is None or opened is None:
        yield UploadLineCheck(None, None)
        return
    folder, listener = opened
    try:
        task = pool.start_if_free(check_upload, str(folder / "s"), UploadLimits.of(limits))
        if task is not None:
            task.add_done_callback(_settled)
        check = UploadLineCheck(task, listener, folder)
        try:
            yield check
        finally:
            try:
                await check.aclose()
            finally:
                if task is not None and not task.done():
                    # Its socket is gone, so the step ends within moments; one that does not is stuck (its process
                    # frozen, say) and would keep every later upload unchecked: its process is replaced.
                    asyncio.get_running_loop().call_later(STALL_S, _replace_if_stuck, pool, task)
    finally:
        asyncio.get_running_loop().remove_reader(listener.fileno())
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def warm(pools: Sequence[CpuPool]) -> None:
    """Start the check processes as the API starts, so that its first large upload does not wait for one: the
    process's interpreter and the step's module took about 0.25 s to start on two cores, and a 10,000-line upload
    took 0.02 s once one was running."""
    for pool in pools:
        pool.warm((check_upload.__module__,))


def _listening() -> tuple[Path, socket.socket] | None:
    """A listening socket in a private folder (0700: only this user may connect), or None when it cannot be made."""
    folder: Path | None = None
    listener: socket.socket | None = None
    try:
        folder = Path(tempfile.mkdtemp(prefix="batchgw-check-"))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(folder / "s"))
        listener.listen(1)  # listening before the step can connect
        listener.setblocking(False)
        return folder, listener
    except OSError as exc:  # a full or read-only temporary folder, a path too long for a socket, no descriptors
        log.warning("an upload goes unchecked: its check could not be set up (%s)", exc)
        if listener is not None:
            listener.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return None


def _replace_if_stuck(pool: CpuPool, task: asyncio.Task[Any]) -> None:
    if not task.done():
        log.warning("an upload's check did not end with its upload; its process is replaced")
        pool.recycle()


def _settled(task: asyncio.Task[Any]) -> None:
    """A check nobody asked the verdict of (its upload failed) leaves no unread exception behind."""
    if not task.cancelled():
        task.exception()
