"""Pure transforms of the OpenAI batch wire format and Retry-After parsing (no network)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.providers.base import BatchUsage, ProviderBatchState
from gateway.providers.error_text import error_message_from_body
from gateway.providers.jsonl import LineSplitter, encode_line
from gateway.providers.openai_wire import (
    BATCH_STATUS_TABLE,
    SHARD_ID_KEY,
    SUBMIT_TOKEN_KEY,
    RequestCounts,
    batch_error_summary,
    cancel_refusal_is_benign,
    find_batch_with_token,
    has_submit_token,
    map_batch_status,
    normalise_output_line,
    normalised_output_line,
    parse_batch_page,
    parse_batch_usage,
    parse_progress,
    parse_request_counts,
    submit_metadata,
    sync_output_line,
    unwrap_batch,
)
from gateway.providers.retry_after import (
    parse_google_retry_delay,
    parse_retry_after,
    parse_retry_after_value,
)
from gateway.translate import MalformedResult

S = ProviderBatchState

# --------------------------------------------------------------------------- status table


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ("validating", S.QUEUED),
        ("in_progress", S.RUNNING),
        ("finalizing", S.RUNNING),
        ("cancelling", S.CANCELLING),
        ("completed", S.COMPLETED),
        ("failed", S.FAILED),
        ("expired", S.EXPIRED),
        ("cancelled", S.CANCELLED),
        # Together
        ("VALIDATING", S.QUEUED),
        ("IN_PROGRESS", S.RUNNING),
        ("CANCELING", S.CANCELLING),
        ("COMPLETED", S.COMPLETED),
        ("FAILED", S.FAILED),
        ("EXPIRED", S.EXPIRED),
        ("CANCELLED", S.CANCELLED),
        # Azure (capitalised)
        ("Validating", S.QUEUED),
        ("InProgress", S.RUNNING),
        ("In_Progress", S.RUNNING),
        ("Finalizing", S.RUNNING),
        ("Cancelling", S.CANCELLING),
        ("Completed", S.COMPLETED),
        ("Canceled", S.CANCELLED),
    ],
)
def test_status_mapping(status: str, state: ProviderBatchState) -> None:
    assert map_batch_status(status) is state


@pytest.mark.parametrize("status", ["", "unknown", "done", None, 3, ["completed"]])
def test_unknown_status_is_none(status: object) -> None:
    assert map_batch_status(status) is None


def test_status_table_covers_every_openai_status() -> None:
    openai = {
        "validating",
        "failed",
        "in_progress",
        "finalizing",
        "completed",
        "expired",
        "cancelling",
        "cancelled",
    }
    assert openai <= set(BATCH_STATUS_TABLE)
    terminal = {name for name in openai if BATCH_STATUS_TABLE[name].is_terminal}
    assert terminal == {"failed", "completed", "expired", "cancelled"}


@pytest.mark.parametrize(
    ("status", "benign"),
    [
        ("completed", True),
        ("CANCELLED", True),
        ("cancelling", True),
        ("finalizing", True),
        ("Failed", True),
        ("in_progress", False),
        ("validating", False),
        ("mystery", False),
        (None, False),
    ],
)
def test_cancel_refusal_is_benign(status: object, benign: bool) -> None:
    assert cancel_refusal_is_benign(status) is benign


# --------------------------------------------------------------------------- request counts and errors


def test_request_counts() -> None:
    batch = {"request_counts": {"total": 50, "completed": 47, "failed": 3}}
    assert parse_request_counts(batch) == RequestCounts(50, 47, 3)


@pytest.mark.parametrize(
    "batch",
    [
        {},
        {"request_counts": None},
        {"request_counts": "x"},
        {"request_counts": {"total": "5", "failed": True}},
    ],
)
def test_request_counts_tolerates_garbage(batch: dict[str, object]) -> None:
    assert parse_request_counts(batch) == RequestCounts(0, 0, 0)


def test_request_counts_partial_and_negative() -> None:
    assert parse_request_counts({"request_counts": {"total": 4.0, "completed": -2}}) == RequestCounts(4, 0, 0)


def test_batch_usage() -> None:
    usage = {
        "input_tokens": 1200, "input_tokens_details": {"cached_tokens": 200},
        "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 40}, "total_tokens": 1500,
    }  # fmt: skip
    assert parse_batch_usage({"usage": usage}) == BatchUsage(input=1200, output=300, cached=200, reasoning=40)
    assert parse_batch_usage({"usage": {"input_tokens": 5, "output_tokens": 0}}) == BatchUsage(5, 0)


@pytest.mark.parametrize(
    "batch",
    [
        {},
        {"usage": None},
        {"usage": {"input_tokens": 10}},
        {"usage": {"input_tokens": "10", "output_tokens": 3}},
        {"usage": {"input_tokens": -1, "output_tokens": 3}},
        {"usage": {"input_tokens": True, "output_tokens": 3}},
    ],
)
def test_batch_usage_absent_or_unreadable_is_none(batch: dict[str, object]) -> None:
    # No total to hold the answers' usage against: the ledger then counts what the lines say.
    assert parse_batch_usage(batch) is None


def test_failed_batch_error_summary_takes_first_few() -> None:
    data = [{"code": f"code_{i}", "message": f"bad {i}", "param": None, "line": i + 1} for i in range(5)]
    summary = batch_error_summary({"status": "failed", "errors": {"object": "list", "data": data}})
    assert summary == "code_0: bad 0 (line 1); code_1: bad 1 (line 2); code_2: bad 2 (line 3); and 2 more"


def test_error_summary_token_limit() -> None:
    entry = {"code": "token_limit_exceeded", "message": "Enqueued token limit reached", "line": None}
    summary = batch_error_summary({"errors": {"data": [entry]}})
    assert summary == "token_limit_exceeded: Enqueued token limit reached"


def test_error_summary_together_string_and_absent() -> None:
    assert batch_error_summary({"status": "FAILED", "error": "input file is invalid"}) == "input file is invalid"
    assert batch_error_summary({"errors": None}) is None
    assert batch_error_summary({"errors": {"data": ["junk", 3]}}) is None


# --------------------------------------------------------------------------- envelopes, pages, tokens


def test_unwrap_batch() -> None:
    assert unwrap_batch({"job": {"id": "b1", "status": "VALIDATING"}}) == {"id": "b1", "status": "VALIDATING"}
    plain = {"id": "batch_1", "object": "batch", "job": "ignored"}
    assert unwrap_batch(plain) is plain
    with pytest.raises(ValueError):
        unwrap_batch(["not", "an", "object"])


def test_parse_batch_page() -> None:
    page = parse_batch_page(
        {"object": "list", "data": [{"id": "b3"}, {"id": "b2"}, "junk"], "last_id": "b2", "has_more": True}
    )
    assert [b["id"] for b in page.batches] == ["b3", "b2"]
    assert page.has_more and page.last_id == "b2"
    fallback = parse_batch_page({"data": [{"id": "b9"}], "has_more": False})
    assert fallback.last_id == "b9" and not fallback.has_more
    bare = parse_batch_page([{"id": "t1"}])
    assert bare.batches == [{"id": "t1"}] and not bare.has_more
    assert parse_batch_page("nonsense").batches == []


def test_submit_token_lookup() -> None:
    meta = submit_metadata("tok-1", "shard-1")
    assert meta == {SUBMIT_TOKEN_KEY: "tok-1", SHARD_ID_KEY: "shard-1"}
    batches: list[dict[str, Any]] = [
        {"id": "a", "metadata": None},
        {"id": "b"},
        {"id": "c", "metadata": meta},
        {"id": "d", "metadata": meta},
    ]
    assert find_batch_with_token(batches, "tok-1") == batches[2]
    assert find_batch_with_token(batches, "tok-2") is None
    assert not has_submit_token({"metadata": "tok-1"}, "tok-1")


def test_error_message_from_body() -> None:
    body = msgspec.json.encode({"error": {"message": "Invalid  file\n id", "type": "x", "param": None, "code": None}})
    assert error_message_from_body(body) == "Invalid file id"
    assert error_message_from_body(b'{"error": "plain"}') == "plain"
    assert error_message_from_body(b'{"message": "other"}') == "other"
    assert error_message_from_body(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
    long = error_message_from_body(b"x" * 1000, limit=50)
    assert len(long) == 50 and long.endswith("...")


# --------------------------------------------------------------------------- line splitting


def test_line_splitter_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":') == []
    assert splitter.feed(b'1}\r\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert splitter.feed(b"") == []
    assert splitter.feed(b":3}") == []
    assert splitter.flush() == [b'{"c":3}']
    assert splitter.flush() == []


def test_line_splitter_keeps_unicode_separators_inside_lines() -> None:
    line = '{"custom_id":"x","text":"a\u2028b\u0085c"}'.encode()
    splitter = LineSplitter()
    assert splitter.feed(line + b"\n") == [line]


@given(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=10), st.data())
def test_line_splitter_any_chunking(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    splitter = LineSplitter()
    got: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(splitter.feed(stream[start:end]))
    got.extend(splitter.flush())
    assert got == [line.removesuffix(b"\r") for line in lines]


# --------------------------------------------------------------------------- output-line normalisation


def test_success_line_kept() -> None:
    raw = msgspec.json.encode(
        {
            "id": "batch_req_1",
            "custom_id": "q-1",
            "response": {"status_code": 200, "request_id": "req_1", "body": {"id": "chatcmpl-1"}},
            "error": None,
            "extra": "dropped",
        }
    )
    assert normalise_output_line(raw, "batch_1") == {
        "id": "batch_req_1",
        "custom_id": "q-1",
        "response": {"status_code": 200, "request_id": "req_1", "body": {"id": "chatcmpl-1"}},
        "error": None,
    }


def test_a_passed_through_response_is_the_providers_bytes() -> None:
    answer = b'{"status_code": 200,  "body": {"z": 1, "a": "\\u00e9"}}'
    line = b'{"custom_id": "q-1", "response": ' + answer + b"}"
    envelope = normalise_output_line(line, "batch_1", decode_response=False)
    assert bytes(envelope["response"]) == answer
    assert msgspec.json.encode(envelope["response"]) == answer  # written out unchanged, not decoded and encoded again
    with pytest.raises(MalformedResult, match="UTF-8"):
        normalise_output_line(b'{"custom_id": "q-1", "response": {"body": "\xff"}}', "b", decode_response=False)
    with_cr = normalise_output_line(b'{"custom_id": "q-1", "response": {"a":\r1}}', "b", decode_response=False)
    assert msgspec.json.encode(with_cr["response"]) == b'{"a":1}'  # a bare CR would split the line for many readers
    with pytest.raises(MalformedResult):  # decoding the answer fails: the line is skipped, not the whole file
        normalise_output_line(b'{"custom_id": "q-1", "response": {"a": 1e999}}', "b")
    text = normalise_output_line(b'{"custom_id": "q-1", "response": "text"}', "b", decode_response=False)
    assert text["response"] is None and text["error"]["code"] == "invalid_provider_output"


def test_a_line_already_in_the_envelope_is_kept_as_it_came_and_any_other_is_normalised() -> None:
    envelope = b'{"id": "batch_req_1", "custom_id": "q-1", "response": {"status_code": 200,  "body": {"z": 1}}}'
    assert normalised_output_line(envelope + b"  ", "b") == envelope
    with_null_error = envelope[:-1] + b', "error": null}'
    assert normalised_output_line(with_null_error, "b") == with_null_error
    others = [
        envelope[:-1] + b', "extra": "dropped"}',  # another key
        envelope.replace(b'"batch_req_1"', b'""'),  # no id: one is made
        envelope.replace(b'"batch_req_1"', b"7"),
        envelope[:-1] + b', "error": {"code": "x", "message": "m"}}',
        b'{"id": "r", "custom_id": "q-1", "response": null, "error": {"code": "x", "message": "m"}}',
        b'{"id": "r", "custom_id": "q-1", "response": "text"}',
        b'{"id": "r", "custom_id": "q-1", "response": {"a":\r1}}',
    ]
    for line in others:
        normalised = normalised_output_line(line, "b")
        assert normalised == msgspec.json.encode(normalise_output_line(line, "b", decode_response=False)), line
        assert b"extra" not in normalised and b"\r" not in normalised
    for line in (b'{"id": "r", "custom_id": "q-1", "response": {"body": "\xff"}}', b'{"id": "r", "response": {}}'):
        with pytest.raises(MalformedResult):
            normalised_output_line(line, "b")


def test_error_line_and_generated_id() -> None:
    raw = b'{"custom_id":"q-3","response":null,"error":{"code":"batch_expired","message":"late"}}'
    first = normalise_output_line(raw, "batch_1")
    assert first["error"] == {"code": "batch_expired", "message": "late"}
    assert first["response"] is None
    assert first["id"].startswith("batch_req_")
    assert normalise_output_line(raw, "batch_1")["id"] == first["id"]
    assert normalise_output_line(raw, "batch_2")["id"] != first["id"]


def test_string_error_and_empty_line_get_errors() -> None:
    assert normalise_output_line(b'{"custom_id":"a","error":"boom"}', "b")["error"] == {
        "code": None,
        "message": "boom",
    }
    empty = normalise_output_line(b'{"custom_id":"a","response":"not an object"}', "b")
    assert empty["response"] is None
    assert empty["error"]["code"] == "invalid_provider_output"


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b'{"id": "x"}',
        b'{"custom_id": 7}',
        b'{"custom_id": ""}',
        b"\xff\xfe",
    ],
)
def test_malformed_lines_rejected(raw: bytes) -> None:
    with pytest.raises(MalformedResult):
        normalise_output_line(raw, "batch_1")


def test_encode_line_round_trip() -> None:
    envelope = {"id": "r", "custom_id": "c\u2028", "response": None, "error": {"code": None, "message": "m"}}
    line = encode_line(envelope)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert msgspec.json.decode(line) == envelope


# --------------------------------------------------------------------------- retry-after


NOW = 1_760_000_000.0


def test_retry_after_ms_wins() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


def test_retry_after_seconds_case_insensitive() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"RETRY-AFTER": " 2.5 "}) == 2.5


def test_retry_after_http_date() -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 30, tz=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": when}, now=NOW) == pytest.approx(30.0)
    past = format_datetime(datetime.fromtimestamp(NOW - 30, tz=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=NOW) == 0.0


@pytest.mark.parametrize("value", ["", "soon", "-1", "inf", "nan", "1e3", "1_0", "\u0663", "Mon, 99 Foo"])
def test_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after_value(value, now=NOW) is None


def test_bad_ms_falls_back_to_seconds() -> None:
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0
    assert parse_retry_after({}) is None


def test_google_retry_delay() -> None:
    assert parse_google_retry_delay("1.5s") == 1.5
    assert parse_google_retry_delay("30s") == 30.0
    assert parse_google_retry_delay("30") is None
    assert parse_google_retry_delay("-3s") is None


header_names = st.sampled_from(["retry-after", "Retry-After", "retry-after-ms", "RETRY-AFTER-MS", "x-other"])


@given(st.dictionaries(header_names, st.text(max_size=40)), st.floats(0, 4e9))
def test_retry_after_never_raises(headers: dict[str, str], now: float) -> None:
    value = parse_retry_after(headers, now=now)
    assert value is None or (isinstance(value, float) and math.isfinite(value) and value >= 0.0)


@given(st.one_of(st.text(max_size=40), st.integers(-(10**400), 10**400).map(str), st.floats().map(str)))
def test_retry_after_value_never_raises(text: str) -> None:
    value = parse_retry_after_value(text, now=NOW)
    assert value is None or (isinstance(value, float) and math.isfinite(value) and value >= 0.0)


# --------------------------------------------------------------------------- synchronous answers


def _redact(text: str) -> str:
    return text.replace("https://example.test/keys", "<prov>")


def test_a_synchronous_answer_nested_too_deeply_becomes_a_server_error_line() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    line = msgspec.json.decode(sync_output_line("a", 200, deep, "req_1", _redact))
    assert line["response"]["body"]["error"]["type"] == "server_error"
    assert line["response"]["body"]["error"]["message"].startswith("HTTP 200: [[[")


def test_sync_output_line_cleans_only_error_text() -> None:
    ok = {"id": "chatcmpl-1", "choices": [{"message": {"content": "see https://example.test/keys"}}]}
    line = msgspec.json.decode(sync_output_line("a", 200, msgspec.json.encode(ok), "req_1", _redact))
    assert line == {
        "id": "", "custom_id": "a", "error": None,
        "response": {"status_code": 200, "request_id": "req_1", "body": ok},
    }  # fmt: skip
    error = {"message": "bad model, see https://example.test/keys", "type": "x", "param": None, "code": "c"}
    body = msgspec.json.decode(sync_output_line("b", 400, msgspec.json.encode({"error": error}), None, _redact))
    assert body["response"]["request_id"] == ""
    assert body["response"]["body"]["error"] == {**error, "message": "bad model, see <prov>"}
    plain = msgspec.json.decode(sync_output_line("c", 422, b'{"detail": "https://example.test/keys"}', None, _redact))
    assert plain["response"]["body"] == {"detail": "<prov>"}
    text = msgspec.json.decode(sync_output_line("d", 502, b"<html>https://example.test/keys</html>", None, _redact))
    wrapped = text["response"]["body"]["error"]
    assert wrapped["type"] == "server_error" and wrapped["message"] == "HTTP 502: <html><prov></html>"


@pytest.mark.parametrize(
    ("batch", "share"),
    [({"progress": 37.5}, 0.375), ({"progress": 100}, 1.0), ({"progress": 140}, 1.0), ({"progress": -3}, 0.0),
     ({"progress": "40"}, None), ({"progress": True}, None), ({"progress": float("nan")}, None), ({}, None)],
)  # fmt: skip
def test_togethers_percentage_is_read_as_a_share_of_the_requests(batch: dict[str, object], share: float | None) -> None:
    assert parse_progress(batch) == share
