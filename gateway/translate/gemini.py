"""Two-way translation between OpenAI chat completions and Gemini ``generateContent`` (pure, no I/O).

:func:`chat_to_gemini` turns an OpenAI chat body into a GenerateContentRequest; :func:`gemini_to_chat`
turns a GenerateContentResponse into a ``chat.completion``; :func:`google_error` turns a Google error
status into an OpenAI error body and HTTP status. Whatever has no equivalent on the Gemini side raises
:class:`TranslationError`, whose message is meant for the client. Fields without a Gemini counterpart
that do not change the answer (``user``, ``store``, ``metadata``, ``parallel_tool_calls``, ``logprobs``,
``reasoning_effort``, ...) are dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

from gateway.translate import TranslationError

SYSTEM_ROLES = frozenset({"system", "developer"})
ROLES: dict[str, str] = {"user": "user", "assistant": "model", "tool": "user", "function": "user"}
"""OpenAI message role -> Gemini ``Content.role`` (system roles go to ``systemInstruction``)."""

GENERATION_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "topP",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
"""OpenAI body field -> ``generationConfig`` field, value copied as is."""

MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")
"""Sources of ``generationConfig.maxOutputTokens``, the first one present wins."""

TOOL_CHOICE_MODES: dict[str, str] = {"auto": "AUTO", "required": "ANY", "none": "NONE"}

SERVICE_TIERS: dict[str, str] = {"flex": "flex", "priority": "priority"}
"""OpenAI ``service_tier`` -> Gemini ``serviceTier`` (at the request's root, as the official SDK sends it);
any other value asks for the standard tier, which is Gemini's default, so nothing is sent."""
SERVED_TIERS: dict[str, str] = {"standard": "default", "unspecified": "default", "flex": "flex", "priority": "priority"}
"""Gemini's name of the tier that served a request -> OpenAI ``service_tier`` (whose standard tier is ``default``)."""

FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        (
            "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
            "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER",
        ),
        "content_filter",
    ),
}  # fmt: skip
"""Gemini ``finishReason`` -> OpenAI ``finish_reason``; any other value reads as ``stop``
(``STOP`` with ``functionCall`` parts reads as ``tool_calls``)."""

IMAGE_MIME_TYPES: dict[str, str] = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
    ".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif", ".pdf": "application/pdf",
}  # fmt: skip
"""File extension of an image URL -> ``fileData.mimeType``; unknown extensions count as JPEG."""

AUDIO_MIME_TYPES: dict[str, str] = {"wav": "audio/wav", "mp3": "audio/mp3"}

GOOGLE_STATUS_HTTP: dict[str, int] = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "UNKNOWN": 500, "INTERNAL": 500, "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}  # fmt: skip
"""Google canonical status -> HTTP status."""

GRPC_STATUS_NAMES: tuple[str, ...] = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
"""``google.rpc.Status.code`` (the index) -> canonical status name."""

HTTP_STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip
"""HTTP status -> the canonical status Google answers it with."""

OPENAI_ERROR_TYPES: dict[int, str] = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
"""HTTP status -> OpenAI error ``type``; otherwise ``invalid_request_error`` below 500, ``server_error`` above."""


# --- OpenAI request -> Gemini request -------------------------------------------------------------------


