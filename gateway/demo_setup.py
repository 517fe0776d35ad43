"""What ``batchgw demo`` sets up on this machine: a data folder of its own, free ports and child processes."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx
from rich.console import Console

MARKER = ".batchgw-demo"


class DemoError(Exception):
    """A failure the user can act on; reported in one line, without a traceback."""


@dataclass
class Child:
    """A child process and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Children:
    """Child processes, stopped in reverse start order (SIGTERM, then SIGKILL after a grace period)."""

    started: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> Child:
        with log_path.open("ab") as log:
            # A session of its own: a terminal's Ctrl-C reaches only the demo, which then stops each child in order.
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        child = Child(name, process, log_path)
        self.started.append(child)
        return child

    def dead(self) -> Child | None:
        return next((c for c in self.started if c.process.poll() is not None), None)

    def stop_all(self, grace_s: float = 10.0) -> None:
        for child in reversed(self.started):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        for child in reversed(self.started):
            try:
                child.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5)
        self.started.clear()


def prepare_data_dir(path: Path) -> Path:
    """An empty folder for this run; only a folder an earlier demo made (it holds the marker) is wiped, and
    never while a demo still runs in it (see :func:`hold_data_dir`)."""
    path = path.resolve()
    if path.exists():
        if not path.is_dir():
            raise DemoError(f"--data-dir {path} is a file; name a folder")
        if any(path.iterdir()) and not (path / MARKER).exists():
            raise DemoError(f"--data-dir {path} is not empty and was not made by the demo; name another folder")
        if (path / MARKER).exists():
            with (path / MARKER).open("rb") as marker:
                _lock_or_refuse(marker, path)
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("made by `batchgw demo`; deleted and recreated on each run\n", encoding="utf-8")
    return path


def hold_data_dir(path: Path) -> BinaryIO:
    """Lock the folder's marker for as long as the returned file stays open (the process's life at most), so
    that another demo started on the same folder refuses instead of wiping it under this one."""
    marker = (path / MARKER).open("rb")
    try:
        _lock_or_refuse(marker, path)
    except DemoError:
        marker.close()
        raise
    return marker


def _lock_or_refuse(marker: BinaryIO, path: Path) -> None:
    try:
        fcntl.flock(marker.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DemoError(
            f"--data-dir {path} is in use by another `batchgw demo`; stop that one or name another folder"
        ) from None


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` on loopback now."""
    with socket.socket() as sock:
        # As the servers do: a port with only closed connections lingering (TIME_WAIT) is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_port(wanted: int, what: str, console: Console) -> int:
    """``wanted`` when nothing listens there, else a free port (and the user is told)."""
    if wanted and port_is_free(wanted):
        return wanted
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    if wanted:
        console.print(f"[yellow]port {wanted} is busy, so the {what} uses port {port}[/yellow]")
    return port


def wait_until_up(child: Child, url: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; a child that exits or a timeout is a ``DemoError`` with its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise DemoError(
                f"the {child.name} stopped while starting; its log ({child.log_path}) ends:\n{child.tail()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise DemoError(f"the {child.name} did not answer {url} within {timeout_s:.0f}s; see {child.log_path}")
