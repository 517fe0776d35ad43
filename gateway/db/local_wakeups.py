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
import hashlib
import logging
import os
import socket
import stat
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SUFFIX = ".sock"
_OWN: set[str] = set()
"""Names of the sockets this process listens on: its own announcements wake its loops directly."""


def supported() -> bool:
    """True where Unix datagram sockets exist."""
    return hasattr(socket, "AF_UNIX")


def directory_for(database_file: str) -> Path:
    """The folder of the listening sockets of one database file (short: a socket path has ~100 bytes)."""
    digest = hashlib.sha256(os.path.realpath(database_file).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"batchgw-wake-{digest}"


def _private_directory(folder: Path) -> bool:
    """Create ``folder`` for this user alone; False (wake-ups off) if it exists and is not that."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        log.warning("wake-ups between processes are off: %s is not a private folder of this user", folder)
        return False
    return True


def announce(folder: Path) -> int:
    """Send one wake-up to every other listening process; how many were reached."""
    try:
        names = [name for name in os.listdir(folder) if name.endswith(SUFFIX) and name not in _OWN]
    except OSError:
        return 0  # nobody has listened yet
    reached = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        for name in names:
            path = folder / name
            try:
                sender.sendto(b"", str(path))
                reached += 1
            except BlockingIOError:
                reached += 1  # its queue is full: a wake-up is already waiting there
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    path.unlink()  # its process is gone
            except OSError as exc:
                log.debug("wake-up to %s not sent: %s", path, exc)
    return reached


async def listen(folder: Path, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``on_wake`` for every other process's announcement until ``stop`` is set."""
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
        if not _bind(receiver, folder, path):
            return
        _OWN.add(name)
        loop.add_reader(receiver.fileno(), drain)
        on_wake()  # announcements sent before the socket existed were lost
        await stop.wait()
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(receiver.fileno())
        receiver.close()
        _OWN.discard(name)
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when it is empty: the last listener of the database tidies up


def _bind(receiver: socket.socket, folder: Path, path: Path) -> bool:
    for _attempt in range(3):  # the last listener may remove the folder between our mkdir and bind
        try:
            if not _private_directory(folder):
                return False
            receiver.bind(str(path))
            return True
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("wake-ups between processes are off: cannot listen on %s: %s", path, exc)
            return False
    return False
