"""The error answers of the emulators: one exception every protocol renders in its own body shape."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error answer; each protocol renders it in its own body shape (``type`` is OpenAI's vocabulary)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})


def openai_error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The ``{"error": {...}}`` body of OpenAI-compatible APIs, with all four keys present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def not_found(kind: str, ident: str, param: str | None = None) -> ApiError:
    """The 404 for an unknown object id."""
    return ApiError(404, f"No such {kind} object: {ident}", param=param)


def refused_key_error() -> ApiError:
    """The 401 of a call without the expected key, in words that name no key."""
    return ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


def server_error() -> ApiError:
    """The retryable 500 that injected failures answer."""
    message = "The server had an error while processing your request. Sorry about that!"
    return ApiError(500, message, type="server_error")
