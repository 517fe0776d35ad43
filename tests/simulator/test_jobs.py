"""How an emulator's jobs live in their process: a finished OpenAI-protocol job lets go of its requests and answers
(its result files hold them), and a process that serves emulators alone keeps what its jobs hold out of later
garbage collections (a batch's time then does not grow with the batches before and beside it); any other process,
a test run among them, keeps the collector's default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.simulator.openai_emulators import jsonl, lines_of, submit, wait

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


def test_a_finished_openai_job_lets_go_of_its_requests_and_answers_and_keeps_counts_and_files(
    cluster: SimulatorCluster, client: openai.OpenAI
) -> None:
    batch = wait(client, submit(client, lines_of(30)).id)
    job = cluster.state("main").jobs[batch.id]
    assert (job.items, job.outcomes) == ([], [])
    again = client.batches.retrieve(batch.id)
    assert again.status == "completed" and again.request_counts is not None
    assert (again.request_counts.total, again.request_counts.completed, again.request_counts.failed) == (30, 30, 0)
    output = jsonl(client, again.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines_of(30))
