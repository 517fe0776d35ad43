"""The shared fixture layer itself: which database each test runs on, and when a gateway counts as started."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys

from tests.conftest import GatewayProcess, loopback

FROZEN_ON_POSTGRESQL = (
    "tests/engine/test_openrouter_e2e.py::"
    "test_a_worker_frozen_past_its_lease_before_its_create_creates_nothing_when_it_wakes"
)


def pytest_run(*args: str, postgresql: bool = True) -> subprocess.CompletedProcess[str]:
    """``pytest`` in a process of its own, with PostgreSQL configured or not (collecting connects to nothing)."""
    env = {k: v for k, v in os.environ.items() if k != "BATCHGW_TEST_DATABASE_URL"}
    if postgresql:
        env["BATCHGW_TEST_DATABASE_URL"] = "postgresql://postgres@127.0.0.1:1/never"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:randomly", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def collected(*args: str) -> list[str]:
    """The node ids ``pytest --collect-only`` lists with PostgreSQL configured."""
    return [line for line in pytest_run("--collect-only", *args).stdout.splitlines() if "::" in line]


def test_a_spread_module_runs_each_test_once_and_uses_both_databases() -> None:
    ids = collected("tests/engine/test_canary.py")
    runs = collections.Counter(re.sub(r"\[(sqlite|postgresql)-?", "[", node) for node in ids)
    assert runs and set(runs.values()) == {1}, runs
    kinds = collections.Counter(re.search(r"\[(sqlite|postgresql)", node)[1] for node in ids)  # type: ignore[index]
    assert set(kinds) == {"sqlite", "postgresql"}, kinds


def test_a_test_marked_for_one_database_runs_there_only_and_other_modules_run_on_both() -> None:
    ids = collected("tests/engine/test_openrouter_e2e.py", "tests/engine/test_crash_recovery.py")
    frozen = [node for node in ids if "frozen_past_its_lease_before_its_create" in node]
    assert frozen == [f"{FROZEN_ON_POSTGRESQL}[postgresql]"]
    recovery = [node for node in ids if node.startswith("tests/engine/test_crash_recovery.py")]
    assert len([n for n in recovery if "[sqlite" in n]) == len([n for n in recovery if "[postgresql" in n]) > 0


def test_a_test_marked_for_a_database_that_is_not_there_is_skipped_with_its_reason() -> None:
    run = pytest_run("-rs", f"{FROZEN_ON_POSTGRESQL}[sqlite]", postgresql=False)
    assert "1 skipped" in run.stdout and "several workers on one database need PostgreSQL" in run.stdout


def test_a_gateway_is_not_taken_as_started_when_another_answers_on_its_port(
    gateway: GatewayProcess, gateway_factory: object
) -> None:
    """Two test processes may choose one free port in the same second: the gateway that loses the bind must not
    be taken as ready because the winner answers, or its test goes on against the other test's gateway."""
    second: GatewayProcess = gateway_factory()  # type: ignore[operator]
    taken = gateway.port
    second.port = taken
    second.start()
    assert second.port != taken and second.listens()
    assert "address already in use" in "".join(
        path.read_text(errors="replace") for path in second.data_dir.glob("serve-*.log")
    )
    key = second.create_key("acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert loopback.get(f"{second.base_url}/v1/models", headers=headers).status_code == 200
    assert loopback.get(f"{gateway.base_url}/v1/models", headers=headers).status_code == 401  # made on the second
