"""Joining a shard's results: a read whose lines are all plain answers is taken at once, and gives what taking
its lines one by one gives, whatever the lines hold; lines as a provider sent them give what the same lines
normalised by their adapter give."""

from __future__ import annotations

import io
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline.joining import _Join, split_results
from gateway.pipeline.results import ShardResults, Usage
from gateway.providers.openai_wire import normalised_output_line
from gateway.translate import MalformedResult

IDS = [f"q-{n}" for n in range(6)]


def _answer(status: int, usage: str, tier: str = "default") -> str:
    body = f'{{"id": "c", "service_tier": "{tier}", "usage": {usage}}}'
    return f'{{"status_code": {status}, "request_id": "r", "body": {body}}}'


USAGE = '{"prompt_tokens": 12, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}}'
KINDS: dict[str, str] = {
    "plain": '{"id": "b", "custom_id": "{id}", "response": ' + _answer(200, USAGE) + ', "error": null}',
    "no usage": '{"custom_id": "{id}", "response": {"status_code": 201, "body": {}}}',
    "reasoning": '{"custom_id": "{id}", "response": '
    + _answer(200, '{"completion_tokens": 300, "completion_tokens_details": {"reasoning_tokens": 90}}')
    + "}",
    "flex served": '{"custom_id": "{id}", "response": ' + _answer(200, USAGE, tier="flex") + "}",
    "billed": '{"custom_id": "{id}", "response": ' + _answer(200, USAGE) + ', "billed_usd": 0.125}',
    "non-ascii": '{"custom_id": "{id}", "response": {"status_code": 200, "body": {"text": "caf\u00e9 \u2615"}}}',
    "server error": '{"custom_id": "{id}", "response": {"status_code": 500, "body": {"error": {}}}}',
    "rate limited": '{"custom_id": "{id}", "response": {"status_code": 429, "body": {}}}',
    "refused": '{"custom_id": "{id}", "response": {"status_code": 400, "body": {"error": {}}}}',
    "expired": '{"custom_id": "{id}", "response": null, "error": {"code": "batch_expired", "message": "m"}}',
    "errored": '{"custom_id": "{id}", "response": null, "error": {"code": "server_error", "message": "m"}}',
    "float counts": '{"custom_id": "{id}", "response": '
    + _answer(200, '{"prompt_tokens": 12.0, "completion_tokens": "7"}')
    + "}",
    "text body": '{"custom_id": "{id}", "response": {"status_code": 200, "body": "plain text"}}',
    "numeric id": '{"custom_id": 7, "response": ' + _answer(200, USAGE) + "}",
    "unknown id": '{"custom_id": "other-{id}", "response": ' + _answer(200, USAGE) + "}",
    "error with answer": '{"custom_id": "{id}", "response": ' + _answer(200, USAGE) + ', "error": {"code": "x"}}',
    "cut": '{"custom_id": "{id}", "response": {"status_',
    "blank": "",
}
BYTE_KINDS: dict[str, bytes] = {  # lines that are not text
    "invalid utf-8": b'{"custom_id": "%s", "response": {"status_code": 200, "body": {"text": "\xff\xfe"}}}',
    "nested deep": b'{"custom_id": "%s", "response": {"status_code": 200, "body": {"x": '
    + b"[" * 5000
    + b"]" * 5000
    + b"}}}",
}


def _line(kind: str, custom_id: str) -> bytes:
    if kind in BYTE_KINDS:
        return BYTE_KINDS[kind] % custom_id.encode()
    return KINDS[kind].replace("{id}", custom_id).encode()


def _join(
    pending: dict[str, int], can_move: bool, tier: str, as_sent: bool = False
) -> tuple[_Join, io.BytesIO, io.BytesIO]:
    out, err = io.BytesIO(), io.BytesIO()
    results = ShardResults(usage=Usage(asked_tier=tier))
    return _Join("batch_j", "floor", can_move, pending, results, out, err, as_sent), out, err


def _take(join: _Join, lines: list[bytes]) -> None:
    """Take the lines as one read, the way :func:`split_results` does."""
    if not join.take_plain(1, lines):
        for number, line in enumerate(lines, 1):
            join.take_line(number, line)


