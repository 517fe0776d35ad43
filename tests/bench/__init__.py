"""Benchmarks (run as scripts, not collected by pytest) and the memory probes they share."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gateway.db.engine import upgrade_to_head
from gateway.settings import async_database_url
from tests.conftest import free_port


class RssSampler(threading.Thread):
    """Samples a process's resident set size every ``interval`` seconds and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._halt.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._halt.set()
        self.join()
        return self.peak


def high_water_mark(pid: int) -> int | None:
    """VmHWM of a live process, in bytes (Linux only)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class EmulatorProcess:
    """A provider emulator (``batchgw simulate``) running in a process of its own."""

    base_url: str
    control_url: str
    pid: int


@contextmanager
def emulator_process(folder: Path, name: str, models: list[str], extra: str = "") -> Iterator[EmulatorProcess]:
    """Start one OpenAI-protocol emulator answering at once, in its own process; stop it on exit. ``extra`` is
    more TOML of its provider table (``webhook_url = "..."``).

    In a process of its own, its figures are not slowed by the benchmark's client or other emulators.
    """
    port, control = free_port(), free_port()
    config = folder / f"{name}-emulator.toml"
    model_list = ", ".join(f'"{model}"' for model in models)
    config.write_text(
        f'control_port = {control}\n\n[[provider]]\nname = "{name}"\nmodels = [{model_list}]\nport = {port}\n{extra}',
        encoding="utf-8",
    )
    log = (folder / f"{name}-emulator.log").open("wb")
    command = [sys.executable, "-m", "gateway.cli", "simulate", "--config", str(config)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        emulator = EmulatorProcess(f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{control}", proc.pid)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{emulator.control_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the {name} emulator did not start")
            time.sleep(0.2)
        yield emulator
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@contextmanager
def fresh_database(url: str | None, workdir: Path) -> Iterator[tuple[str, str | None]]:
    """A migrated database for one benchmark run: SQLite in ``workdir`` when ``url`` is None, else a database
    created on ``url``'s PostgreSQL server and dropped afterwards. Yields its URL twice, the second None on SQLite."""
    if url is None:
        sqlite = f"sqlite:///{workdir / 'gateway.db'}"
        upgrade_to_head(async_database_url(sqlite))
        yield sqlite, None
        return
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(async_database_url(url)), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    created = make_url(url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_to_head(async_database_url(created))
        yield created, created
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def cpu_seconds(pids: list[int], *, children: bool = True) -> float:
    """CPU seconds the processes ``pids`` (with ``children``, and their live children: the worker's CPU
    processes) have used."""
    total = 0.0
    for pid in pids:
        process = psutil.Process(pid)
        for member in (process, *(process.children(recursive=True) if children else ())):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = member.cpu_times()
                total += times.user + times.system
    return total