def chat_to_gemini(body: Mapping[str, Any]) -> dict[str, Any]:
    """A GenerateContentRequest for an OpenAI chat completion body (``model`` is not part of it)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise TranslationError("'messages' must be a non-empty array.", "messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise TranslationError("Each message must be an object.", param)
        role = message.get("role")
        if not isinstance(role, str):
            raise TranslationError("Each message needs a string 'role'.", f"{param}.role")
        if role in SYSTEM_ROLES:
            system += _content_parts(message.get("content"), param, media=False)
            continue
        if role not in ROLES:
            raise TranslationError(f"Message role {role!r} is not supported.", f"{param}.role")
        parts = _message_parts(message, call_names, param)
        if not parts:
            continue
        if contents and contents[-1]["role"] == ROLES[role]:
            contents[-1]["parts"] += parts
        else:
            contents.append({"role": ROLES[role], "parts": parts})
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    config = _generation_config(body)
    if config:
        request["generationConfig"] = config
    if body.get("tools"):
        request["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        request["toolConfig"] = {"functionCallingConfig": _tool_choice(body["tool_choice"])}
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier in SERVICE_TIERS:
        request["serviceTier"] = SERVICE_TIERS[tier]
    return request


def _message_parts(message: Mapping[str, Any], call_names: dict[str, str], param: str) -> list[dict[str, Any]]:
    role, content = message["role"], message.get("content")
    if role == "user":
        return _content_parts(content, param, media=True)
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or call_id not in call_names:
            raise TranslationError(f"No earlier assistant tool call has the id {call_id!r}.", f"{param}.tool_call_id")
        return [_function_response(call_names[call_id], content, param)]
    if role == "function":
        name = message.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError("A function message needs a 'name'.", f"{param}.name")
        return [_function_response(name, content, param)]
    parts = _content_parts(content, param, media=False)
    calls = list(message.get("tool_calls") or [])
    if isinstance(message.get("function_call"), Mapping):
        calls.append({"function": message["function_call"]})
    for number, call in enumerate(calls):
        where = f"{param}.tool_calls[{number}]"
        function = call.get("function") if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(name, str) or not name:
            raise TranslationError("A tool call needs a function with a name.", where)
        if isinstance(call.get("id"), str):
            call_names[call["id"]] = name
        parts.append({"functionCall": {"name": name, "args": _arguments(function.get("arguments"), where)}})
    return parts


def _content_parts(content: Any, param: str, *, media: bool) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        # Gemini rejects empty text parts.
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError("'content' must be a string or an array of parts.", f"{param}.content")
    parts: list[dict[str, Any]] = []
    for number, part in enumerate(content):
        where = f"{param}.content[{number}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise TranslationError(f"A {kind} part needs a string '{kind}'.", where)
            parts += [{"text": text}] if text else []
        elif media and kind == "image_url":
            parts.append(_image_part(part.get("image_url"), where))
        elif media and kind == "input_audio":
            audio = part.get("input_audio")
            mime = AUDIO_MIME_TYPES.get(str(audio.get("format"))) if isinstance(audio, Mapping) else None
            if mime is None or not isinstance(audio.get("data"), str):
                raise TranslationError("'input_audio' needs base64 'data' and a format wav or mp3.", where)
            parts.append({"inlineData": {"mimeType": mime, "data": audio["data"]}})
        elif media and kind == "file":
            file = part.get("file")
            data = file.get("file_data") if isinstance(file, Mapping) else None
            inline = _data_url(data) if isinstance(data, str) else None
            if inline is None:
                raise TranslationError("Only files given inline as a base64 data URL can be sent.", where)
            parts.append({"inlineData": inline})
        else:
            raise TranslationError(f"Content parts of type {kind!r} are not supported here.", where)
    return parts


def _data_url(url: str) -> dict[str, str] | None:
    head, comma, data = url.partition(",")
    if not url.startswith("data:") or not comma or not head.endswith(";base64"):
        return None
    return {"mimeType": head[5:-7] or "application/octet-stream", "data": data}


def _image_part(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        raise TranslationError("An image_url part needs a 'url'.", where)
    if url.startswith("data:"):
        inline = _data_url(url)
        if inline is None:
            raise TranslationError("Image data URLs must be base64-encoded.", where)
        return {"inlineData": inline}
    path = urlsplit(url).path.lower()
    mime = next((m for ext, m in IMAGE_MIME_TYPES.items() if path.endswith(ext)), "image/jpeg")
    return {"fileData": {"fileUri": url, "mimeType": mime}}


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    if isinstance(arguments, Mapping):
        return dict(arguments)
    if arguments is None or arguments == "":
        return {}
    try:
        value = msgspec.json.decode(arguments) if isinstance(arguments, str) else None
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise TranslationError("Tool call arguments must be a JSON object.", f"{where}.function.arguments")
    return value


def _function_response(name: str, content: Any, param: str) -> dict[str, Any]:
    text = "".join(part["text"] for part in _content_parts(content, param, media=False))
    try:
        value = msgspec.json.decode(text) if text else None
    except msgspec.DecodeError:
        value = None
    # Gemini reads a response without "output"/"error" keys as the output itself.
    response = value if isinstance(value, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config = {target: body[source] for source, target in GENERATION_FIELDS.items() if body.get(source) is not None}
    max_tokens = next((body[name] for name in MAX_TOKENS_FIELDS if body.get(name) is not None), None)
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str | list):
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    elif stop is not None:
        raise TranslationError("'stop' must be a string or an array of strings.", "stop")
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else response_format
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = response_format.get("json_schema") if isinstance(response_format, Mapping) else None
        if kind == "json_schema" and isinstance(schema, Mapping) and isinstance(schema.get("schema"), Mapping):
            config["responseJsonSchema"] = schema["schema"]
    elif kind not in (None, "text"):
        raise TranslationError(f"response_format type {kind!r} is not supported.", "response_format")
    return config


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise TranslationError("'tools' must be an array.", "tools")
    declarations = []
    for number, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) and tool.get("type") == "function" else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise TranslationError("Only function tools with a name are supported.", f"tools[{number}]")
        declaration = {"name": function["name"]}
        declaration.update({key: function[key] for key in ("description", "parameters") if function.get(key)})
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}]


def _tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in TOOL_CHOICE_MODES:
        return {"mode": TOOL_CHOICE_MODES[choice]}
    function = choice.get("function") if isinstance(choice, Mapping) and choice.get("type") == "function" else None
    if isinstance(function, Mapping) and isinstance(function.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
    raise TranslationError("tool_choice must be auto, required, none or a named function.", "tool_choice")


# --- Gemini response -> OpenAI response -----------------------------------------------------------------


def _count(meta: Mapping[str, Any], key: str) -> int:
    value = meta.get(key)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_to_openai(meta: Any) -> dict[str, Any]:
    """OpenAI ``usage`` from Gemini ``usageMetadata`` (thoughts count as completion tokens)."""
    meta = meta if isinstance(meta, Mapping) else {}
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    completion = _count(meta, "candidatesTokenCount") + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(meta, "totalTokenCount") or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": _count(meta, "cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def served_tier(value: Any) -> str | None:
    """OpenAI's ``service_tier`` for the tier Gemini says served a request (``usageMetadata.serviceTier`` or
    ``x-gemini-service-tier``, in any case, with or without ``SERVICE_TIER_``); None for a value it does not have."""
    if not isinstance(value, str):
        return None
    return SERVED_TIERS.get(value.lower().removeprefix("service_tier_"))


def _digest(*parts: str, length: int = 24) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]


def _choice(candidate: Mapping[str, Any], position: int, completion_id: str) -> dict[str, Any]:
    content = candidate.get("content")
    raw_parts = content.get("parts") if isinstance(content, Mapping) else None
    parts = [p for p in raw_parts if isinstance(p, Mapping)] if isinstance(raw_parts, list) else []
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and p.get("thought") is not True]
    index = candidate.get("index") if isinstance(candidate.get("index"), int) else position
    tool_calls: list[dict[str, Any]] = []
    for part in parts:
        call = part.get("functionCall")
        if isinstance(call, Mapping):
            call_id = call.get("id") or f"call_{_digest(completion_id, str(index), str(len(tool_calls)))}"
            arguments = msgspec.json.encode(call.get("args") or {}).decode()
            function = {"name": str(call.get("name") or ""), "arguments": arguments}
            tool_calls.append({"id": call_id, "type": "function", "function": function})
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    finish = FINISH_REASONS.get(str(candidate.get("finishReason")), "stop")
    if finish == "stop" and tool_calls:
        finish = "tool_calls"
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def gemini_to_chat(response: Mapping[str, Any], *, model: str, created: int, fallback_id: str) -> dict[str, Any]:
    """A ``chat.completion`` body for a GenerateContentResponse.

    The id is ``chatcmpl-<responseId>`` or ``fallback_id``; the model is ``modelVersion`` or ``model``;
    ``service_tier`` is ``usageMetadata.serviceTier`` when Gemini names the tier that served the request.
    """
    response_id = response.get("responseId")
    completion_id = f"chatcmpl-{response_id}" if isinstance(response_id, str) and response_id else fallback_id
    candidates = response.get("candidates")
    listed = [c for c in candidates if isinstance(c, Mapping)] if isinstance(candidates, list) else []
    choices = [_choice(candidate, position, completion_id) for position, candidate in enumerate(listed)]
    if not choices:
        feedback = response.get("promptFeedback")
        blocked = isinstance(feedback, Mapping) and bool(feedback.get("blockReason"))
        message = {"role": "assistant", "content": None, "refusal": None}
        choices = [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "content_filter" if blocked else "stop"}
        ]
    version = response.get("modelVersion")
    meta = response.get("usageMetadata")
    chat = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": version if isinstance(version, str) and version else model,
        "choices": choices,
        "usage": usage_to_openai(meta),
    }
    tier = served_tier(meta.get("serviceTier")) if isinstance(meta, Mapping) else None
    if tier is not None:
        chat["service_tier"] = tier
    return chat


def google_status_name(status: Mapping[str, Any]) -> str:
    """The canonical status of a ``google.rpc.Status`` (gRPC ``code``) or of an HTTP error (HTTP ``code``)."""
    name = status.get("status")
    if isinstance(name, str) and name in GOOGLE_STATUS_HTTP:
        return name
    code = status.get("code")
    if isinstance(code, int) and 0 <= code < len(GRPC_STATUS_NAMES):
        return GRPC_STATUS_NAMES[code]
    if isinstance(code, int):
        return HTTP_STATUS_NAMES.get(code, "INTERNAL" if code >= 500 else "INVALID_ARGUMENT")
    return "UNKNOWN"


def google_error(status: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """HTTP status and OpenAI ``{"error": {...}}`` body for a Google error status."""
    name = google_status_name(status)
    code = status.get("code")
    http = code if isinstance(code, int) and code >= 100 else GOOGLE_STATUS_HTTP.get(name, 500)
    message = status.get("message")
    kind = OPENAI_ERROR_TYPES.get(http, "server_error" if http >= 500 else "invalid_request_error")
    text = message if isinstance(message, str) and message else name
    return http, {"error": {"message": text, "type": kind, "param": None, "code": name.lower()}}
