"""Fixtures of the routing tests: a migrated database per module, for limits shared through it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.settings import async_database_url
from tests.conftest import FreshDatabase


@pytest.fixture(scope="module")
def database(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, migrated database for the module (each test limits a provider of its own); its async URL."""
    made = FreshDatabase.create(database_kind, tmp_path_factory.mktemp("routing"), migrated=True)
    yield async_database_url(made.url)
    made.drop()
