"""The line-by-line check of batch input files: ``iter_lines`` and ``validate_input_file``.

These are pure functions over a file on disk, tested here without a gateway: line splitting at
every chunk boundary, 1-based line numbers in every error, and the limits from ``LimitSettings``.
"""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.pipeline import input_lines
from gateway.pipeline.input_lines import ValidationReport, iter_lines, validate_input_file
from gateway.settings import LimitSettings

CHAT = "/v1/chat/completions"
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def request_line(custom_id: str, model: str = "gpt-4o-mini", url: str = CHAT, content: str = "Hello") -> bytes:
    """One well-formed chat request line, without its newline."""
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body}).encode()


def write(path: Path, lines: list[bytes], trailing_newline: bool = True) -> Path:
    """Write lines joined by newlines."""
    path.write_bytes(b"\n".join(lines) + (b"\n" if trailing_newline and lines else b""))
    return path


def check(path: Path, **limits: int) -> ValidationReport:
    """Validate a chat batch input with the given limits (defaults otherwise)."""
    return validate_input_file(path, CHAT, LimitSettings(**limits))  # type: ignore[arg-type]


def reference_lines(data: bytes, max_line_bytes: int) -> list[tuple[int, bytes | None]]:
    """What ``iter_lines`` must yield, computed the obvious way."""
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    return [(n, None if len(p) > max_line_bytes else p) for n, p in enumerate(pieces, start=1)]


# --- iter_lines ---------------------------------------------------------------------------------


@HYPOTHESIS
@given(
    data=st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\r", b"{}", b"\xff", b"xyz" * 5]), max_size=60).map(b"".join),
    chunk=st.integers(min_value=1, max_value=16),
    max_line_bytes=st.integers(min_value=0, max_value=20),
)
def test_iter_lines_matches_a_plain_split_whatever_the_chunk_size(
    tmp_path: Path, data: bytes, chunk: int, max_line_bytes: int
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    with mock.patch.object(input_lines, "READ_CHUNK", chunk):
        got = list(iter_lines(path, max_line_bytes))
    assert got == reference_lines(data, max_line_bytes)


def test_iter_lines_counts_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"one\ntwo")
    assert list(iter_lines(path, 100)) == [(1, b"one"), (2, b"two")]


def test_iter_lines_marks_only_the_long_line_and_keeps_numbering(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"short\n" + b"x" * 11 + b"\n" + b"y" * 10 + b"\nend\n")
    with mock.patch.object(input_lines, "READ_CHUNK", 4):
        got = list(iter_lines(path, 10))
    assert got == [(1, b"short"), (2, None), (3, b"y" * 10), (4, b"end")]


# --- validate_input_file: good files -------------------------------------------------------------


@HYPOTHESIS
@given(
    models=st.lists(st.sampled_from(["gpt-4o-mini", "gpt-4o", "claude-x"]), min_size=1, max_size=40),
    contents=st.text(max_size=30),
    trailing_newline=st.booleans(),
    crlf=st.booleans(),
)
def test_valid_lines_give_an_ok_report_with_the_right_counts(
    tmp_path: Path, models: list[str], contents: str, trailing_newline: bool, crlf: bool
) -> None:
    lines = [
        request_line(f"req-{i}", model, content=contents) + (b"\r" if crlf else b"") for i, model in enumerate(models)
    ]
    report = check(write(tmp_path / "in.jsonl", lines, trailing_newline))
    assert report.ok, report.errors
    assert report.errors == []
    assert report.line_count == len(models)
    assert report.models == {m: models.count(m) for m in set(models)}


def test_a_line_exactly_at_the_byte_limit_is_accepted(tmp_path: Path) -> None:
    line = request_line("only")
    report = check(write(tmp_path / "in.jsonl", [line]), max_line_bytes=len(line))
    assert report.ok
    assert report.line_count == 1


# --- validate_input_file: one broken line ----------------------------------------------------


