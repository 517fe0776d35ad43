"""OpenAI chat <-> Gemini generateContent translation, both directions, with property tests."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.simulator.gemini_protocol import generate_content
from gateway.simulator.openai_protocol import chat_completion
from gateway.translate import TranslationError
from gateway.translate.gemini import (
    chat_to_gemini,
    gemini_to_chat,
    google_error,
    usage_to_openai,
)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def to_chat(response: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return gemini_to_chat(response, **{"model": "gemini-x", "created": 7, "fallback_id": "chatcmpl-fb", **kwargs})


# --------------------------------------------------------------------------- requests


def test_roles_system_and_merging() -> None:
    request = chat_to_gemini(
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                user("first"),
                user("second"),
                {"role": "assistant", "content": "answer"},
                {"role": "user", "content": ""},
                user("third"),
            ]
        }
    )
    assert request["systemInstruction"] == {"parts": [{"text": "Be terse."}, {"text": "No emoji."}]}
    assert request["contents"] == [
        {"role": "user", "parts": [{"text": "first"}, {"text": "second"}]},
        {"role": "model", "parts": [{"text": "answer"}]},
        {"role": "user", "parts": [{"text": "third"}]},
    ]
    assert "generationConfig" not in request and "tools" not in request


def test_images_audio_and_files() -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.WEBP?size=2"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/photo"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
    ]
    parts = chat_to_gemini({"messages": [{"role": "user", "content": content}]})["contents"][0]["parts"]
    assert parts == [
        {"text": "look"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.com/cat.WEBP?size=2", "mimeType": "image/webp"}},
        {"fileData": {"fileUri": "https://example.com/photo", "mimeType": "image/jpeg"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


def test_generation_config() -> None:
    body = {
        "messages": [user("hi")],
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "temperature": 0.3,
        "top_p": 0.9,
        "n": 2,
        "seed": 42,
        "presence_penalty": 0.1,
        "frequency_penalty": -0.2,
        "stop": "END",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "user": "someone",
        "store": False,
    }
    assert chat_to_gemini(body)["generationConfig"] == {
        "maxOutputTokens": 20,
        "temperature": 0.3,
        "topP": 0.9,
        "candidateCount": 2,
        "seed": 42,
        "presencePenalty": 0.1,
        "frequencyPenalty": -0.2,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }
    config = chat_to_gemini({"messages": [user("x")], "max_tokens": 5, "stop": ["a", "b"]})["generationConfig"]
    assert config == {"maxOutputTokens": 5, "stopSequences": ["a", "b"]}
    json_object = chat_to_gemini({"messages": [user("x")], "response_format": {"type": "json_object"}})
    assert json_object["generationConfig"] == {"responseMimeType": "application/json"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        ("none", {"mode": "NONE"}),
        ({"type": "function", "function": {"name": "f"}}, {"mode": "ANY", "allowedFunctionNames": ["f"]}),
    ],
)
def test_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    request = chat_to_gemini({"messages": [user("x")], "tools": tools, "tool_choice": choice})
    assert request["tools"] == [
        {"functionDeclarations": [{"name": "f", "description": "d", "parameters": {"type": "object"}}]}
    ]
    assert request["toolConfig"] == {"functionCallingConfig": expected}


def test_tool_calls_and_results() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Lima"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": ""}},
    ]
    request = chat_to_gemini(
        {
            "messages": [
                user("weather and time in Lima?"),
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
                {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
            ]
        }
    )
    assert request["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Lima"}}},
                {"functionCall": {"name": "time", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "time", "response": {"output": "noon"}}},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "critic", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": "x"}]}]}, None),
        ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "messages[0].tool_call_id"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"messages": [user("x")], "tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"messages": [user("x")], "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [user("x")], "response_format": {"type": "grammar"}}, "response_format"),
        ({"messages": [user("x")], "stop": 5}, "stop"),
    ],
)
def test_untranslatable_requests(body: dict[str, Any], param: str | None) -> None:
    with pytest.raises(TranslationError) as info:
        chat_to_gemini(body)
    if param is not None:
        assert info.value.param == param


# --------------------------------------------------------------------------- responses


def test_response_text_skips_thoughts_and_maps_usage() -> None:
    response = {
        "responseId": "r-1",
        "modelVersion": "gemini-2.5-flash-001",
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "plan", "thought": True}, {"text": "Li"}, {"text": "ma"}],
                },
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "toolUsePromptTokenCount": 2,
            "candidatesTokenCount": 3,
            "thoughtsTokenCount": 5,
            "cachedContentTokenCount": 4,
            "totalTokenCount": 20,
        },
    }
    body = to_chat(response)
    assert body["id"] == "chatcmpl-r-1" and body["model"] == "gemini-2.5-flash-001" and body["created"] == 7
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Lima", "refusal": None}, "logprobs": None,
         "finish_reason": "stop"}
    ]  # fmt: skip
    assert body["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 8,
        "total_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 5},
    }


def test_response_tool_calls() -> None:
    parts = [
        {"functionCall": {"name": "weather", "args": {"city": "Lima"}}},
        {"functionCall": {"id": "g1", "name": "t"}},
    ]
    body = to_chat({"candidates": [{"content": {"parts": parts}, "finishReason": "STOP"}]})
    assert body["id"] == "chatcmpl-fb" and body["model"] == "gemini-x"
    message = body["choices"][0]["message"]
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    first, second = message["tool_calls"]
    assert first["id"].startswith("call_") and second["id"] == "g1"
    assert first["function"] == {"name": "weather", "arguments": '{"city":"Lima"}'}
    assert msgspec.json.decode(second["function"]["arguments"]) == {}
    assert (
        to_chat({"candidates": [{"content": {"parts": parts}}]})["choices"][0]["message"]["tool_calls"][0]["id"]
        == first["id"]
    )


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"), ("IMAGE_OTHER", "content_filter"), ("OTHER", "stop"),
        ("LANGUAGE", "stop"), (None, "stop"),
    ],
)  # fmt: skip
def test_finish_reasons(reason: str | None, expected: str) -> None:
    candidate = {"content": {"parts": [{"text": "x"}]}, "finishReason": reason}
    assert to_chat({"candidates": [candidate]})["choices"][0]["finish_reason"] == expected


def test_blocked_prompt_and_several_candidates() -> None:
    blocked = to_chat({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 4}})
    assert blocked["choices"][0]["finish_reason"] == "content_filter"
    assert blocked["choices"][0]["message"]["content"] is None
    assert blocked["usage"]["prompt_tokens"] == 4 and blocked["usage"]["total_tokens"] == 4
    two = to_chat({"candidates": [{"content": {"parts": [{"text": t}]}, "index": i} for i, t in enumerate("ab")]})
    assert [(c["index"], c["message"]["content"]) for c in two["choices"]] == [(0, "a"), (1, "b")]


def test_usage_tolerates_missing_and_string_counts() -> None:
    assert usage_to_openai(None)["total_tokens"] == 0
    usage = usage_to_openai({"promptTokenCount": "7", "candidatesTokenCount": 3})
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (7, 3, 10)


@pytest.mark.parametrize(
    ("status", "http", "kind", "code"),
    [
        ({"code": 3, "message": "bad"}, 400, "invalid_request_error", "invalid_argument"),
        ({"code": 7, "message": "no"}, 403, "permission_error", "permission_denied"),
        ({"code": 5, "message": "gone"}, 404, "invalid_request_error", "not_found"),
        ({"code": 8, "message": "slow down"}, 429, "rate_limit_error", "resource_exhausted"),
        ({"code": 13, "message": "oops"}, 500, "server_error", "internal"),
        ({"code": 14, "message": "later"}, 503, "server_error", "unavailable"),
        ({"code": 4, "message": "late"}, 504, "server_error", "deadline_exceeded"),
        (
            {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"},
            400,
            "invalid_request_error",
            "invalid_argument",
        ),
        ({"code": 503, "message": "x"}, 503, "server_error", "unavailable"),
        ({"status": "RESOURCE_EXHAUSTED"}, 429, "rate_limit_error", "resource_exhausted"),
    ],
)
def test_google_errors(status: dict[str, Any], http: int, kind: str, code: str) -> None:
    got_http, body = google_error(status)
    assert got_http == http
    assert body["error"]["type"] == kind and body["error"]["code"] == code and body["error"]["param"] is None
    assert body["error"]["message"] == status.get("message", status.get("status"))


# --------------------------------------------------------------------------- properties

texts = st.text(min_size=1, max_size=60)
turns = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), texts), min_size=1, max_size=6)


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    systems = draw(st.lists(texts, max_size=2))
    conversation = [*draw(turns), ("user", draw(texts))]
    messages = [{"role": "system", "content": s} for s in systems]
    messages += [{"role": role, "content": text} for role, text in conversation]
    body: dict[str, Any] = {"model": "m", "messages": messages}
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 40))
    if draw(st.booleans()):
        body["stop"] = draw(st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=3))
    if draw(st.booleans()):
        body["n"] = draw(st.integers(1, 3))
    return body


@settings(max_examples=150, deadline=None)
@given(chat_bodies())
def test_request_keeps_every_text_in_order(body: dict[str, Any]) -> None:
    request = chat_to_gemini(body)
    system = [m["content"] for m in body["messages"] if m["role"] == "system"]
    others = [(m["role"], m["content"]) for m in body["messages"] if m["role"] != "system"]
    assert [p["text"] for p in request.get("systemInstruction", {}).get("parts", [])] == system
    flat = [
        ({"model": "assistant"}.get(c["role"], c["role"]), p["text"]) for c in request["contents"] for p in c["parts"]
    ]
    assert flat == others
    roles = [c["role"] for c in request["contents"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), "adjacent turns of one role are merged"


@settings(max_examples=150, deadline=None)
@given(chat_bodies())
def test_round_trip_agrees_with_the_openai_answer(body: dict[str, Any]) -> None:
    """Translate, answer as Gemini, translate back: the same text, finish and tokens as OpenAI would give."""
    direct = chat_completion(body, ["m"], "id", 0)
    answer = generate_content(chat_to_gemini(body), "m", "resp")
    back = to_chat(answer)
    assert [c["message"]["content"] for c in back["choices"]] == [c["message"]["content"] for c in direct["choices"]]
    assert [c["finish_reason"] for c in back["choices"]] == [c["finish_reason"] for c in direct["choices"]]
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert back["usage"][key] == direct["usage"][key]


parts = st.lists(st.tuples(texts, st.booleans()), max_size=5)
counts = st.integers(0, 10**6)


@settings(max_examples=150, deadline=None)
@given(parts, counts, counts, counts, counts)
def test_response_keeps_text_and_token_counts(
    pieces: list[tuple[str, bool]], prompt: int, output: int, thoughts: int, tool: int
) -> None:
    response = {
        "candidates": [{"content": {"parts": [{"text": t, "thought": th} for t, th in pieces]}}],
        "usageMetadata": {
            "promptTokenCount": prompt, "candidatesTokenCount": output, "thoughtsTokenCount": thoughts,
            "toolUsePromptTokenCount": tool, "totalTokenCount": prompt + output + thoughts + tool,
        },
    }  # fmt: skip
    body = to_chat(response)
    assert body["choices"][0]["message"]["content"] == "".join(t for t, thought in pieces if not thought)
    usage = body["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt + tool, output + thoughts)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == thoughts
