"""Anthropic-format clients in the gateway's OpenAI form, and back, without I/O.

The Anthropic-compatible endpoint (``/v1/messages/batches``) accepts Message Batches requests: each
request's ``params`` is a Messages API body. :func:`params_to_chat` turns it into an OpenAI
``/v1/chat/completions`` body, which every provider kind runs; a field that would silently change the
answer if dropped raises :class:`TranslationError`, which becomes that request's ``errored`` result (as
Anthropic validates ``params`` after the create call). :func:`output_to_result` turns one line of the
batch's output or error file into an Anthropic result line; :func:`chat_to_message` renders a chat
completion as an Anthropic ``message``.

The opposite direction (OpenAI clients, Anthropic providers) is :mod:`gateway.translate.anthropic`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.translate import TranslationError, optional_number

# --- tables ------------------------------------------------------------------------------------------

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
"""Anthropic's rule for a request's ``custom_id``."""
TRANSLATED_PARAMS = frozenset(
    {"model", "max_tokens", "messages", "system", "temperature", "top_p", "stop_sequences", "tools",
     "tool_choice", "metadata", "output_config"}
)  # fmt: skip
IGNORED_PARAMS = frozenset({"service_tier", "container", "context_management", "inference_geo"})
"""Params the gateway drops: the tier is the gateway's to choose; the others are hints without an answer change."""
NEUTRAL_PARAMS: dict[str, tuple[Any, ...]] = {"stream": (False,), "thinking": ({"type": "disabled"},)}
"""Params accepted only with the value that means "feature off"."""
TOOL_CHOICE_TABLE: dict[str, str] = {"auto": "auto", "any": "required", "none": "none"}
STOP_REASON_TABLE: dict[str, str] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
    "content_filter": "refusal",
}  # fmt: skip
"""Anthropic ``stop_reason`` by OpenAI ``finish_reason``; others read as ``end_turn``."""
ERROR_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip
"""Anthropic error ``type`` by HTTP status; other 4xx read as ``invalid_request_error``, other 5xx as ``api_error``."""
ERROR_TYPE_BY_CODE: dict[str, str] = {
    "rate_limit_exceeded": "rate_limit_error", "timeout": "timeout_error", "overloaded_error": "overloaded_error",
    "model_not_found": "not_found_error", "request_too_large": "request_too_large",
    "insufficient_quota": "billing_error", "invalid_request": "invalid_request_error",
    "authentication_error": "authentication_error", "permission_error": "permission_error",
}  # fmt: skip
"""Anthropic error ``type`` of an error-file line, by the gateway's OpenAI ``code``; others read as ``api_error``."""
UNEXECUTED_TABLE: dict[str, str] = {"batch_cancelled": "canceled", "batch_expired": "expired"}
"""Anthropic result ``type`` of a request that never ran, by its error code."""
MAX_STOP_SEQUENCES = 4
"""OpenAI's bound on ``stop``; more cannot be expressed in the gateway's form."""


