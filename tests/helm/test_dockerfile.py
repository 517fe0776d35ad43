"""The container recipe (helm/Dockerfile): no Docker engine runs here, so its evident properties are
checked from the text, and its HEALTHCHECK command is run against a live gateway."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "helm" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_bases_are_pinned_slim_python_and_the_build_is_multi_stage() -> None:
    bases = [args for keyword, args in instructions() if keyword == "FROM"]
    assert len(bases) >= 2, "wheels are built in a stage of their own"
    for base in bases:
        assert re.match(r"^python:3\.11-slim(-[a-z]+)?( AS \w+)?$", base), base
    assert any(keyword == "RUN" and "--mount=type=bind,from=build" in args for keyword, args in final_stage())


def test_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the final stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"} and int(user) >= 1000


def test_healthcheck_entrypoint_and_ports() -> None:
    stage = dict(final_stage())
    assert "/healthz" in stage["HEALTHCHECK"]
    entrypoint = json.loads(stage["ENTRYPOINT"])
    assert entrypoint[-1] == "batchgw", "the command line is batchgw's"
    assert json.loads(stage["CMD"]) == ["serve"]
    assert set(stage["EXPOSE"].split()) == {"8080", "8501"}
    assert json.loads(stage["VOLUME"]) == ["/data"]


def test_no_remote_downloads_and_no_secrets_baked_in() -> None:
    for keyword, args in instructions():
        assert keyword != "ADD", "COPY only: ADD can fetch remote URLs and unpack archives"
        if keyword in {"ENV", "ARG"}:
            assert not re.search(r"(KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL)\s*=", args, re.IGNORECASE), args
    environment = " ".join(args for keyword, args in final_stage() if keyword == "ENV")
    assert "BATCHGW_DATA_DIR=/data" in environment and "HOME=/tmp" in environment


def test_copied_sources_exist_and_are_not_ignored() -> None:
    copied = []
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            copied += shlex.split(args)[:-1]
    assert {"pyproject.toml", "README.md", "gateway", "router_policies", "dashboard"} <= set(copied)
    for source in copied:
        assert (ROOT / source).exists(), source
    ignore = (ROOT / "helm" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "**" in ignore and {"!pyproject.toml", "!README.md", "!gateway/**"} <= set(ignore)


@pytest.fixture(scope="module")
def healthcheck_command() -> list[str]:
    command = json.loads(dict(final_stage())["HEALTHCHECK"].split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_healthcheck_command_passes_on_a_live_gateway_and_fails_on_a_dead_one(
    gateway: GatewayProcess, healthcheck_command: list[str]
) -> None:
    env = {**os.environ, "BATCHGW_PORT": str(gateway.port)}
    assert subprocess.run(healthcheck_command, env=env, capture_output=True, timeout=30).returncode == 0
    env["BATCHGW_PORT"] = str(free_port())
    assert subprocess.run(healthcheck_command, env=env, capture_output=True, timeout=30).returncode != 0
