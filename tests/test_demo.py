"""``batchgw demo``: the headless run end to end as a subprocess, and its guards on ports and folders."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from gateway.demo_report import sample_requests
from gateway.demo_setup import MARKER, DemoError, choose_port, hold_data_dir, prepare_data_dir
from tests.conftest import free_port

DEMO_TIMEOUT_S = 180


def run_demo(*args: str, timeout: float = DEMO_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_headless_demo_fails_over_spends_alerts_and_answers_every_request_once(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "demo", free_port()
    started = time.monotonic()
    result = run_demo("--headless", "--items", "2000", "--data-dir", str(data_dir), "--port", str(port))
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{out}\n{result.stderr}"
    assert "Traceback" not in out + result.stderr
    assert "demo succeeded" in out
    print(f"demo run took {elapsed:.1f}s")

    assert "groq-sim" in out and "together-sim" in out
    assert re.search(r"groq-sim is DOWN now .* with [\d,]+/2,000 requests answered", out), out
    assert re.search(r"failover\s+\d+\s+together-sim\s+[\d,]+\s+cause: groq-sim", out), out
    costs = re.search(r"cost \$(\d+\.\d+) \(estimated \$(\d+\.\d+)\); savings (-?)\$(\d+\.\d+)", out)
    assert costs, out
    cost, estimated = float(costs[1]), float(costs[2])
    savings = float(costs[4]) * (-1 if costs[3] else 1)
    assert cost > 0 and estimated > 0
    # Savings are measured against the cheapest synchronous price of the model, whoever served: the list
    # prices of the providers' rows add up to that baseline, and moving work to the pricier provider may
    # turn the savings negative (shown as -$).
    rows = re.findall(r"(groq-sim|together-sim)\s+[\d,]+\s+[\d,]+\s+\$([\d.]+)\s+\$([\d.]+)\s+(-?)\$([\d.]+)", out)
    assert {row[0] for row in rows} == {"groq-sim", "together-sim"}, out
    baseline = sum(float(row[2]) for row in rows)
    assert savings == pytest.approx(baseline - cost, abs=5e-4), out
    assert re.search(r"budget_threshold\s+50% of the daily global budget reached", out), out

    results = data_dir / "results.jsonl"
    assert f"results: {results}" in out.replace("\n", "")
    lines = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    ids = [line["custom_id"] for line in lines]
    assert len(lines) == 2000 and len(set(ids)) == 2000
    assert set(ids) == {request["custom_id"] for request in sample_requests(2000, "llama-3.3-70b")}
    assert all(line["error"] is None and line["response"]["status_code"] == 200 for line in lines)
    served = {line["provider"] for line in lines}
    assert served == {"groq-sim", "together-sim"}, served

    with socket.socket() as sock:  # everything the demo started is gone once it exits
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the gateway still listens after the demo ended"


def test_a_folder_the_demo_did_not_make_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me", encoding="utf-8")
    result = run_demo("--headless", "--data-dir", str(tmp_path), "--port", str(free_port()), timeout=60)
    assert result.returncode == 1
    assert "is not empty and was not made by the demo" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_each_run_starts_from_an_empty_folder(tmp_path: Path) -> None:
    folder = prepare_data_dir(tmp_path / "demo")
    (folder / "results.jsonl").write_text("old\n", encoding="utf-8")
    again = prepare_data_dir(tmp_path / "demo")
    assert sorted(p.name for p in again.iterdir()) == [MARKER]
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(DemoError, match="is a file"):
        prepare_data_dir(tmp_path / "file")


def test_a_folder_another_demo_runs_in_is_refused_and_kept(tmp_path: Path) -> None:
    folder = prepare_data_dir(tmp_path / "demo")
    (folder / "results.jsonl").write_text("the other demo's\n", encoding="utf-8")
    held = hold_data_dir(folder)
    try:
        with pytest.raises(DemoError, match="is in use by another `batchgw demo`"):
            prepare_data_dir(folder)
        result = run_demo("--headless", "--data-dir", str(folder), "--port", str(free_port()), timeout=60)
        assert result.returncode == 1 and "is in use by another `batchgw demo`" in " ".join(result.stdout.split())
        assert (folder / "results.jsonl").read_text(encoding="utf-8") == "the other demo's\n"
    finally:
        held.close()
    assert sorted(p.name for p in prepare_data_dir(folder).iterdir()) == [MARKER], "released with its process"


def test_ctrl_c_with_the_output_piped_to_a_reader_that_is_gone_still_stops_everything(tmp_path: Path) -> None:
    # `batchgw demo | tee log` and Ctrl-C: the terminal's SIGINT ends the reader too, so every later print hits
    # a closed pipe; the demo must still stop the gateway, the emulators and itself.
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--headless", "--data-dir", str(tmp_path / "d"),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert demo.stdout is not None
    seen = ""
    while "gateway ready at" not in seen:
        line = demo.stdout.readline().decode(errors="replace")
        assert line, f"the demo ended early: {seen}"
        seen += line
    demo.stdout.close()  # the reader is gone
    demo.send_signal(signal.SIGINT)
    assert demo.wait(timeout=60) != 0
    stderr = demo.stderr.read().decode(errors="replace") if demo.stderr else ""
    assert "Traceback" not in stderr, stderr
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the gateway still listens after the demo ended"


def test_a_busy_port_is_replaced_by_a_free_one_and_the_user_told() -> None:
    output = io.StringIO()
    console = Console(file=output, width=200)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        chosen = choose_port(taken, "gateway", console)
        assert chosen != taken
    assert f"port {taken} is busy, so the gateway uses port {chosen}" in output.getvalue()
    free = free_port()
    assert choose_port(free, "gateway", console) == free
