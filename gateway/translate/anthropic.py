"""OpenAI chat completions <-> Anthropic Messages, both directions, without I/O.

Over 400 lines on purpose: both directions of one mapping, so each field's way in and way out read side by side.

Requests: :func:`chat_to_messages` turns an OpenAI ``/v1/chat/completions`` body into Anthropic Messages
``params``; a field that would silently change the answer if dropped raises :class:`TranslationError`,
which the adapter turns into that request's OpenAI-format 400 line. Results: :func:`result_to_envelope`
turns one Anthropic batch result into an OpenAI output line. ``custom_id``s outside Anthropic's
``^[a-zA-Z0-9_-]{1,64}$`` are replaced and recovered by :mod:`gateway.translate.custom_ids`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.translate import MalformedResult, TranslationError, optional_number

DEFAULT_MAX_TOKENS = 4096
"""``max_tokens`` sent when the client set neither ``max_tokens`` nor ``max_completion_tokens``."""

# --- tables ------------------------------------------------------------------------------------------

SYSTEM_ROLES = frozenset({"system", "developer"})
TOOL_CHOICE_TABLE: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": {"type": "none"},
}
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
TRANSLATED_FIELDS = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p", "tools",
     "tool_choice", "parallel_tool_calls", "user", "safety_identifier", "response_format"}
)  # fmt: skip
IGNORED_FIELDS = frozenset(
    {"seed", "store", "metadata", "service_tier", "prompt_cache_key", "stream_options", "prediction"}
)
"""OpenAI fields dropped because they do not change the answer (or are best-effort hints only)."""
SERVICE_TIERS: dict[str, str] = {"priority": "auto", "standard": "standard_only", "flex": "standard_only"}
"""The tier a synchronous request was placed at -> Anthropic ``service_tier``: ``auto`` takes Priority Tier
capacity where the organisation has some; anything else asks for the standard tier only (Anthropic has no
flex), so no request is served, and billed, at a tier it was not placed at. Batch requests send none."""
SERVED_TIERS: dict[str, str] = {"standard": "default", "priority": "priority"}
"""Anthropic ``usage.service_tier`` -> OpenAI ``service_tier``; ``batch`` (a Message Batch's) has no OpenAI value."""
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (1,), "stream": (False,), "logprobs": (False,), "presence_penalty": (0,), "frequency_penalty": (0,),
    "logit_bias": ({},), "modalities": (["text"],),
}  # fmt: skip
"""OpenAI fields Anthropic lacks, accepted only with the value that means "feature off"; any other field is refused."""
FINISH_REASON_TABLE: dict[str, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}  # fmt: skip
ERROR_STATUS_TABLE: dict[str, int] = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "conflict_error": 409, "request_too_large": 413, "rate_limit_error": 429,
    "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
}  # fmt: skip
"""HTTP status of an ``errored`` result, by Anthropic error type; unknown types count as 500."""
OPENAI_ERROR_TYPE: dict[str, str] = {
    "api_error": "server_error",
    "overloaded_error": "server_error",
    "timeout_error": "server_error",
}
"""OpenAI ``error.type`` for Anthropic types OpenAI names differently; others keep their name (and go in ``code``)."""
UNFINISHED_TABLE: dict[str, tuple[str, str]] = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "canceled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}
"""OpenAI ``error`` (code, message) for results that never ran."""

_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)


# --- request: OpenAI chat completion body -> Anthropic Messages params ---------------------------------


