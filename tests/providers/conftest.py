"""Fixtures of the adapter tests: one HTTP client per test, and emulators reset before each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.context import provider_http_client
from gateway.simulator import SimulatorCluster


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """The shared HTTP client an adapter is given, the one the gateway gives every adapter."""
    async with provider_http_client() as client:
        yield client


@pytest.fixture(autouse=True)
def fresh_emulators(request: pytest.FixtureRequest) -> None:
    """Reset every emulator of the module's ``cluster`` fixture (when it has one) before each test."""
    if "cluster" not in request.fixturenames:
        return
    cluster: SimulatorCluster = request.getfixturevalue("cluster")
    for name in cluster.names():
        cluster.reset(name)
