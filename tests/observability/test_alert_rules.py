"""The alert rules file is valid, and every rule is unit-tested by promtool: it fires and it stays quiet."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml

from gateway import metrics
from tests.observability import ROOT, RULES_FILE, RULES_TEST_FILE


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_file_passes_promtool_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULES_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_rule_is_tested_firing_and_quiet() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for test in yaml.safe_load(RULES_TEST_FILE.read_text(encoding="utf-8"))["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    for rule in rules():
        name = rule["alert"]
        assert any(expected for expected in cases.get(name, [])), f"{name} is never expected to fire"
        assert any(not expected for expected in cases.get(name, [])), f"{name} is never expected to stay quiet"


def test_rules_are_labelled_annotated_and_use_defined_metrics() -> None:
    defined = metrics.metric_names()
    for rule in rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        used = set(re.findall(r"\bbatchgw_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        for name in used:
            assert re.sub(r"_(total|bucket|count|sum)$", "", name) in defined, f"{rule['alert']} uses unknown {name}"
