"""``batchgw estimate --base-url`` against the running demo: the demo's client key estimates a new file on the
demo's gateway, learned from the batch the demo just ran for its team, with the advisor's recommendation."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway.demo import MODEL
from gateway.demo_report import sample_requests
from tests.conftest import free_port

STARTUP_TIMEOUT_S = 240


def test_estimate_against_the_running_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGW_")}
    command = [sys.executable, "-m", "gateway.cli", "demo", "--items", "400", "--data-dir", str(tmp_path / "demo")]
    command += ["--port", str(free_port()), "--dashboard-port", str(free_port())]
    demo = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert demo.stdout is not None
    stdout = demo.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    seen: list[str] = []
    try:
        where = None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while where is None:
            assert time.monotonic() < deadline and demo.poll() is None, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            where = re.search(r"gateway API\s+(http://\S+/v1)\s+\(client key (\S+)\)", seen[-1])
        base_url, key = where[1], where[2]
        requests = sample_requests(50, MODEL)
        path = tmp_path / "next.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in requests), encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "estimate", str(path), "--base-url", base_url, "--deadline", "2h"],
            env=env | {"BATCHGW_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "groq-sim" in out and "together-sim" in out
        assert re.search(rf"estimate basis, {MODEL}: from [\d,]+ past requests", out), out
        assert re.search(rf"advice for {MODEL}: (BATCH|FAN-OUT|TIERED)", out), out
        assert "Estimated total on the policy's choices: $" in out
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait(timeout=10)