BROKEN: dict[str, tuple[bytes, str, str | None]] = {
    "truncated json": (b'{"custom_id": "bad", "method": "POST"', "invalid_json_line", None),
    "json array": (b"[1, 2, 3]", "invalid_json_line", None),
    "blank": (b"   ", "empty_line", None),
    "not utf-8": (b'{"custom_id": "caf\xe9", "method": "POST"}', "invalid_utf8", None),
    "wrong url": (request_line("bad", url="/v1/embeddings"), "url_mismatch", "url"),
    "missing body": (b'{"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions"}', "missing_body", "body"),
    "body not an object": (
        b'{"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": 3}',
        "invalid_body",
        "body",
    ),
    "missing model": (
        b'{"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {}}',
        "missing_model",
        "body.model",
    ),
    "wrong method": (request_line("bad").replace(b'"POST"', b'"GET"'), "invalid_method", "method"),
    "missing custom_id": (request_line("").replace(b'"custom_id": "", ', b""), "invalid_custom_id", "custom_id"),
    "numeric custom_id": (request_line("x").replace(b'"x"', b"7", 1), "invalid_custom_id", "custom_id"),
    "duplicate custom_id": (request_line("req-0"), "duplicate_custom_id", "custom_id"),
}


@HYPOTHESIS
@given(
    count=st.integers(min_value=1, max_value=30),
    data=st.data(),
    kind=st.sampled_from(sorted(BROKEN)),
)
def test_one_broken_line_at_position_k_is_reported_at_line_k_plus_1(
    tmp_path: Path, count: int, data: st.DataObject, kind: str
) -> None:
    position = data.draw(st.integers(min_value=0 if kind != "duplicate custom_id" else 1, max_value=count))
    broken, code, param = BROKEN[kind]
    lines = [request_line(f"req-{i}") for i in range(count)]
    lines.insert(position, broken)
    report = check(write(tmp_path / "in.jsonl", lines))
    assert not report.ok
    assert report.line_count == count + 1
    assert report.error_count == 1, report.errors
    (error,) = report.errors
    assert error["code"] == code
    assert error["line"] == position + 1
    assert error["param"] == param
    assert f"Line {position + 1}" in error["message"]


def test_duplicate_custom_id_names_the_second_occurrence(tmp_path: Path) -> None:
    lines = [request_line("a"), request_line("b"), request_line("c"), request_line("b"), request_line("b")]
    report = check(write(tmp_path / "in.jsonl", lines))
    assert [(e["code"], e["line"]) for e in report.errors] == [("duplicate_custom_id", 4), ("duplicate_custom_id", 5)]
    assert "'b'" in report.errors[0]["message"]


def test_every_problem_of_a_line_and_of_every_line_is_listed_in_order(tmp_path: Path) -> None:
    lines = [
        request_line("a"),
        b"{oops",
        json.dumps({"custom_id": "a", "method": "GET", "url": "/v1/embeddings"}).encode(),
        b"",
        request_line("d"),
    ]
    report = check(write(tmp_path / "in.jsonl", lines))
    assert [(e["code"], e["line"]) for e in report.errors] == [
        ("invalid_json_line", 2),
        ("duplicate_custom_id", 3),
        ("invalid_method", 3),
        ("url_mismatch", 3),
        ("missing_body", 3),
        ("empty_line", 4),
    ]
    assert report.line_count == 5


# --- validate_input_file: limits and empty input ---------------------------------------------


def test_empty_file_is_an_error_without_a_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"")
    report = check(path)
    assert not report.ok
    assert report.line_count == 0
    assert [(e["code"], e["line"]) for e in report.errors] == [("empty_file", None)]


def test_a_file_of_one_newline_is_one_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n")
    report = check(path)
    assert [(e["code"], e["line"]) for e in report.errors] == [("empty_line", 1)]


def test_line_over_the_byte_limit_is_named_and_the_rest_still_checked(tmp_path: Path) -> None:
    long_line = request_line("long", content="x" * 2_000_000)
    lines = [request_line("a"), long_line, b"{broken"]
    with mock.patch.object(input_lines, "READ_CHUNK", 64 * 1024):
        report = check(write(tmp_path / "in.jsonl", lines), max_line_bytes=1024 * 1024)
    assert [(e["code"], e["line"]) for e in report.errors] == [("line_too_long", 2), ("invalid_json_line", 3)]
    assert "Line 2" in report.errors[0]["message"]
    assert str(1024 * 1024) in report.errors[0]["message"]


