"""Anthropic Messages params -> OpenAI chat bodies, and OpenAI result lines -> Anthropic result lines."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.translate import TranslationError
from gateway.translate.anthropic_clients import check_custom_id, output_to_result, params_to_chat


def test_a_tool_conversation_becomes_openai_messages_in_order() -> None:
    params = {
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools.", "cache_control": {}}],
        "tools": [{"name": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "messages": [
            {"role": "user", "content": "Lima?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Lima"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "Sunny"}]},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}},
                {"type": "text", "text": "And this?"},
            ]},
        ],
    }  # fmt: skip
    body = params_to_chat(params)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief.\n\nUse tools."},
        {"role": "user", "content": "Lima?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Lima"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Sunny"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA="}},
            {"type": "text", "text": "And this?"}]},
    ]  # fmt: skip
    assert body["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert body["parallel_tool_calls"] is False
    assert (body["stop"], body["user"], body["max_tokens"]) == (["END"], "u-1", 10)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": 3}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinking"),
        ({"stream": True}, "stream"),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "messages[0].content[0]"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"surprise": 1}, "surprise"),
        ({"tool_choice": {"type": ["auto"]}}, "tool_choice"),
        ({"temperature": 1.5}, "temperature"),  # OpenAI's range (to 2), not Anthropic's (to 1)
        ({"top_p": -0.1}, "top_p"),
    ],
)
def test_what_would_change_the_answer_is_refused_naming_the_field(change: dict[str, Any], param: str) -> None:
    params = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]} | change
    with pytest.raises(TranslationError) as refused:
        params_to_chat({k: v for k, v in params.items() if v is not None})
    assert refused.value.param == param


def test_dropped_params_do_not_refuse() -> None:
    params = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "service_tier": "auto"}
    assert "service_tier" not in params_to_chat(params | {"thinking": {"type": "disabled"}, "stream": False})


def test_a_succeeded_line_becomes_a_message_with_cache_split_out() -> None:
    body = {
        "id": "chatcmpl-1", "model": "gpt-4o-mini",
        "choices": [{"message": {"role": "assistant", "content": "Hi", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60}},
    }  # fmt: skip
    line = {"id": "batch_req_1", "custom_id": "c", "response": {"status_code": 200, "body": body}, "error": None}
    result = output_to_result(line)
    message = result["result"]["message"]
    assert result["result"]["type"] == "succeeded" and message["id"].startswith("msg_")
    assert message["content"] == [
        {"type": "text", "text": "Hi"},
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {
        "input_tokens": 40, "output_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 60
    }  # fmt: skip


@pytest.mark.parametrize(
    ("choice_stop_reason", "stop_reason", "stop_sequence"),
    [("END", "stop_sequence", "END"), (None, "end_turn", None), (128001, "end_turn", None)],
)
def test_a_named_stop_string_reads_back_as_the_stop_sequence(
    choice_stop_reason: Any, stop_reason: str, stop_sequence: str | None
) -> None:
    # A string is the stop sequence that ended the reply (Anthropic's, kept, or vLLM's); a number is a token id.
    choice = {"message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
    body = {"id": "chatcmpl-1", "model": "m", "choices": [choice | {"stop_reason": choice_stop_reason}], "usage": {}}
    line = {"id": "batch_req_1", "custom_id": "c", "response": {"status_code": 200, "body": body}, "error": None}
    message = output_to_result(line)["result"]["message"]
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, stop_sequence)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"response": {"status_code": 429, "body": {"error": {"message": "slow"}}}}, ("errored", "rate_limit_error")),
        ({"response": {"status_code": 400, "body": {}}}, ("errored", "invalid_request_error")),
        ({"error": {"code": "batch_cancelled", "message": "x"}}, ("canceled", None)),
        ({"error": {"code": "batch_expired", "message": "x"}}, ("expired", None)),
        ({"error": {"code": "result_lost", "message": "gone"}}, ("errored", "api_error")),
    ],
)
def test_failed_lines_map_to_anthropic_result_types(line: dict[str, Any], expected: tuple[str, str | None]) -> None:
    result = output_to_result({"custom_id": "c", **line})["result"]
    kind = result["error"]["error"]["type"] if result["type"] == "errored" else None
    assert (result["type"], kind) == expected


def test_custom_ids_follow_anthropic_rules() -> None:
    seen: set[str] = set()
    assert check_custom_id("ok_id-1", seen, 0) == "ok_id-1"
    for bad in ("ok_id-1", "has space", "x" * 65, "", 5):
        with pytest.raises(TranslationError):
            check_custom_id(bad, seen, 1)
