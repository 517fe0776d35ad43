"""Render the Helm chart with the real Helm library (helm-python-sdk, no binary) for the chart tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the chart")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "batch-gateway"
RELEASE, NAMESPACE = "bgw", "llm"
FULLNAME = f"{RELEASE}-batch-gateway"


def values_file(name: str) -> dict[str, Any]:
    """A scenario values file from the chart's ci/ folder."""
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text())
    return loaded


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    """The loaded chart."""
    with helm.Chart.load(CHART) as loaded:
        yield loaded


class Rendered:
    """The objects of one rendering, by kind and name."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
        self.objects: list[dict[str, Any]] = [
            doc for path, text in manifests.items() if path.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc
        ]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        matches = [o for o in self.kinds(kind) if o["metadata"]["name"] == name]
        assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
        return matches[0]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.kinds(kind)}


def render(chart: Any, values: dict[str, Any] | None = None) -> Rendered:
    """Render as ``helm install`` would (offline: ``lookup`` finds nothing)."""
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))
