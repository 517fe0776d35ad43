"""Wake-ups between the processes of one machine that share a SQLite database file.

SQLite has no notification channel, so each listening process binds a Unix datagram socket in a directory
named after the database file (in the system's temporary folder, private to this user), and an
announcement is one empty datagram to every socket there. As on PostgreSQL, a datagram carries no data:
the database says what is due; a wake-up only makes a worker look sooner, and a lost one costs at most
one idle interval (``worker.poll_interval_s``). A socket left behind by a process that died is removed
by the next sender that finds nobody reading it, and the folder by the last listener to leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import socket
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

SUFFIX = ".sock"
RETRY_S = 30.0
"""How long a worker that could not listen waits before it tries again (it polls meanwhile)."""
_OWN: set[str] = set()
"""Names of the sockets this process listens on: its own announcements wake its loops directly."""


def supported() -> bool:
    """True where Unix datagram sockets exist."""
    return hasattr(socket, "AF_UNIX")


@functools.lru_cache(maxsize=64)
def directory_for(database_file: str) -> Path:
    """The folder of the listening sockets of one database file, for this user (short: a socket path has
    about 100 bytes)."""
    digest = hashlib.sha256(os.path.realpath(database_file).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"batchgw-wake-{os.getuid()}-{digest}"


def _is_private(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def _private_directory(folder: Path) -> bool:
    """Create ``folder`` for this user alone; False (wake-ups off) if it exists and is not that."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    if not _is_private(folder.lstat()):
        log.warning("wake-ups between processes are off: %s is not a private folder of this user", folder)
        return False
    return True


def announce(folder: Path) -> int:
    """Send one wake-up to every other listening process; how many were reached.

    Nothing is sent, and nothing removed, unless ``folder`` is a private folder of this user (not a link
    someone else made in the shared temporary directory)."""
    try:
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return 0  # nobody has listened yet (or it is not a folder)
    try:
        if not _is_private(os.fstat(handle)):
            return 0
        names = [name for name in os.listdir(handle) if name.endswith(SUFFIX) and name not in _OWN]
        reached = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            for name in names:
                try:
                    sender.sendto(b"", str(folder / name))
                    reached += 1
                except BlockingIOError:
                    reached += 1  # its queue is full: a wake-up is already waiting there
                except (ConnectionRefusedError, FileNotFoundError):
                    _remove_stale(handle, name)
                except OSError as exc:
                    log.debug("wake-up to %s not sent: %s", folder / name, exc)
        return reached
    finally:
        os.close(handle)


def _remove_stale(folder_handle: int, name: str) -> None:
    """Remove the socket of a process that is gone (only a socket of this user)."""
    with contextlib.suppress(OSError):
        info = os.lstat(name, dir_fd=folder_handle)
        if stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid():
            os.unlink(name, dir_fd=folder_handle)


async def listen(folder: Path, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``on_wake`` for every other process's announcement until ``stop`` is set; a worker that cannot
    listen (see the log) tries again every :data:`RETRY_S` seconds."""
    while not stop.is_set() and await _listen_once(folder, on_wake, stop):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RETRY_S)


async def _listen_once(folder: Path, on_wake: Callable[[], None], stop: asyncio.Event) -> bool:
    """Listen until ``stop``; True when listening failed and may work later, False when done or never will."""
    name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
    path = folder / name
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.setblocking(False)
    loop = asyncio.get_running_loop()

    def drain() -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while True:
                receiver.recv(16)
        on_wake()

    try:
        bound = _bind(receiver, folder, path)
        if bound is not True:
            return bound == "retry"
        _OWN.add(name)
        loop.add_reader(receiver.fileno(), drain)
        on_wake()  # announcements sent before the socket existed were lost
        await stop.wait()
        return False
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(receiver.fileno())
        receiver.close()
        _OWN.discard(name)
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when it is empty: the last listener of the database tidies up


def _bind(receiver: socket.socket, folder: Path, path: Path) -> bool | Literal["retry"]:
    """True once bound; False when the folder is not private (that stays so); "retry" on other failures."""
    problem: OSError | None = None
    for _attempt in range(3):  # the last listener may remove the folder between our mkdir and bind
        try:
            if not _private_directory(folder):
                return False
            receiver.bind(str(path))
            return True
        except FileNotFoundError as exc:
            problem = exc
        except OSError as exc:
            problem = exc
            break
    log.warning("wake-ups between processes are off for now: cannot listen on %s: %s", path, problem)
    return "retry"