def _outcome(join: _Join, out: io.BytesIO, err: io.BytesIO) -> tuple[object, ...]:
    results = join.results
    sample = results.sample
    return (
        out.getvalue(),
        err.getvalue(),
        sorted(join.moved),
        sorted(join.pending),
        (results.completed, results.failed),
        results.usage.as_dict(),
        results.usage.requests,
        results.usage.billed_usd,
        (sample.requests, sample.output_tokens, sample.input_tokens, sample.estimated_input_tokens),
        sample.histogram,
    )


line_kinds = st.sampled_from([*KINDS, *BYTE_KINDS])
lines_strategy = st.lists(st.tuples(line_kinds, st.sampled_from(IDS)), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    lines=lines_strategy,
    plain_lines=st.lists(st.sampled_from(IDS), max_size=6),
    can_move=st.booleans(),
    tier=st.sampled_from(["standard", "flex", "priority"]),
)
def test_a_read_taken_at_once_gives_what_its_lines_give_one_by_one(
    lines: list[tuple[str, str]], plain_lines: list[str], can_move: bool, tier: str
) -> None:
    raw = [_line(kind, custom_id) for kind, custom_id in lines] + [_line("plain", i) for i in plain_lines]
    pending = {custom_id: 10 + n for n, custom_id in enumerate(IDS)}
    whole, whole_out, whole_err = _join(dict(pending), can_move, tier)
    if not whole.take_plain(1, raw):
        for number, line in enumerate(raw, 1):
            whole.take_line(number, line)
    single, single_out, single_err = _join(dict(pending), can_move, tier)
    for number, line in enumerate(raw, 1):
        single.take_line(number, line)
    assert _outcome(whole, whole_out, whole_err) == _outcome(single, single_out, single_err)


SENT_KINDS: dict[str, bytes] = {  # lines a provider may send that its adapter's normalising changes
    "bare CR": b'{"custom_id": "%s", "response": {"status_code": 200,\r "body": {"usage": {"prompt_tokens": 3}}}}',
    "error text": b'{"custom_id": "%s", "response": null, "error": "boom"}',
    "numeric error code": b'{"custom_id": "%s", "response": null, "error": {"code": 5, "message": "m"}}',
    "empty error": b'{"custom_id": "%s", "response": {"status_code": 200, "body": {}}, "error": ""}',
    "answer text": b'{"custom_id": "%s", "response": "text"}',
    "no result": b'{"custom_id": "%s", "response": null, "error": null}',
    "two values": b'{"custom_id": "%s", "response": {"status_code": 200, "body": {}}} {"custom_id": "q-5"}',
    "spaces around": b'  {"custom_id": "%s", "response": {"status_code": 200, "body": {}}}\t',
    "extra key": b'{"custom_id": "%s", "extra": 1, "response": {"status_code": 200, "body": {}}}',
    "empty id": b'{"custom_id": "", "response": {"status_code": 200, "body": {}}, "also": "%s"}',
}


def _normalised(line: bytes) -> bytes | None:
    """What an adapter that normalises its lines writes for ``line`` (None: skipped)."""
    if not line.strip():
        return None
    try:
        return normalised_output_line(line, "b")
    except (MalformedResult, RecursionError):
        return None


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(st.sampled_from([*KINDS, *BYTE_KINDS, *SENT_KINDS]), st.sampled_from(IDS)), max_size=12),
    plain_lines=st.lists(st.sampled_from(IDS), max_size=6),
    can_move=st.booleans(),
)
def test_lines_as_the_provider_sent_them_give_what_the_same_lines_normalised_give(
    lines: list[tuple[str, str]], plain_lines: list[str], can_move: bool
) -> None:
    raw = [SENT_KINDS[kind] % i.encode() if kind in SENT_KINDS else _line(kind, i) for kind, i in lines]
    raw += [_line("plain", i) for i in plain_lines]
    pending = {custom_id: 10 + n for n, custom_id in enumerate(IDS)}
    as_sent, sent_out, sent_err = _join(dict(pending), can_move, "standard", as_sent=True)
    _take(as_sent, raw)
    normalised, out, err = _join(dict(pending), can_move, "standard")
    _take(normalised, [line for line in map(_normalised, raw) if line is not None])
    assert _outcome(as_sent, sent_out, sent_err) == _outcome(normalised, out, err)