def _text_of(content: Any, param: str) -> str:
    """Text of a string or of a list of ``text`` (and ``refusal``) parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError("Message content must be a string or an array of parts.", param, "invalid_value")
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "refusal") or not isinstance(part.get(kind), str):
            raise TranslationError(f"Content part type {kind!r} is not allowed here.", f"{param}[{index}]")
        texts.append(part[kind])
    return "".join(texts)


def _image_block(part: Mapping[str, Any], param: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise TranslationError("image_url.url must be a string.", param, "invalid_value")
    match = _DATA_URL.fullmatch(url)
    if match:
        media_type, data = match.group(1).lower(), match.group(2)
        if media_type not in IMAGE_MEDIA_TYPES:
            allowed = ", ".join(sorted(IMAGE_MEDIA_TYPES))
            raise TranslationError(f"Image type {media_type!r} is not supported; use {allowed}.", param)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError("image_url.url must be an http(s) URL or a base64 data: URL.", param, "invalid_value")


def _user_content(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError("Message content must be a string or an array of parts.", param, "invalid_value")
    blocks: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        where = f"{param}[{index}]"
        if kind == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image_block(part, where))
        else:
            raise TranslationError(f"Content part type {kind!r} is not supported by this provider.", where)
    return blocks


def _tool_use_blocks(tool_calls: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(tool_calls, list):
        raise TranslationError("tool_calls must be an array.", param, "invalid_value")
    blocks = []
    for index, call in enumerate(tool_calls):
        where = f"{param}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise TranslationError("Only function tool calls are supported.", where)
        try:
            arguments = msgspec.json.decode(function.get("arguments") or "{}")
        except (msgspec.DecodeError, TypeError):
            raise TranslationError("Tool call arguments are not valid JSON.", f"{where}.function.arguments") from None
        if not isinstance(arguments, dict):
            raise TranslationError("Tool call arguments must be a JSON object.", f"{where}.function.arguments")
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    return blocks


def _conversation(messages: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """The top-level system text and the Anthropic turns of an OpenAI ``messages`` array."""
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty array.", "messages", "invalid_value")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    tool_turn: dict[str, Any] | None = None  # consecutive tool messages answer one assistant turn: one user turn
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(role, str):
            raise TranslationError("Each message needs a string 'role'.", f"{param}.role")
        if role != "tool":
            tool_turn = None
        if role in SYSTEM_ROLES:
            system.append(_text_of(content, f"{param}.content"))
        elif role == "user":
            turns.append({"role": "user", "content": _user_content(content, f"{param}.content")})
        elif role == "assistant":
            text = _text_of(content, f"{param}.content")
            calls = _tool_use_blocks(message["tool_calls"], f"{param}.tool_calls") if message.get("tool_calls") else []
            blocks: list[dict[str, Any]] = ([{"type": "text", "text": text}] if text else []) + calls
            turns.append({"role": "assistant", "content": blocks if calls else text})
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": _text_of(content, f"{param}.content"),
            }
            if tool_turn is None:
                tool_turn = {"role": "user", "content": []}
                turns.append(tool_turn)
            tool_turn["content"].append(result)
        else:
            raise TranslationError(f"Message role {role!r} is not supported by this provider.", f"{param}.role")
    return ("\n\n".join(system) if system else None), turns


def _positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TranslationError(f"'{name}' must be an integer >= 1.", name, "invalid_value")
    return value


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array.", "tools", "invalid_value")
    translated = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function":
            raise TranslationError("Only function tools are supported by this provider.", f"tools[{index}]")
        entry: dict[str, Any] = {"name": function.get("name")}
        if function.get("description") is not None:
            entry["description"] = function["description"]
        entry["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
        translated.append(entry)
    return translated


def _tool_choice(choice: Any, parallel: Any, has_tools: bool) -> dict[str, Any] | None:
    translated: dict[str, Any] | None
    if choice is None:
        translated = None
    elif isinstance(choice, str) and choice in TOOL_CHOICE_TABLE:
        translated = dict(TOOL_CHOICE_TABLE[choice])
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        translated = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise TranslationError("This 'tool_choice' is not supported by this provider.", "tool_choice")
    if parallel is False and has_tools:
        translated = translated or {"type": "auto"}
        if translated["type"] != "none":
            translated["disable_parallel_tool_use"] = True
    return translated


def _output_config(response_format: Any) -> dict[str, Any] | None:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if response_format is None or kind == "text":
        return None
    schema = response_format.get("json_schema") if kind == "json_schema" else None
    if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
        return {"format": {"type": "json_schema", "schema": schema["schema"]}}
    raise TranslationError(
        "Only response_format types 'text' and 'json_schema' (with a schema) are supported by this provider.",
        "response_format",
    )


def _check_fields(body: Mapping[str, Any]) -> None:
    for name, value in body.items():
        if value is None or name in TRANSLATED_FIELDS or name in IGNORED_FIELDS:
            continue
        if name in NEUTRAL_VALUES:
            if value not in NEUTRAL_VALUES[name]:
                raise TranslationError(f"'{name}' = {value!r} is not supported by this provider.", name)
            continue
        raise TranslationError(f"Parameter '{name}' is not supported by this provider.", name)


def chat_to_messages(body: Mapping[str, Any], *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """Anthropic Messages ``params`` for an OpenAI chat completion body; raises :class:`TranslationError`."""
    _check_fields(body)
    system, turns = _conversation(body.get("messages"))
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    params: dict[str, Any] = {"model": body.get("model"), "max_tokens": max_tokens or default_max_tokens}
    if system is not None:
        params["system"] = system
    params["messages"] = turns
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise TranslationError("'stop' must be a string or an array of strings.", "stop", "invalid_value")
        params["stop_sequences"] = stops
    temperature = optional_number(body, "temperature")
    if temperature is not None:
        params["temperature"] = min(max(temperature, 0.0), 1.0)
    top_p = optional_number(body, "top_p")
    if top_p is not None:
        params["top_p"] = top_p
    tools = _tools(body["tools"]) if body.get("tools") else []
    if tools:
        params["tools"] = tools
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(tools))
    if choice is not None:
        params["tool_choice"] = choice
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        params["metadata"] = {"user_id": user}
    output_config = _output_config(body.get("response_format"))
    if output_config is not None:
        params["output_config"] = output_config
    return params


# --- results: Anthropic -> OpenAI ----------------------------------------------------------------------


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def chat_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI ``usage`` from Anthropic ``usage``: prompt tokens include cache writes and reads (both also counted
    in ``prompt_tokens_details``)."""
    cache_read = _int(usage.get("cache_read_input_tokens"))
    cache_write = _int(usage.get("cache_creation_input_tokens"))
    prompt = _int(usage.get("input_tokens")) + cache_write + cache_read
    completion = _int(usage.get("output_tokens"))
    details = usage.get("output_tokens_details")
    thinking = _int(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        # cache_write_tokens is the gateway's own key: cache writes are priced apart from other input.
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
        "completion_tokens_details": {"reasoning_tokens": thinking},
    }


