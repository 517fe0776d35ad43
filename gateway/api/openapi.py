"""What the served OpenAPI document (``/schema/openapi.json``) says beyond what the handlers' signatures show.

Error responses are documented in OpenAI's shape (the framework's default describes its own error
body, which the gateway never sends); the bodies that handlers read themselves (the multipart
upload and the JSON bodies parsed by :mod:`gateway.api.inputs`) are documented here; both keys are
documented as bearer schemes, and a client key also as the ``x-api-key`` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, Operation, RequestBody, Schema, SecurityScheme
from litestar.openapi.spec import OpenAPIMediaType as MediaType
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from gateway.api.inputs import MAX_DB_INT

CLIENT_SECURITY: list[dict[str, list[str]]] = [{"clientKey": []}, {"clientApiKey": []}]
"""A client key, as a bearer token or (as Anthropic's clients send it) in ``x-api-key``: either one."""
ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminKey": []}]
COMPONENTS = Components(
    security_schemes={
        "clientKey": SecurityScheme(type="http", scheme="bearer", description="A client key (`bgw-...`)."),
        "clientApiKey": SecurityScheme(
            type="apiKey", name="x-api-key", security_scheme_in="header", description="A client key, as `x-api-key`."
        ),
        "adminKey": SecurityScheme(type="http", scheme="bearer", description="The admin key (BATCHGW_ADMIN_KEY)."),
    }
)


class ErrorDetail(msgspec.Struct):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct):
    """Every non-2xx answer of the gateway."""

    error: ErrorDetail


_WHY = {
    400: "Invalid input (parameter, body, characters, nesting, number range)",
    401: "Missing or wrong key",
    403: "Admin API disabled (no admin key configured)",
    404: "Unknown id (also another team's)",
    409: "The object's state forbids the action, or an Idempotency-Key reused with another body",
    413: "Request or upload over a limit",
    429: "A hard budget is exhausted (insufficient_quota), or the key or its team is over its request rate "
    "(rate_limit_exceeded, with Retry-After)",
    507: "The gateway's storage is full or not writable; nothing was stored",
}


def _error_specs(statuses: set[int]) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            generate_examples=False,
            description=_WHY.get(status, HTTPStatus(status).phrase),
        )
        for status in sorted(statuses)
    }


class AnthropicErrorDetail(msgspec.Struct):
    """Anthropic's error object."""

    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct):
    """Every non-2xx answer of the Anthropic-compatible routes."""

    type: str
    error: AnthropicErrorDetail
    request_id: str | None


def anthropic_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Error responses in Anthropic's shape (the ``/v1/messages`` routes): the given statuses, and 400, 401
    and 429 always."""
    return {
        status: ResponseSpec(
            data_container=AnthropicErrorBody,
            generate_examples=False,
            description=_WHY.get(status, HTTPStatus(status).phrase),
        )
        for status in sorted({400, 401, 429, *statuses})
    }


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Error responses in OpenAI's shape of a client (/v1) route: the given status codes, and 400, 401 and 429
    (request rate limits of keys and teams) always."""
    return _error_specs({400, 401, 429, *statuses})


def admin_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Error responses of an admin route: the given status codes, and 400, 401 and 403 always."""
    return _error_specs({400, 401, 403, *statuses})


def provider_errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Error responses of a route providers call (signed, no client key): the given status codes, and 400 always."""
    return _error_specs({400, *statuses})


def with_request_body(body: RequestBody) -> type[Operation]:
    """An operation class documenting ``body``, for handlers that read their body themselves."""

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return DocumentedOperation


def _json(schema: Schema, description: str) -> RequestBody:
    return RequestBody(content={"application/json": MediaType(schema=schema)}, description=description, required=True)


_ID = Schema(type=OpenAPIType.STRING, min_length=1)
_WINDOW = Schema(type=OpenAPIType.STRING, pattern=r"^\d{1,7}[smhd]$", examples=["24h"])
_METADATA = Schema(
    type=[OpenAPIType.OBJECT, OpenAPIType.NULL],
    max_properties=16,
    additional_properties=Schema(type=OpenAPIType.STRING, max_length=512),
    description="At most 16 pairs; keys up to 64 characters. Routing hints: policy, deadline, providers, weights, "
    "max_cost_usd, canary.",
)