def test_too_many_lines_stops_at_the_first_line_over_the_limit(tmp_path: Path) -> None:
    lines = [request_line(f"r{i}") for i in range(6)] + [b"{broken"]
    report = check(write(tmp_path / "in.jsonl", lines), max_file_lines=4)
    assert [(e["code"], e["line"]) for e in report.errors] == [("too_many_requests", 5)]


def test_errors_beyond_the_reporting_limit_are_summarised(tmp_path: Path) -> None:
    lines = [b"{broken"] * 10
    report = check(write(tmp_path / "in.jsonl", lines), max_errors_reported=3)
    assert report.error_count == 10
    assert [e["line"] for e in report.errors] == [1, 2, 3, None]
    assert report.errors[-1]["code"] == "too_many_errors"
    assert "7 more" in report.errors[-1]["message"]


def test_a_file_may_mix_models_up_to_the_limit(tmp_path: Path) -> None:
    limit = input_lines.MAX_MODELS_PER_FILE
    lines = [request_line(f"r{i}", model=f"model-{i}") for i in range(limit + 2)]
    report = check(write(tmp_path / "in.jsonl", lines))
    assert [(e["code"], e["line"], e["param"]) for e in report.errors] == [
        ("too_many_models", limit + 1, "body.model"),
        ("too_many_models", limit + 2, "body.model"),
    ]
    assert len(report.models) == limit
    assert check(write(tmp_path / "ok.jsonl", lines[:limit])).ok


@pytest.mark.parametrize("endpoint", ["/v1/embeddings", "/v1/chat/completions"])
def test_url_must_match_the_batch_endpoint(tmp_path: Path, endpoint: str) -> None:
    path = write(tmp_path / "in.jsonl", [request_line("a", url="/v1/embeddings")])
    report = validate_input_file(path, endpoint, LimitSettings())  # type: ignore[call-arg]
    assert report.ok is (endpoint == "/v1/embeddings")


# --- nesting -------------------------------------------------------------------------------------