def message_to_chat(message: Mapping[str, Any], *, created: int) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` body for an Anthropic Message; the ``msg_…`` id is kept, and
    ``usage.service_tier`` becomes ``service_tier`` where OpenAI has a name for it (:data:`SERVED_TIERS`)."""
    content = message.get("content")
    usage = message.get("usage")
    if not isinstance(content, list) or not isinstance(usage, dict) or not isinstance(message.get("id"), str):
        raise MalformedResult("message without id, content or usage")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            arguments = msgspec.json.encode(block.get("input") or {}).decode()
            function = {"name": block.get("name"), "arguments": arguments}
            tool_calls.append({"id": block.get("id"), "type": "function", "function": function})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    reply["refusal"] = None
    if tool_calls:
        reply["tool_calls"] = tool_calls
    finish = FINISH_REASON_TABLE.get(str(message.get("stop_reason")), "stop")
    choice: dict[str, Any] = {"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}
    matched = message.get("stop_sequence")
    if message.get("stop_reason") == "stop_sequence" and isinstance(matched, str):
        # OpenAI has no field for the stop string that ended a reply; vLLM's OpenAI-compatible server names it
        # ``stop_reason``, and a Message Batches client reads it back as ``stop_sequence``.
        choice["stop_reason"] = matched
    chat = {
        "id": message["id"],
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [choice],
        "usage": chat_usage(usage),
    }
    served = usage.get("service_tier")
    tier = SERVED_TIERS.get(served) if isinstance(served, str) else None
    if tier is not None:
        chat["service_tier"] = tier
    return chat


def openai_error(status: int, message: str, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """``{"status_code", "body"}`` of an OpenAI error response, ``body`` being ``{"error": {...}}``."""
    return {"status_code": status, "body": {"error": {"message": message, "type": type, "param": param, "code": code}}}


def error_to_openai(error_response: Any) -> dict[str, Any]:
    """``{"status_code", "body"}`` for an Anthropic ``ErrorResponse`` (``{"type":"error","error":{...}}``)."""
    error = error_response.get("error") if isinstance(error_response, dict) else None
    if not isinstance(error, dict):
        error = {}
    kind = str(error.get("type") or "api_error")
    message = str(error.get("message") or "The provider reported an error without a message.")
    return openai_error(ERROR_STATUS_TABLE.get(kind, 500), message, OPENAI_ERROR_TYPE.get(kind, kind), kind)


def translation_error_response(err: TranslationError) -> dict[str, Any]:
    """``{"status_code": 400, "body"}`` for a request that could not be translated."""
    return openai_error(400, err.message, "invalid_request_error", err.code, err.param)


def envelope(
    line_id: str, custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    """The OpenAI batch output line ``{id, custom_id, response, error}``."""
    return {"id": line_id, "custom_id": custom_id, "response": response, "error": error}


def result_to_envelope(result: Any, *, custom_id: str, line_id: str, request_id: str, created: int) -> dict[str, Any]:
    """The OpenAI output line for one Anthropic ``result`` object; raises :class:`MalformedResult`."""
    kind = result.get("type") if isinstance(result, dict) else None
    if kind == "succeeded":
        body = message_to_chat(result.get("message") or {}, created=created)
        return envelope(line_id, custom_id, {"status_code": 200, "request_id": request_id, "body": body}, None)
    if kind == "errored":
        error_response = result.get("error")
        own_id = error_response.get("request_id") if isinstance(error_response, dict) else None
        response = {"request_id": own_id if isinstance(own_id, str) and own_id else request_id}
        return envelope(line_id, custom_id, {**error_to_openai(error_response), **response}, None)
    if isinstance(kind, str) and kind in UNFINISHED_TABLE:
        code, message = UNFINISHED_TABLE[kind]
        return envelope(line_id, custom_id, None, {"code": code, "message": message})
    raise MalformedResult(f"unknown result type {kind!r}")