CREATE_BATCH_BODY = _json(
    Schema(
        type=OpenAPIType.OBJECT,
        required=["input_file_id", "endpoint", "completion_window"],
        properties={
            "input_file_id": _ID,
            "endpoint": Schema(type=OpenAPIType.STRING, enum=["/v1/chat/completions", "/v1/embeddings"]),
            "completion_window": _WINDOW,
            "metadata": _METADATA,
            "output_expires_after": Schema(
                type=[OpenAPIType.OBJECT, OpenAPIType.NULL],
                required=["anchor", "seconds"],
                properties={
                    "anchor": Schema(type=OpenAPIType.STRING, enum=["created_at"]),
                    "seconds": Schema(type=OpenAPIType.INTEGER, minimum=3600, maximum=2_592_000),
                },
                additional_properties=False,
            ),
        },
        additional_properties=False,
    ),
    "OpenAI's batch create body.",
)

UPLOAD_BODY = RequestBody(
    content={
        "multipart/form-data": MediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["file", "purpose"],
                properties={
                    "file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                    "purpose": Schema(type=OpenAPIType.STRING, enum=["batch"]),
                    "expires_after[anchor]": Schema(type=OpenAPIType.STRING, enum=["created_at"]),
                    "expires_after[seconds]": Schema(type=OpenAPIType.INTEGER, minimum=3600, maximum=2_592_000),
                },
            )
        )
    },
    description="One 'file' part (JSONL, one request per line) and the 'purpose' field.",
    required=True,
)

CREATE_MESSAGE_BATCH_BODY = _json(
    Schema(
        type=OpenAPIType.OBJECT,
        required=["requests"],
        properties={
            "requests": Schema(
                type=OpenAPIType.ARRAY,
                min_items=1,
                items=Schema(
                    type=OpenAPIType.OBJECT,
                    required=["custom_id", "params"],
                    properties={
                        "custom_id": Schema(type=OpenAPIType.STRING, pattern=r"^[a-zA-Z0-9_-]{1,64}$"),
                        "params": Schema(
                            type=OpenAPIType.OBJECT,
                            description="A Messages API body (model, max_tokens, messages, ...); checked after "
                            "the create call, as at Anthropic: one that cannot run ends 'errored'.",
                        ),
                    },
                    additional_properties=False,
                ),
            ),
            "metadata": _METADATA,
        },
        additional_properties=False,
    ),
    "Anthropic's Message Batches create body; 'metadata' (routing hints) is the gateway's addition.",
)

CREATE_KEY_BODY = _json(
    Schema(
        type=OpenAPIType.OBJECT,
        required=["team"],
        properties={
            "team": _ID,
            "name": Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL], max_length=200),
            "expires_at": Schema(
                type=[OpenAPIType.INTEGER, OpenAPIType.NULL],
                description="When the key stops working (unix seconds, in the next ten years); never if absent.",
            ),
        },
    ),
    "The team the key belongs to (created if new), an optional label and an optional expiry.",
)

CREATE_WEBHOOK_BODY = _json(
    Schema(
        type=OpenAPIType.OBJECT,
        required=["team", "url"],
        properties={
            "team": _ID,
            "url": Schema(type=OpenAPIType.STRING, min_length=1, max_length=2048, description="An http(s) URL."),
            "event_types": Schema(
                type=[OpenAPIType.ARRAY, OpenAPIType.NULL],
                items=Schema(
                    type=OpenAPIType.STRING,
                    enum=["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"],
                ),
                min_items=1,
                description="Events to post (default: all four).",
            ),
            "name": Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL], max_length=200),
        },
    ),
    "The team whose batches are reported, where to post, which events, and an optional label.",
)

ESTIMATE_BODY = _json(
    Schema(
        type=OpenAPIType.OBJECT,
        required=["file_id"],
        properties={
            "file_id": _ID,
            "model": Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL]),
            "policy": Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL]),
            "endpoint": Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL]),
            "deadline": Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL]),
        },
    ),
    "The uploaded file to price; optionally a model for every line, a policy, a deadline and the endpoint.",
)

ADMIN_ESTIMATE_BODY = _json(
    Schema(
        type=OpenAPIType.OBJECT,
        required=["file_id"],
        properties={
            **(ESTIMATE_BODY.content["application/json"].schema.properties or {}),  # type: ignore[union-attr]
            "team": Schema(type=[OpenAPIType.STRING, OpenAPIType.NULL]),
        },
    ),
    "As for clients, plus the team whose history the estimate learns from (default: the file's team).",
)


def page_size(maximum: int | None, description: str) -> dict[str, Any]:
    """``Parameter`` options documenting a page size's bounds; the handler itself answers 400 outside them."""
    bounds: dict[str, Any] = {"minimum": 1}
    if maximum:
        bounds["maximum"] = maximum
    return {"description": description, "schema_extra": bounds}


DB_ID = {"ge": 1, "le": MAX_DB_INT}
"""Bounds of an integer id in a path (``Parameter(**DB_ID)``)."""
