"""The Debian Prometheus binaries the observability tests run."""

from __future__ import annotations

import pytest

from tests.observability import require_binary


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of ``promtool``."""
    return require_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Path of the ``prometheus`` server."""
    return require_binary("prometheus")