def error_type(status: int) -> str:
    """The Anthropic error ``type`` for an HTTP status."""
    return ERROR_TYPE_BY_STATUS.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_object(kind: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """An Anthropic ``ErrorResponse``: ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def errored(custom_id: str, kind: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """An ``errored`` result line."""
    return {"custom_id": custom_id, "result": {"type": "errored", "error": error_object(kind, message, request_id)}}


# --- request: Anthropic Messages params -> OpenAI chat completion body --------------------------------


def _text(block: Mapping[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise TranslationError("A text block needs a string 'text'.", param, "invalid_value")
    return text


def _image_part(block: Mapping[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict):
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise TranslationError("A base64 image needs 'media_type' and 'data'.", f"{param}.source", "invalid_value")
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise TranslationError("Image sources of type 'base64' and 'url' are supported.", f"{param}.source")


def _blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise TranslationError("Message content must be a string or an array of blocks.", param, "invalid_value")
    for index, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise TranslationError("Each content block must be an object with a 'type'.", f"{param}[{index}]")
    return content


def _tool_result_text(content: Any, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for index, block in enumerate(_blocks(content, param)):
        if block["type"] != "text":
            raise TranslationError("Tool results may hold text blocks only here.", f"{param}[{index}]")
        texts.append(_text(block, f"{param}[{index}]"))
    return "".join(texts)


def _user_turn(content: Any, param: str) -> list[dict[str, Any]]:
    """A user turn: its tool results first (one ``tool`` message each), then the rest as one user message."""
    messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(_blocks(content, f"{param}.content")):
        where = f"{param}.content[{index}]"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, where)})
        elif kind == "image":
            parts.append(_image_part(block, where))
        elif kind == "tool_result":
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str):
                raise TranslationError("A tool_result needs a 'tool_use_id'.", where, "invalid_value")
            text = _tool_result_text(block.get("content"), f"{where}.content")
            messages.append({"role": "tool", "tool_call_id": tool_use_id, "content": text})
        else:
            raise TranslationError(f"Content block type {kind!r} is not supported in a user turn here.", where)
    if parts:
        only_text = all(part["type"] == "text" for part in parts)
        joined = "".join(part["text"] for part in parts) if only_text else None
        messages.append({"role": "user", "content": joined if only_text else parts})
    return messages


def _assistant_turn(content: Any, param: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(_blocks(content, f"{param}.content")):
        where = f"{param}.content[{index}]"
        kind = block["type"]
        if kind == "text":
            texts.append(_text(block, where))
        elif kind == "tool_use":
            name, call_id, arguments = block.get("name"), block.get("id"), block.get("input", {})
            if not isinstance(name, str) or not isinstance(call_id, str) or not isinstance(arguments, dict):
                raise TranslationError("A tool_use block needs 'id', 'name' and an object 'input'.", where)
            function = {"name": name, "arguments": msgspec.json.encode(arguments).decode()}
            calls.append({"id": call_id, "type": "function", "function": function})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning is context for Anthropic models only; no other model reads it
        else:
            raise TranslationError(f"Content block type {kind!r} is not supported in an assistant turn here.", where)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _system(system: Any) -> str | None:
    """The system text: a string, or text blocks joined by blank lines (``cache_control`` marks are dropped)."""
    if system is None or isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise TranslationError("'system' must be a string or an array of text blocks.", "system", "invalid_value")
    texts = []
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise TranslationError("'system' may hold text blocks only.", f"system[{index}]")
        texts.append(_text(block, f"system[{index}]"))
    return "\n\n".join(texts)


def _conversation(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty array.", "messages", "invalid_value")
    translated: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user":
            translated.extend(_user_turn(message.get("content"), param))
        elif role == "assistant":
            translated.append(_assistant_turn(message.get("content"), param))
        else:
            raise TranslationError("Message role must be 'user' or 'assistant'.", f"{param}.role", "invalid_value")
    return translated


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array.", "tools", "invalid_value")
    translated = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
            raise TranslationError("Only custom (client) tools are supported here, not server tools.", where)
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not isinstance(schema, dict):
            raise TranslationError("A tool needs a 'name' and an object 'input_schema'.", where, "invalid_value")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        translated.append({"type": "function", "function": function})
    return translated


def _tool_choice(choice: Any, body: dict[str, Any]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(kind, str) and kind in TOOL_CHOICE_TABLE:
        body["tool_choice"] = TOOL_CHOICE_TABLE[kind]
    elif kind == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise TranslationError("'tool_choice' must be of type auto, any, tool (with a name) or none.", "tool_choice")
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True:
        body["parallel_tool_calls"] = False


def _response_format(output_config: Any) -> dict[str, Any] | None:
    if not isinstance(output_config, dict):
        raise TranslationError("'output_config' must be an object.", "output_config", "invalid_value")
    if set(output_config) - {"format"}:
        extra = sorted(set(output_config) - {"format"})[0]
        raise TranslationError(f"'output_config.{extra}' is not supported here.", f"output_config.{extra}")
    form = output_config.get("format")
    if form is None:
        return None
    if isinstance(form, dict) and form.get("type") == "json_schema" and isinstance(form.get("schema"), dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": form["schema"]}}
    raise TranslationError("'output_config.format' must be a json_schema with a schema.", "output_config.format")


def _check_params(params: Mapping[str, Any]) -> None:
    for name, value in params.items():
        if name in TRANSLATED_PARAMS or name in IGNORED_PARAMS:
            continue
        if name in NEUTRAL_PARAMS:
            if value not in NEUTRAL_PARAMS[name]:
                raise TranslationError(f"'{name}' = {value!r} is not supported in a batch here.", name)
            continue
        raise TranslationError(f"Parameter '{name}' is not supported by this gateway.", name)


def params_to_chat(params: Any) -> dict[str, Any]:
    """The OpenAI chat completion body for Anthropic Messages ``params``; raises :class:`TranslationError`."""
    if not isinstance(params, dict):
        raise TranslationError("'params' must be an object.", "params", "invalid_value")
    _check_params(params)
    model, max_tokens = params.get("model"), params.get("max_tokens")
    if not isinstance(model, str) or not model:
        raise TranslationError("Field required", "model", "missing_required_parameter")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise TranslationError("must be an integer >= 1", "max_tokens", "invalid_value")
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    system = _system(params.get("system"))
    body["messages"] = ([{"role": "system", "content": system}] if system else []) + _conversation(
        params.get("messages")
    )
    for name in ("temperature", "top_p"):
        value = optional_number(params, name)
        if value is not None:
            # Anthropic's range, whichever provider runs it: OpenAI's goes to 2, so a temperature of 1.5 would
            # run there and fail at Anthropic.
            if not 0 <= value <= 1:
                raise TranslationError("must be between 0 and 1", name, "invalid_value")
            body[name] = value
    stops = params.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
            raise TranslationError("'stop_sequences' must be an array of strings.", "stop_sequences", "invalid_value")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise TranslationError(f"At most {MAX_STOP_SEQUENCES} stop_sequences are supported.", "stop_sequences")
        body["stop"] = stops
    if params.get("tools"):
        body["tools"] = _tools(params["tools"])
    if params.get("tool_choice") is not None:
        _tool_choice(params["tool_choice"], body)
    metadata = params.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        body["user"] = metadata["user_id"]
    if params.get("output_config") is not None:
        response_format = _response_format(params["output_config"])
        if response_format is not None:
            body["response_format"] = response_format
    return body


# --- results: OpenAI output and error lines -> Anthropic result lines ---------------------------------


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def message_usage(usage: Any) -> dict[str, Any]:
    """Anthropic ``usage`` from OpenAI ``usage``: cached and cache-written input are split out of the prompt."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cache_read = _count(details.get("cached_tokens"))
    cache_write = _count(details.get("cache_write_tokens"))
    return {
        "input_tokens": max(0, _count(usage.get("prompt_tokens")) - cache_read - cache_write),
        "output_tokens": _count(usage.get("completion_tokens")),
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
    }


def _tool_input(arguments: Any) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(arguments) if isinstance(arguments, str) and arguments else {}
    except msgspec.DecodeError:
        return {"arguments": arguments}  # a model's malformed JSON is kept, not lost
    return value if isinstance(value, dict) else {"value": value}


def chat_to_message(body: Mapping[str, Any], *, fallback_id: str) -> dict[str, Any]:
    """The Anthropic ``message`` for an OpenAI ``chat.completion`` body (first choice)."""
    choices = body.get("choices")
    choice: dict[str, Any] = (
        choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    )
    reply: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    text = reply.get("content") if isinstance(reply.get("content"), str) else reply.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            call_id = call.get("id") if isinstance(call.get("id"), str) else f"toolu_{len(content)}"
            content.append(
                {"type": "tool_use", "id": call_id, "name": str(function.get("name") or ""),
                 "input": _tool_input(function.get("arguments"))}
            )  # fmt: skip
    finish = choice.get("finish_reason")
    stop_reason = "refusal" if reply.get("refusal") and not reply.get("content") else None
    # The stop string that ended the reply, where the provider named it (choice ``stop_reason``, as vLLM does and
    # as the gateway keeps Anthropic's ``stop_sequence``); a number there is a stop token's id, not a sequence.
    matched = choice.get("stop_reason") if finish == "stop" else None
    if stop_reason is None and isinstance(matched, str):
        stop_reason = "stop_sequence"
    else:
        matched = None
    chat_id = body.get("id")
    message_id = chat_id if isinstance(chat_id, str) and chat_id.startswith("msg_") else fallback_id
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": str(body.get("model") or ""),
        "content": content,
        "stop_reason": stop_reason or STOP_REASON_TABLE.get(str(finish), "end_turn"),
        "stop_sequence": matched,
        "usage": message_usage(body.get("usage")),
    }


