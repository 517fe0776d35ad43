"""The Anthropic Message Batches protocol: request params through the deterministic model, and the driver
that runs a batch's requests and writes its results file.

Requests arrive inline in the create call; ``custom_id``s are checked at once (400), the ``params`` of each
request only while the batch runs (an invalid one becomes an ``errored`` result). The deterministic model of
:mod:`gateway.simulator.model` answers, so the same conversation gets the same text and token counts as from
the OpenAI protocol. The HTTP routes and the batch objects live in :mod:`gateway.simulator.anthropic_routes`;
the synchronous ``/v1/messages`` in :mod:`gateway.simulator.anthropic_sync`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec
from litestar import Router

from gateway.simulator.errors import ApiError, refused_key_error
from gateway.simulator.file_store import StoredFile
from gateway.simulator.jobs import CANCELLED, ItemOutcome, Job, JobItem
from gateway.simulator.model import ECHO_MAX_CHARS, REPLY_PREFIX, model_reply, random_id, stable_id
from gateway.simulator.state import DAY_S, EmulatorState

BATCHES = "/v1/messages/batches"
MAX_OUTPUT_TOKENS = 64_000
RETENTION_S = 29 * DAY_S
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")

ERROR_TYPES = frozenset(
    {"invalid_request_error", "authentication_error", "billing_error", "permission_error", "not_found_error",
     "request_too_large", "rate_limit_error", "api_error", "timeout_error", "overloaded_error"}
)  # fmt: skip
ERROR_TYPE_BY_STATUS: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip
PARAMS = frozenset(
    {"model", "max_tokens", "messages", "system", "temperature", "top_p", "top_k", "stop_sequences", "tools",
     "tool_choice", "metadata", "thinking", "output_config", "service_tier", "stream"}
)  # fmt: skip
BLOCK_TYPES = frozenset({"text", "image", "tool_use", "tool_result", "document", "thinking", "redacted_thinking"})
TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


def invalid(message: str, status: int = 400, kind: str = "invalid_request_error") -> ApiError:
    """An error answer with an Anthropic error type (a 400 ``invalid_request_error`` unless told)."""
    return ApiError(status, message, type=kind)


# --- request params through the deterministic model ----------------------------------------------------


def _block_text(block: Mapping[str, Any]) -> str:
    if block.get("type") == "text":
        return str(block.get("text", ""))
    if block.get("type") == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return "".join(_block_text(b) for b in content if isinstance(b, dict))
        return content if isinstance(content, str) else ""
    return ""


def _content_text(content: Any, *, user_text_only: bool = False) -> str:
    if isinstance(content, str):
        return content
    blocks = [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []
    return "".join(_block_text(b) for b in blocks if not user_text_only or b.get("type") == "text")


def _only_tool_results(content: Any) -> bool:
    return isinstance(content, list) and bool(content) and all(b.get("type") == "tool_result" for b in content)


def conversation_texts(params: Mapping[str, Any]) -> tuple[list[str], str]:
    """The texts the model counts (the system prompt first, as one text) and the user text it echoes.

    A user turn holding only tool results stands for OpenAI ``tool`` messages and is not echoed.
    """
    messages = params["messages"]
    texts = [] if params.get("system") is None else [_content_text(params["system"])]
    texts += [_content_text(m["content"]) for m in messages]
    users = [m for m in messages if m["role"] == "user" and not _only_tool_results(m["content"])]
    echo = _content_text(users[-1]["content"], user_text_only=True) if users else texts[-1]
    return texts, echo


def _block_type(block: Any) -> Any:
    return block.get("type") if isinstance(block, dict) else None


def _check_block(block: Any, where: str) -> None:
    kind = _block_type(block)
    if kind not in BLOCK_TYPES:
        raise invalid(f"{where}.type: Input tag {kind!r} does not match any of the expected tags")
    if kind == "text" and not isinstance(block.get("text"), str):
        raise invalid(f"{where}.text: Field required")
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict) or source.get("type") not in ("base64", "url"):
            raise invalid(f"{where}.source: Input should be a base64 or url image source")
    if kind == "tool_use" and not (isinstance(block.get("name"), str) and isinstance(block.get("input"), dict)):
        raise invalid(f"{where}: tool_use blocks need a string 'name' and an object 'input'")
    if kind == "tool_result" and not isinstance(block.get("tool_use_id"), str):
        raise invalid(f"{where}.tool_use_id: Field required")


def check_params(params: Any, models: Sequence[str]) -> None:
    """Validate one request's ``params`` like the Messages API; raises an ``ApiError`` (400 or 404)."""
    if not isinstance(params, dict):
        raise invalid("params: Input should be a valid dictionary")
    extra = sorted(set(params) - PARAMS)
    if extra:
        raise invalid(f"{extra[0]}: Extra inputs are not permitted")
    model, max_tokens, messages = params.get("model"), params.get("max_tokens"), params.get("messages")
    if not isinstance(model, str) or not model:
        raise invalid("model: Field required")
    if model not in models:
        raise invalid(f"model: {model}", 404, "not_found_error")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid("max_tokens: Field required (an integer >= 1 in a batch)")
    if max_tokens > MAX_OUTPUT_TOKENS:
        raise invalid(f"max_tokens: {max_tokens} > {MAX_OUTPUT_TOKENS}, the maximum allowed for {model}")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: at least one message is required")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, list):
            for number, block in enumerate(content):
                _check_block(block, f"messages.{index}.content.{number}")
        elif not isinstance(content, str):
            raise invalid(f"messages.{index}.content: Input should be a valid string or list")
    system = params.get("system")
    blocks = system if isinstance(system, list) else []
    if (system is not None and not isinstance(system, str | list)) or any(_block_type(b) != "text" for b in blocks):
        raise invalid("system: Input should be a string or a list of text blocks")
    for name in ("temperature", "top_p"):
        value = params.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
            raise invalid(f"{name}: Input should be a number between 0 and 1")
    stops = params.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise invalid("stop_sequences: Input should be a list of strings")
    if params.get("stream"):
        raise invalid("stream: streaming is not supported in Message Batches")
    choice = params.get("tool_choice")
    if choice is not None and (not isinstance(choice, dict) or choice.get("type") not in TOOL_CHOICES):
        raise invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    tools = params.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and t.get("name") for t in tools)
    ):
        raise invalid("tools: each tool needs a 'name'")


