"""The figures a file's check keeps of each request (model, body size, output cap) give routing the estimates a read
of the file gives, and are refused when they are not whole."""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest.mock import patch

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.billing.estimate import Estimator, estimate_figures, estimate_lines
from gateway.pipeline import input_lines
from gateway.pipeline.input_lines import validate_input_file
from gateway.pipeline.line_figures import FIGURES_VERSION, LineFigures
from gateway.settings import LimitSettings
from tests.billing.test_estimate import _CAPS, learned

CHAT = "/v1/chat/completions"
LIMITS = LimitSettings()


def request_line(number: int, model: str, cap: str, text: str, crlf: bool = False) -> str:
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "{text}"}}]{cap}}}'
    line = f'{{"custom_id": "r{number}", "method": "POST", "url": "{CHAT}", "body": {body}}}'
    return line + ("\r" if crlf else "")


def figures_of(path: Path) -> LineFigures:
    report = validate_input_file(path, CHAT, LIMITS)
    assert report.ok, report.errors
    assert report.figures is not None, "a clean file's check kept no figures"
    figures = LineFigures.from_bytes(report.figures)
    assert figures is not None
    return figures


_TEXTS = ["x" * 30, "x" * 900, "é☃" * 40, "[[{{" * 50]  # the last: more brackets than a block's quick bound allows


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(["a", "b", "ghost"]), st.sampled_from(_CAPS), st.sampled_from(_TEXTS), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    read_bytes=st.integers(200, 6000),
)
def test_estimates_from_a_files_figures_are_those_of_reading_the_file(
    requests: list[tuple[str, str, str, bool]], read_bytes: int
) -> None:
    """Whatever the models, caps (of any JSON type), text, line endings and read sizes (lines cut across reads go
    the check's slow way), estimating from the check's figures gives what a read of the file gives ("a" has a
    learned history that scales inputs, "b" a catalog default)."""
    lines = [request_line(n, model, cap, text, crlf) for n, (model, cap, text, crlf) in enumerate(requests)]
    estimator = Estimator(CHAT, histories={"a": learned([30, 60, 90] * 20, scale=0.7)}, defaults={"b": 77})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with patch.object(input_lines, "READ_CHUNK", read_bytes):
            figures = figures_of(path)
        read = estimate_lines(path, CHAT, estimator)
    models, line_estimates = estimate_figures(figures, CHAT, estimator)
    assert models == read[0]
    assert [line_estimates.line(n) for n in range(len(line_estimates))] == [
        read[1].line(n) for n in range(len(read[1]))
    ]


def test_figures_survive_storage_and_damaged_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text(
        "".join(request_line(n, "m" if n % 3 else "other", ', "max_tokens": 50', "hi") + "\n" for n in range(9))
    )
    figures = figures_of(path)
    again = LineFigures.from_bytes(figures.to_bytes())
    assert again is not None
    assert (again.names, list(again.name_of_line), list(again.body_bytes), list(again.caps)) == (
        ["other", "m"],
        [0, 1, 1, 0, 1, 1, 0, 1, 1],
        [len('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}') + (n % 3 == 0) * 4
         for n in range(9)],
        [50] * 9,
    )  # fmt: skip
    stored = figures.to_bytes()
    assert LineFigures.from_bytes(stored[:-3]) is None, "a cut blob was read"
    assert LineFigures.from_bytes(b"not figures") is None
    older = msgspec.msgpack.decode(stored)
    older[0] = FIGURES_VERSION + 1
    assert LineFigures.from_bytes(msgspec.msgpack.encode(older)) is None, "figures of another version were read"
    older[0], older[1] = FIGURES_VERSION, []
    assert LineFigures.from_bytes(msgspec.msgpack.encode(older)) is None, "a model index past the names was read"


@pytest.mark.parametrize(
    "bad_line",
    [f'{{"custom_id": "r1", "method": "GET", "url": "{CHAT}", "body": {{"model": "m"}}}}', "not json"],
    ids=["bad-method", "not-json"],
)
def test_a_file_with_a_problem_keeps_no_figures(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text(request_line(0, "m", "", "hi") + "\n" + bad_line + "\n")
    report = validate_input_file(path, CHAT, LIMITS)
    assert not report.ok and report.figures is None
