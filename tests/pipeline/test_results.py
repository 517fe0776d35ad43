"""Result lines are decoded only as far as collection needs; the answer itself stays the provider's bytes."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from gateway.pipeline.results import TokenUsage, Usage, billed_usage, decode_result, encoder, retryable

ANSWER = (
    b'{"status_code": 200, "request_id": "req_1", "body": {"id": "c-1", "service_tier": "flex", '
    b'"choices": [{"message": {"content": "caf\\u00e9 \xe2\x98\x95"}}], '
    b'"usage": {"prompt_tokens": 12, "completion_tokens": 3}}}'
)


def test_an_answer_is_read_for_status_usage_and_tier_and_kept_as_its_bytes() -> None:
    item = decode_result(b'{"custom_id": "q-1", "response": ' + ANSWER + b', "error": null, "billed_usd": 0.5}')
    assert (item.custom_id, item.status_code, item.ok, item.billed_usd) == ("q-1", 200, True, 0.5)
    assert item.body is not None
    assert item.body.usage == TokenUsage(prompt_tokens=12, completion_tokens=3)
    assert item.body.service_tier == "flex"
    assert item.response is not None and bytes(item.response) == ANSWER
    line = encoder.encode({"custom_id": item.custom_id, "response": item.response})
    assert line == b'{"custom_id":"q-1","response":' + ANSWER + b"}"
    assert msgspec.json.decode(line)["response"]["body"]["choices"][0]["message"]["content"] == "caf\u00e9 \u2615"


def test_an_error_line_has_no_response_and_is_not_ok() -> None:
    item = decode_result(b'{"custom_id": "q-2", "response": null, "error": {"code": "x", "message": "m"}}')
    assert (item.response, item.status_code, item.body, item.ok) == (None, None, None, False)
    assert item.error == {"code": "x", "message": "m"}


def test_a_non_2xx_answer_or_a_body_that_is_not_an_object() -> None:
    failed = decode_result(b'{"custom_id": "q", "response": {"status_code": 429, "body": {"error": {}}}}')
    assert (failed.status_code, failed.ok) == (429, False)
    text = decode_result(b'{"custom_id": "q", "response": {"status_code": 200, "body": "plain text"}}')
    assert (text.ok, text.body) == (True, None)


def test_usage_counts_written_as_floats_or_strings_still_count_and_nonsense_counts_zero() -> None:
    def counted(usage: bytes) -> dict[str, int]:
        item = decode_result(b'{"custom_id": "q", "response": {"status_code": 200, "body": {"usage": ' + usage + b"}}}")
        totals = Usage()
        totals.add(item.body)
        return totals.as_dict()

    typed = counted(
        b'{"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4, '
        b'"cache_write_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}}'
    )
    loose = counted(
        b'{"prompt_tokens": 12.0, "completion_tokens": "3", "prompt_tokens_details": {"cached_tokens": "4", '
        b'"cache_write_tokens": 2.9}, "completion_tokens_details": {"reasoning_tokens": 1}}'
    )
    expected = {"input": 12, "output": 3, "cached": 4, "cache_write": 2, "reasoning": 1}
    assert {key: typed[key] for key in expected} == expected
    assert {key: loose[key] for key in expected} == expected
    assert counted(b'{"prompt_tokens": "1e3", "completion_tokens": -5}')["input"] == 1000
    assert counted(b'{"prompt_tokens": "1e3", "completion_tokens": -5}')["output"] == 0  # never lowers a count
    nonsense = counted(b'{"prompt_tokens": {}, "completion_tokens": "many", "prompt_tokens_details": [1], '
                       b'"completion_tokens_details": {"reasoning_tokens": true}}')  # fmt: skip
    assert {key: nonsense[key] for key in expected} == dict.fromkeys(expected, 0)
    assert counted(b'"not an object"')["input"] == 0 and counted(b"null")["input"] == 0


@pytest.mark.parametrize(
    "line",
    [
        b"[1]",
        b'{"custom_id": "q", "response": "text"}',
        b'{"custom_id": "q", "response": {"status_code": 200, "body": {"usage": 01}}}',
        b'{"custom_id": "q", "error": "a string"}',
        b'{"custom_id": "q", "response": {"status_code": 200}',
        b'{"custom_id": "q", "response": {"status_code": 200, "body": "\xff"}}',
        b'{"custom_id": "q", "response": {"status_code": 200, "body": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    ],
)
def test_unreadable_lines_raise(line: bytes) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
        decode_result(line)


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (429, None, True),
        (500, None, True),
        (503, None, True),
        (408, None, True),
        (400, None, False),
        (401, None, False),
        (404, None, False),
        (None, {"code": "batch_expired"}, True),
        (None, {"code": "server_error"}, True),
        (None, {"code": "invalid_request"}, False),
        (None, None, False),
    ],
)
def test_retryable(status: int | None, error: dict[str, str] | None, expected: bool) -> None:
    assert retryable(status, error) is expected


def test_billed_usage_of_lines_as_sent_reads_them_as_normalised_and_trusts_no_charge(tmp_path: Path) -> None:
    answer = '{"status_code": 200, "body": {"usage": {"prompt_tokens": 10, "completion_tokens": 4}}}'
    lines = [
        f'{{"custom_id": "a", "response": {answer}, "billed_usd": 0.5}}',
        f'{{"custom_id": "b", "response": {answer}, "error": ""}}',  # an empty error is no error once normalised
        f'{{"custom_id": "a", "response": {answer}}}',  # a repeat counts once
        '{"custom_id": "c", "response": "text"}',
        "not json",
    ]
    path = tmp_path / "raw.jsonl"
    path.write_text("\n".join(lines) + "\n")
    usage = billed_usage(path, as_sent=True)
    assert (usage.requests, usage.input, usage.output, usage.billed_usd) == (2, 20, 8, 0.0)
    trusted = billed_usage(path)
    assert (trusted.requests, trusted.billed_usd) == (1, 0.5)  # envelopes: the charge counts; "b" is unreadable
