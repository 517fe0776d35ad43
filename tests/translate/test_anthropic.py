"""OpenAI chat completions <-> Anthropic Messages translation, both directions."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionMessageFunctionToolCall

from gateway.simulator.anthropic_protocol import simulate_message
from gateway.simulator.openai_protocol import chat_completion
from gateway.translate import MalformedResult, TranslationError
from gateway.translate.anthropic import (
    DEFAULT_MAX_TOKENS,
    chat_to_messages,
    error_to_openai,
    message_to_chat,
    result_to_envelope,
    translation_error_response,
)

MODEL = "claude-haiku-4-5"


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def message(*blocks: dict[str, Any], stop_reason: str = "end_turn", **usage: Any) -> dict[str, Any]:
    return {
        "id": "msg_01Ab", "type": "message", "role": "assistant", "model": MODEL, "content": list(blocks),
        "stop_reason": stop_reason, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 4, **usage},
    }  # fmt: skip


# --- requests ------------------------------------------------------------------------------------------


def test_system_and_developer_messages_become_top_level_system() -> None:
    params = chat_to_messages(
        chat(
            {"role": "system", "content": "Be terse."},
            {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
            user("Hi"),
        )
    )
    assert params == {
        "model": MODEL, "max_tokens": DEFAULT_MAX_TOKENS, "system": "Be terse.\n\nNo emoji.",
        "messages": [{"role": "user", "content": "Hi"}],
    }  # fmt: skip


def test_max_tokens_default_and_explicit_values() -> None:
    assert chat_to_messages(chat(user("x")))["max_tokens"] == DEFAULT_MAX_TOKENS
    assert chat_to_messages(chat(user("x")), default_max_tokens=77)["max_tokens"] == 77
    assert chat_to_messages(chat(user("x"), max_tokens=12))["max_tokens"] == 12
    assert chat_to_messages(chat(user("x"), max_tokens=12, max_completion_tokens=9))["max_tokens"] == 9
    with pytest.raises(TranslationError) as caught:
        chat_to_messages(chat(user("x"), max_tokens=0))
    assert caught.value.param == "max_tokens"


def test_multi_turn_sampling_stop_and_user() -> None:
    params = chat_to_messages(
        chat(user("a"), {"role": "assistant", "content": "b"}, user("c"), temperature=1.7, top_p=0.9, stop="END",
             user="client-7", seed=3, n=1, stream=False)
    )  # fmt: skip
    assert params["messages"] == [user("a"), {"role": "assistant", "content": "b"}, user("c")]
    assert (params["temperature"], params["top_p"], params["stop_sequences"]) == (1.0, 0.9, ["END"])
    assert params["metadata"] == {"user_id": "client-7"}
    assert "seed" not in params and "n" not in params
    assert chat_to_messages(chat(user("a"), stop=["x", "y"], temperature=-1))["stop_sequences"] == ["x", "y"]
    assert chat_to_messages(chat(user("a"), temperature=-1))["temperature"] == 0.0


def test_images_by_url_and_data_url() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    blocks = chat_to_messages(chat(user(parts)))["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
    ]
    with pytest.raises(TranslationError, match="image/tiff"):
        chat_to_messages(chat(user([{"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AA=="}}])))


def test_tools_tool_choice_and_tool_round_trip() -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}},
        }
    ]
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Lima"}'}}
    call2 = {**call, "id": "call_2", "function": {"name": "weather", "arguments": "{}"}}
    body = chat(
        user("Weather in Lima and Quito?"),
        {"role": "assistant", "content": "Checking.", "tool_calls": [call, call2]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
        user("Thanks"),
        tools=tools, tool_choice={"type": "function", "function": {"name": "weather"}}, parallel_tool_calls=False,
    )  # fmt: skip
    params = chat_to_messages(body)
    assert params["tools"] == [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}]
    assert params["tool_choice"] == {"type": "tool", "name": "weather", "disable_parallel_tool_use": True}
    assert params["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Lima"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}},
        ],
    }
    assert params["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
        ],
    }
    assert params["messages"][3] == user("Thanks")
    for choice, expected in (("auto", "auto"), ("required", "any"), ("none", "none")):
        assert chat_to_messages({**body, "tool_choice": choice, "parallel_tool_calls": None})["tool_choice"] == {
            "type": expected
        }
    assert chat_to_messages({**body, "tool_choice": None})["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }


def test_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}
    assert chat_to_messages(chat(user("x"), response_format=fmt))["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    assert "output_config" not in chat_to_messages(chat(user("x"), response_format={"type": "text"}))


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"stream": True}, "stream"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tool_choice": {"type": "allowed_tools"}}, "tool_choice"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [user([{"type": "input_audio", "input_audio": {}}])]}, "messages[0].content[0]"),
        ({"messages": []}, "messages"),
    ],
)
def test_semantics_changing_fields_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as caught:
        chat_to_messages({**chat(user("x")), **fields})
    assert caught.value.param == param
    response = translation_error_response(caught.value)
    assert response["status_code"] == 400
    assert response["body"]["error"]["type"] == "invalid_request_error"
    assert response["body"]["error"]["param"] == param


def test_bad_tool_call_arguments_are_refused() -> None:
    bad = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    with pytest.raises(TranslationError, match="not valid JSON"):
        chat_to_messages(chat(user("x"), {"role": "assistant", "content": None, "tool_calls": [bad]}))


# --- responses -----------------------------------------------------------------------------------------


def test_message_to_chat_completion_validates_in_the_openai_sdk() -> None:
    body = message(
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "Lima"},
        {"type": "text", "text": " is the capital."},
        stop_reason="stop_sequence",
        cache_creation_input_tokens=5,
        cache_read_input_tokens=7,
        output_tokens_details={"thinking_tokens": 2},
    )
    completion = message_to_chat(body, created=1_760_000_000)
    parsed = ChatCompletion.model_validate(completion, strict=True)
    assert parsed.id == "msg_01Ab" and parsed.created == 1_760_000_000 and parsed.model == MODEL
    assert parsed.choices[0].message.content == "Lima is the capital."
    assert parsed.choices[0].finish_reason == "stop"
    assert completion["usage"] == {
        "prompt_tokens": 22, "completion_tokens": 4, "total_tokens": 26,
        "prompt_tokens_details": {"cached_tokens": 7, "cache_write_tokens": 5},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
     ("refusal", "content_filter"), ("model_context_window_exceeded", "length"), ("pause_turn", "stop")],
)  # fmt: skip
def test_finish_reason_table(stop_reason: str, finish: str) -> None:
    completion = message_to_chat(message({"type": "text", "text": "x"}, stop_reason=stop_reason), created=1)
    assert completion["choices"][0]["finish_reason"] == finish


def test_the_stop_sequence_that_ended_a_reply_is_kept_on_its_choice() -> None:
    body = message({"type": "text", "text": "Lima"}, stop_reason="stop_sequence") | {"stop_sequence": "END"}
    completion = message_to_chat(body, created=1)
    choice = ChatCompletion.model_validate(completion, strict=True).choices[0]
    assert choice.finish_reason == "stop" and completion["choices"][0]["stop_reason"] == "END"
    ended = message_to_chat(message({"type": "text", "text": "Lima"}), created=1)
    assert "stop_reason" not in ended["choices"][0]


def test_tool_use_becomes_tool_calls() -> None:
    body = message(
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Lima"}}, stop_reason="tool_use"
    )
    completion = message_to_chat(body, created=1)
    parsed = ChatCompletion.model_validate(completion, strict=True).choices[0]
    assert parsed.message.content is None and parsed.finish_reason == "tool_calls"
    assert parsed.message.tool_calls is not None
    call = parsed.message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert (call.id, call.function.name, msgspec.json.decode(call.function.arguments)) == (
        "toolu_1",
        "weather",
        {"city": "Lima"},
    )


@pytest.mark.parametrize(
    ("kind", "status", "openai_type"),
    [("invalid_request_error", 400, "invalid_request_error"), ("authentication_error", 401, "authentication_error"),
     ("permission_error", 403, "permission_error"), ("not_found_error", 404, "not_found_error"),
     ("rate_limit_error", 429, "rate_limit_error"), ("api_error", 500, "server_error"),
     ("overloaded_error", 529, "server_error"), ("something_new", 500, "something_new")],
)  # fmt: skip
def test_errored_results_become_error_lines(kind: str, status: int, openai_type: str) -> None:
    error = {"type": "error", "error": {"type": kind, "message": "nope"}, "request_id": "req_9"}
    line = result_to_envelope(
        {"type": "errored", "error": error}, custom_id="a b", line_id="l", request_id="r", created=1
    )
    assert line["custom_id"] == "a b" and line["error"] is None
    assert line["response"] == {
        "status_code": status, "request_id": "req_9",
        "body": {"error": {"message": "nope", "type": openai_type, "param": None, "code": kind}},
    }  # fmt: skip
    assert error_to_openai(None)["status_code"] == 500


def test_unfinished_results_and_malformed_ones() -> None:
    expired = result_to_envelope({"type": "expired"}, custom_id="a", line_id="l", request_id="r", created=1)
    canceled = result_to_envelope({"type": "canceled"}, custom_id="a", line_id="l", request_id="r", created=1)
    assert expired["response"] is None and expired["error"]["code"] == "batch_expired"
    assert canceled["response"] is None and canceled["error"]["code"] == "batch_cancelled"
    for result in ({"type": "weird"}, None, {"type": "succeeded", "message": {"content": []}}):
        with pytest.raises(MalformedResult):
            result_to_envelope(result, custom_id="a", line_id="l", request_id="r", created=1)


# --- properties: the text and the token counts survive both directions ---------------------------------

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)
turns = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), texts), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    turns,
    st.one_of(st.none(), texts),
    st.lists(st.text(min_size=1, max_size=4), max_size=3),
    st.one_of(st.none(), st.integers(1, 60)),
)
def test_request_and_response_keep_text_and_tokens(
    conversation: list[tuple[str, str]], system: str | None, stops: list[str], max_tokens: int | None
) -> None:
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": role, "content": text} for role, text in conversation
    ]
    body = {"model": MODEL, "messages": messages, "stop": stops, **({"max_tokens": max_tokens} if max_tokens else {})}
    params = chat_to_messages(body)
    sent = [params.get("system")] + [m["content"] for m in params["messages"]]
    assert [t for t in sent if t is not None] == [m["content"] for m in messages]
    # The Anthropic emulator answers through the translation exactly as the OpenAI emulator answers directly.
    back = message_to_chat(simulate_message(params, [MODEL], "msg_x"), created=1)
    direct = chat_completion(body, [MODEL], "c", 1)
    assert back["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    assert back["choices"][0]["finish_reason"] == direct["choices"][0]["finish_reason"]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert back["usage"][key] == direct["usage"][key]


@given(
    st.lists(texts, min_size=1, max_size=4),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_response_keeps_text_and_token_counts(parts: list[str], inp: int, out: int, created: int, read: int) -> None:
    blocks = [{"type": "text", "text": part} for part in parts]
    body = message(
        *blocks, input_tokens=inp, output_tokens=out, cache_creation_input_tokens=created, cache_read_input_tokens=read
    )
    usage = message_to_chat(body, created=1)["usage"]
    assert message_to_chat(body, created=1)["choices"][0]["message"]["content"] == "".join(parts)
    assert usage["prompt_tokens"] == inp + created + read and usage["completion_tokens"] == out
    assert (
        usage["total_tokens"] == inp + created + read + out and usage["prompt_tokens_details"]["cached_tokens"] == read
    )
