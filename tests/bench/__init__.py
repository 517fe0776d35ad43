"""Benchmarks (run as scripts, not collected by pytest) and the memory probes they share."""

from __future__ import annotations

import threading
from pathlib import Path

import psutil


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
