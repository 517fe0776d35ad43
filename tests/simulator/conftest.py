"""Fixtures of the emulator tests: the OpenAI emulators of ``openai_emulators.emulators()``, reset before every
test, and the official SDK pointed at ``main``. The Anthropic and Gemini modules define their own three."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.simulator.openai_emulators import control, emulators, sdk


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    with emulators() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(cluster: SimulatorCluster) -> None:
    for name in cluster.names():
        control(cluster, "POST", f"/providers/{name}/reset").raise_for_status()


@pytest.fixture(scope="module")
def client(cluster: SimulatorCluster) -> openai.OpenAI:
    return sdk(cluster, "main")