def simulate_message(params: Any, models: Sequence[str], message_id: str) -> dict[str, Any]:
    """The emulated model's Message for one request's ``params`` (raises ``ApiError`` when invalid)."""
    check_params(params, models)
    texts, echo = conversation_texts(params)
    stops = [s for s in params.get("stop_sequences") or [] if s]
    reply = model_reply(texts, echo, params["max_tokens"], stops)
    full = REPLY_PREFIX + echo[:ECHO_MAX_CHARS]
    matched = min(((full.find(s), s) for s in stops if s in full), default=None, key=lambda hit: hit[0])
    stop_reason, stop_sequence = "end_turn", None
    if reply.finish_reason == "length":
        stop_reason = "max_tokens"
    elif matched is not None:
        stop_reason, stop_sequence = "stop_sequence", matched[1]
    usage = {
        "input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "batch",
    }  # fmt: skip
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": params["model"],
        "content": [{"type": "text", "text": reply.content, "citations": None}],
        "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage,
    }  # fmt: skip


def error_response(err: ApiError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}`` with an Anthropic error type."""
    fallback = "api_error" if err.status >= 500 else "invalid_request_error"
    kind = err.type if err.type in ERROR_TYPES else ERROR_TYPE_BY_STATUS.get(err.status, fallback)
    return {"type": "error", "error": {"type": kind, "message": err.message}, "request_id": random_id("req_")}


class AnthropicDriver:
    """Create-time checks, per-request execution and the results file of Anthropic Message Batches."""

    kind = "anthropic"
    answers_in_files = False
    base_path = ""

    def route_handlers(self) -> list[Any]:
        from gateway.simulator.anthropic_routes import MessageBatchesController, require_version
        from gateway.simulator.anthropic_sync import create_message

        batches = Router(path=BATCHES, route_handlers=[MessageBatchesController], before_request=require_version)
        return [batches, create_message]

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return error_response(err)

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        # The documented header is x-api-key; recent official SDKs send the key as a bearer token.
        return headers.get("x-api-key") == api_key or headers.get("authorization") == f"Bearer {api_key}"

    def key_refused(self, headers: Mapping[str, str]) -> ApiError:
        return refused_key_error()

    def validate(self, state: EmulatorState, job: Job) -> None:
        """Nothing left to do: the create call checked the envelope and filled ``job.items``."""

    def execute(self, state: EmulatorState, job: Job, item: JobItem) -> ItemOutcome:
        try:
            message = simulate_message(item.body, state.models, stable_id("msg_", job.id, item.custom_id))
        except ApiError as err:
            return ItemOutcome(item.custom_id, err.status, self.error_body(err))
        usage = message["usage"]
        return ItemOutcome(
            item.custom_id, 200, message, input_tokens=usage["input_tokens"], output_tokens=usage["output_tokens"]
        )

    def finalize(self, state: EmulatorState, job: Job, outcomes: Sequence[ItemOutcome]) -> list[StoredFile]:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        results: list[dict[str, Any]] = []
        for outcome in outcomes:
            if outcome.status_code is None:
                result: dict[str, Any] = {"type": "canceled" if outcome.error_code == CANCELLED[0] else "expired"}
            elif outcome.ok:
                result = {"type": "succeeded", "message": outcome.body}
            else:
                result = {"type": "errored", "error": outcome.body}
            counts[result["type"]] += 1
            results.append({"custom_id": outcome.custom_id, "result": result})
        job.extra["counts"] = counts
        now = state.clock.ts()
        stored = state.files.write_lines(
            _result_lines(results, state.faults.malformed_output_line),
            filename=f"{job.id}_results.jsonl", purpose="batch_results", created_at=now, expires_at=now + RETENTION_S,
        )  # fmt: skip
        job.extra["results_file_id"] = stored.id
        return [stored]


def _result_lines(results: Sequence[dict[str, Any]], corrupt_first: bool) -> Iterator[bytes]:
    for index, result in enumerate(results):
        encoded = msgspec.json.encode(result)
        yield encoded[: len(encoded) // 2] if corrupt_first and index == 0 else encoded