def test_a_charge_in_a_line_as_sent_is_not_trusted() -> None:
    line = _line("billed", "q-0")
    trusted, _, _ = _join({"q-0": 1}, True, "standard")
    _take(trusted, [line])
    as_sent, _, _ = _join({"q-0": 1}, True, "standard", as_sent=True)
    _take(as_sent, [line])
    assert (trusted.results.usage.billed_usd, as_sent.results.usage.billed_usd) == (0.125, 0.0)
    assert as_sent.results.completed == 1


def test_a_bare_cr_in_an_answer_as_sent_is_not_written_out() -> None:
    join, out, _ = _join({"q-0": 1}, True, "standard", as_sent=True)
    _take(join, [SENT_KINDS["bare CR"] % b"q-0"])
    assert join.results.completed == 1 and b"\r" not in out.getvalue()
    assert msgspec.json.decode(out.getvalue())["response"]["body"]["usage"] == {"prompt_tokens": 3}


@pytest.mark.parametrize("kind", [k for k in [*KINDS, *BYTE_KINDS] if k != "plain"])
def test_a_read_with_any_line_less_than_a_plain_answer_is_not_taken_at_once(kind: str) -> None:
    """A success the block reads wholly, or a failed answer it hands to the line-by-line step, is taken; any
    other line sends the whole read line by line (having taken nothing)."""
    raw = [_line("plain", "q-0"), _line(kind, "q-1"), _line("plain", "q-2")]
    join, out, err = _join({custom_id: 1 for custom_id in IDS}, True, "standard")
    taken = join.take_plain(1, raw)
    assert taken is (kind in {"no usage", "reasoning", "flex served", "billed", "non-ascii", "server error",
                             "rate limited", "refused", "unknown id"})  # fmt: skip
    if not taken:
        assert (out.getvalue(), err.getvalue(), join.results.completed, len(join.pending)) == (b"", b"", 0, 6)


def test_a_shards_results_are_joined_with_one_line_per_request(tmp_path: Path) -> None:
    """Reads of many lines: every request gets exactly one output, error or moved line, in the input's order
    where it was answered, and usage adds up."""
    count = 30_000
    ids = [f"req-{n:06d}" for n in range(count)]
    input_path, raw_path = tmp_path / "input.jsonl", tmp_path / "raw.jsonl"
    input_path.write_bytes(b"".join(b'{"custom_id": "%s", "body": {"model": "m"}}\n' % i.encode() for i in ids))
    kinds = ["plain"] * 20 + ["server error", "refused", "unknown id", "cut"]
    answered = [(ids[n], kinds[n % len(kinds)]) for n in range(count - 100)]  # the last 100 never answered
    raw_path.write_bytes(b"\n".join(_line(kind, custom_id) for custom_id, kind in answered) + b"\n")
    paths = [tmp_path / name for name in ("out.jsonl", "err.jsonl", "moved.jsonl")]
    results = split_results("batch_j", input_path, raw_path, *paths, "completed", None, "floor", can_move=True)
    out = [msgspec.json.decode(line) for line in paths[0].read_bytes().splitlines()]
    err = [msgspec.json.decode(line) for line in paths[1].read_bytes().splitlines()]
    moved = [msgspec.json.decode(line)["custom_id"] for line in paths[2].read_bytes().splitlines()]
    plain = [custom_id for custom_id, kind in answered if kind == "plain"]
    assert [line["custom_id"] for line in out] == plain
    assert all(line["provider"] == "floor" and line["error"] is None for line in out)
    assert [line["custom_id"] for line in err] == [i for i, kind in answered if kind == "refused"]
    expected_moved = {i for i, kind in answered if kind in {"server error", "unknown id", "cut"}} | set(ids[-100:])
    assert sorted(moved) == sorted(expected_moved)
    assert (results.completed, results.failed, results.moved) == (len(plain), len(err), len(expected_moved))
    assert (results.usage.input, results.usage.output, results.usage.cached) == (
        12 * len(plain),
        5 * len(plain),
        4 * len(plain),
    )
    assert results.sample.requests == len(plain)