def nested_line(custom_id: str, depth: int) -> bytes:
    """A valid request line whose deepest value sits ``depth`` levels down (the line itself is level 1)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    return (
        f'{{"custom_id": "{custom_id}", "method": "POST", "url": "{CHAT}", '
        f'"body": {{"model": "gpt-4o-mini", "x": {inner or 0}}}}}'
    ).encode()


def test_a_line_at_the_nesting_limit_is_valid_and_one_deeper_is_not(tmp_path: Path) -> None:
    at_limit = nested_line("a", input_lines.MAX_LINE_DEPTH)
    over = nested_line("b", input_lines.MAX_LINE_DEPTH + 1)
    assert json.loads(at_limit) and json.loads(over)
    report = check(write(tmp_path / "in.jsonl", [at_limit, over, request_line("c")]))
    assert report.line_count == 3
    assert [(e["code"], e["line"]) for e in report.errors] == [("nesting_too_deep", 2)]
    assert str(input_lines.MAX_LINE_DEPTH) in report.errors[0]["message"]


@pytest.mark.parametrize("line", [b"[" * 5000 + b"]" * 5000, b'{"a":' * 100_000, b"[" * 1_000_000])
def test_a_line_nested_thousands_deep_is_a_line_error_not_a_crash(tmp_path: Path, line: bytes) -> None:
    report = check(write(tmp_path / "in.jsonl", [request_line("a"), line, request_line("c")]))
    assert [(e["code"], e["line"]) for e in report.errors] == [("nesting_too_deep", 2)]


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    report = check(write(tmp_path / "in.jsonl", [request_line("a", content="[" * 5000 + '\\"{' * 300)]))
    assert report.ok, report.errors


def test_a_deep_line_beside_repeated_custom_ids_does_not_crash_the_duplicate_pass(tmp_path: Path) -> None:
    deep = b'{"custom_id": "a", "body": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    report = check(write(tmp_path / "in.jsonl", [request_line("a"), deep, request_line("a")]))
    assert [(e["code"], e["line"]) for e in report.errors] == [("nesting_too_deep", 2), ("duplicate_custom_id", 3)]


@HYPOTHESIS
@given(chunk=st.integers(min_value=1, max_value=400), deep_at=st.integers(min_value=1, max_value=4))
def test_a_deep_line_is_found_wherever_the_chunks_cut_it(tmp_path: Path, chunk: int, deep_at: int) -> None:
    lines = [nested_line(f"r{i}", input_lines.MAX_LINE_DEPTH) for i in range(5)]
    lines[deep_at] = nested_line("deep", input_lines.MAX_LINE_DEPTH + 1)
    with mock.patch.object(input_lines, "READ_CHUNK", chunk):
        report = check(write(tmp_path / "in.jsonl", lines))
    assert [(e["code"], e["line"]) for e in report.errors] == [("nesting_too_deep", deep_at + 1)]


# --- whole reads at once, and line by line: the same report --------------------------------------------------


LINE_KINDS = {
    "plain", "repeated id", "crlf", "two objects on one line", "one object over two lines", "blank", "not utf-8",
    "get", "other url", "empty id", "no model", "deep", "long", "leading space",
}  # fmt: skip


def _line_of(kind: str, index: int, model: str) -> list[bytes]:
    """The line(s) of one ``kind``: plain requests, and every way a line can fall short of one."""
    plain = request_line(f"r{index}", model)
    cut = plain.index(b', "url"')
    return {
        "plain": [plain],
        "repeated id": [request_line("r0", model)],
        "crlf": [plain + b"\r"],
        "two objects on one line": [plain + b" " + request_line(f"s{index}", model)],
        "one object over two lines": [plain[: cut + 1], plain[cut + 1 :]],
        "blank": [b""],
        "not utf-8": [request_line(f"r{index}", model, content="caf\udce9").replace(b"\\udce9", b"\xe9")],
        "get": [plain.replace(b'"POST"', b'"GET"')],
        "other url": [request_line(f"r{index}", model, url="/v1/embeddings")],
        "empty id": [request_line("", model)],
        "no model": [request_line(f"r{index}", "")],
        "deep": [nested_line(f"r{index}", input_lines.MAX_LINE_DEPTH + 1)],
        "long": [request_line(f"r{index}", model, content="x" * 400)],
        "leading space": [b" " + plain],
    }[kind]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kinds=st.lists(st.sampled_from(["plain"] * 40 + sorted(LINE_KINDS - {"plain"})), min_size=1, max_size=60),
    models=st.lists(st.sampled_from(["m1", "m2", "m3", "m4"]), min_size=60, max_size=60),
    chunk=st.integers(min_value=40, max_value=3000),
    max_lines=st.integers(min_value=1, max_value=70),
)
def test_reading_whole_reads_at_once_reports_exactly_what_reading_line_by_line_does(
    tmp_path: Path, kinds: list[str], models: list[str], chunk: int, max_lines: int
) -> None:
    lines = [line for index, kind in enumerate(kinds) for line in _line_of(kind, index, models[index])]
    path = write(tmp_path / "in.jsonl", lines)
    limits = {"max_file_lines": max_lines, "max_line_bytes": 400}
    # At most three models a file, so that a read naming a fourth is refused whole and checked line by line.
    with mock.patch.object(input_lines, "MAX_MODELS_PER_FILE", 3):
        with mock.patch.object(input_lines, "READ_CHUNK", 1):  # no line is wholly inside a read: line by line
            by_line = check(path, **limits)
        with mock.patch.object(input_lines, "READ_CHUNK", chunk):
            by_read = check(path, **limits)
    assert by_read == by_line


@pytest.mark.parametrize(
    ("kind", "code", "limits"),
    [
        ("plain", "too_many_requests", {"max_file_lines": 100}),
        ("repeated id", "duplicate_custom_id", {}),
        ("two objects on one line", "invalid_json_line", {}),
        ("one object over two lines", "invalid_json_line", {}),
        ("blank", "empty_line", {}),
        ("not utf-8", "invalid_utf8", {}),
        ("get", "invalid_method", {}),
        ("other url", "url_mismatch", {}),
        ("deep", "nesting_too_deep", {}),
        ("long", "line_too_long", {"max_line_bytes": 400}),
    ],
)
def test_a_problem_amid_a_read_of_plain_lines_is_named_at_its_line(
    tmp_path: Path, kind: str, code: str, limits: dict[str, int]
) -> None:
    lines = [request_line(f"r{i}") for i in range(200)]
    lines[100:101] = _line_of(kind, 100, "gpt-4o-mini")
    path = write(tmp_path / "in.jsonl", lines)
    report = check(path, **limits)
    assert (report.errors[0]["code"], report.errors[0]["line"]) == (code, 101)
    with mock.patch.object(input_lines, "READ_CHUNK", 1):
        assert report == check(path, **limits), "line by line, the same report"


def test_a_model_over_the_most_a_file_may_name_is_found_amid_a_read(tmp_path: Path) -> None:
    lines = [request_line(f"r{i}", model=f"m{min(i // 50, 3)}") for i in range(200)]  # m3 from line 151 on
    with mock.patch.object(input_lines, "MAX_MODELS_PER_FILE", 3):
        report = check(write(tmp_path / "in.jsonl", lines))
    assert [(e["code"], e["line"]) for e in report.errors][:2] == [("too_many_models", 151), ("too_many_models", 152)]
    assert report.models == {"m0": 50, "m1": 50, "m2": 50}


def test_a_large_clean_file_read_whole_reads_at_once_gives_its_counts(tmp_path: Path) -> None:
    models = ["gpt-4o-mini", "gpt-4o", "claude-x"]
    lines = [request_line(f"req-{i}", models[i % 3], content="y" * (i % 200)) for i in range(30_000)]
    lines[29_999] = request_line("req-7", "gpt-4o")  # a repeat of a line many reads before it, for another model
    report = check(write(tmp_path / "in.jsonl", lines))
    assert [(e["code"], e["line"]) for e in report.errors] == [("duplicate_custom_id", 30_000)]
    assert report.line_count == 30_000
    assert report.models == {"gpt-4o-mini": 10_000, "gpt-4o": 10_001, "claude-x": 9_999}


# --- an upload's check, adopted by its batches ------------------------------------------------------------


def upload_check(**changes: object) -> dict:
    """What the check of a clean two-model upload keeps with the file (as the database gives it back)."""
    limits = LimitSettings()
    stored = {
        "version": input_lines.UPLOAD_CHECK_VERSION,
        "url": CHAT,
        "lines": 12,
        "size": 3456,
        "models": {"gpt-4o-mini": 10, "gpt-4o": 2},
        "limits": [limits.max_line_bytes, limits.max_file_lines],
    }
    return stored | changes


def test_a_batch_for_the_checked_url_under_the_same_limits_adopts_the_check() -> None:
    report = input_lines.report_from_check(upload_check(), CHAT, LimitSettings())
    assert report is not None and report.ok
    assert (report.line_count, report.models, report.url) == (12, {"gpt-4o-mini": 10, "gpt-4o": 2}, CHAT)


@pytest.mark.parametrize(
    ("stored", "endpoint", "limits"),
    [
        (None, CHAT, LimitSettings()),
        (upload_check(), "/v1/embeddings", LimitSettings()),
        (upload_check(), CHAT, LimitSettings(max_line_bytes=1000)),
        (upload_check(), CHAT, LimitSettings(max_file_lines=10)),
        (upload_check(version=input_lines.UPLOAD_CHECK_VERSION - 1), CHAT, LimitSettings()),
        (upload_check(models="many"), CHAT, LimitSettings()),
        (upload_check(lines=None), CHAT, LimitSettings()),
    ],
    ids=["none", "other-endpoint", "other-line-limit", "other-line-count-limit", "older-rules", "garbled", "no-lines"],
)
def test_a_check_that_does_not_apply_leaves_the_file_to_be_read(
    stored: dict | None, endpoint: str, limits: LimitSettings
) -> None:
    assert input_lines.report_from_check(stored, endpoint, limits) is None