def output_to_result(line: Mapping[str, Any]) -> dict[str, Any]:
    """The Anthropic result line for one line of the gateway's output or error file."""
    custom_id = str(line.get("custom_id"))
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        body: dict[str, Any] = response["body"] if isinstance(response.get("body"), dict) else {}
        request_id = response.get("request_id") if isinstance(response.get("request_id"), str) else None
        if status == 200:
            line_id = str(line.get("id") or custom_id)
            message = chat_to_message(body, fallback_id="msg_" + re.sub(r"[^A-Za-z0-9]", "", line_id))
            return {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}
        failure: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
        text = str(failure.get("message") or f"The provider answered HTTP {status}.")
        return errored(custom_id, error_type(status if isinstance(status, int) else 500), text, request_id)
    detail: dict[str, Any] = error if isinstance(error, dict) else {}
    code = str(detail.get("code") or "")
    if code in UNEXECUTED_TABLE:
        return {"custom_id": custom_id, "result": {"type": UNEXECUTED_TABLE[code]}}
    text = str(detail.get("message") or "The request failed without a message.")
    return errored(custom_id, ERROR_TYPE_BY_CODE.get(code, "api_error"), text)


def check_custom_id(value: Any, seen: set[str], index: int) -> str:
    """``requests[index].custom_id`` if valid and new; raises :class:`TranslationError` naming the field."""
    param = f"requests.{index}.custom_id"
    if value is None:
        raise TranslationError(f"{param}: Field required", param, "missing_required_parameter")
    if not isinstance(value, str) or not CUSTOM_ID.fullmatch(value):
        raise TranslationError(
            f"{param}: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'", param, "invalid_value"
        )
    if value in seen:
        raise TranslationError(f"{param}: Duplicate custom_id '{value}' in the batch.", param, "duplicate_custom_id")
    seen.add(value)
    return value
