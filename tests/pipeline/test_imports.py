"""Stages hand off through the database, never by importing one another: a stage module imports only the
shared pipeline modules and its own parts (collection's, validation's)."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway.pipeline

STAGES = {"intake", "validate", "route", "submit", "fanout", "poll", "collect", "merge"}
SHARED = {"lifecycle", "results", "shard_plans", "input_lines", "line_figures"}
COLLECT_PARTS = {"ledger", "canary", "failover", "joining", "settle"}
PARTS = {"collect": COLLECT_PARTS}


def _imported(path: Path) -> set[str]:
    """The pipeline modules (first name under ``gateway.pipeline``) one file imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "gateway.pipeline":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway.pipeline."):
            names.add(str(node.module).split(".")[2])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[2] for a in node.names if a.name.startswith("gateway.pipeline."))
    return names


def pipeline_imports() -> dict[str, set[str]]:
    """Every pipeline module (a package counts as one: intake) and the other pipeline modules it imports."""
    folder = Path(gateway.pipeline.__file__).parent
    found: dict[str, set[str]] = {path.stem: _imported(path) for path in folder.glob("*.py")}
    for package in (p for p in folder.iterdir() if (p / "__init__.py").is_file()):
        imported = set().union(*(_imported(path) for path in package.rglob("*.py")))
        found[package.name] = imported - {package.name}
    return found


def test_no_stage_imports_another_stage_or_a_part_of_another_stage() -> None:
    imports = pipeline_imports()
    assert imports.keys() >= STAGES
    for stage in STAGES:
        allowed = SHARED | PARTS.get(stage, set())
        assert imports[stage] <= allowed, f"{stage} imports {sorted(imports[stage] - allowed)}"


def test_shared_modules_and_parts_of_collection_import_no_stage() -> None:
    for name, imported in pipeline_imports().items():
        if name not in STAGES:
            assert not imported & STAGES, f"{name} imports the stage(s) {sorted(imported & STAGES)}"
