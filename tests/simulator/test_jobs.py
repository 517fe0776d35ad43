"""How an emulator's jobs live in their process: a process that serves emulators alone keeps what its jobs hold
out of later garbage collections (a batch's time then does not grow with the batches before and beside it); any
other process, a test run among them, keeps the collector's default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ONE_JOB = """
import gc, sys
from gateway.simulator import ProviderSpec, SimulatorCluster
from gateway.simulator.jobs import exclude_jobs_from_gc
from tests.simulator.openai_emulators import lines_of, sdk, submit, wait

if sys.argv[1] == "alone":
    exclude_jobs_from_gc()
with SimulatorCluster([ProviderSpec(name="main")], control_port=0) as cluster:
    client = sdk(cluster, "main")
    assert wait(client, submit(client, lines_of(50)).id).status == "completed"
    print(gc.get_freeze_count())
"""


@pytest.mark.parametrize("process", ["alone", "shared"])
def test_a_jobs_objects_are_kept_out_of_collections_only_in_a_process_of_emulators_alone(process: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", ONE_JOB, process], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    frozen = int(run.stdout.split()[-1])
    assert frozen > 0 if process == "alone" else frozen == 0
