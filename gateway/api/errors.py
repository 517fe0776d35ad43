"""The one place that renders failures in OpenAI's error shape: the app's exception handlers.

Domain errors (:class:`gateway.errors.GatewayError` and its kinds) carry their status, type and code;
the framework's own HTTP errors are mapped to the same vocabulary here. Every non-2xx answer has the
body ``{"error": {"message", "type", "param", "code"}}`` (on the Anthropic-compatible routes, Anthropic's
``{"type": "error", "error": {"type", "message"}, "request_id"}``); a write the blob store refused (disk full or
not writable) is a 507; a database that cannot be reached or dropped the connection mid-request is a 503 the
client may retry; unexpected exceptions are logged with a traceback on the server and answered
as a plain 500 message, never as a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.status_codes import (
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_507_INSUFFICIENT_STORAGE,
)
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gateway.api.request_ids import new_request_id
from gateway.errors import GatewayError
from gateway.storage import StorageFull
from gateway.translate.anthropic_clients import error_object, error_type

log = logging.getLogger(__name__)


ANTHROPIC_FORMAT_PATHS = ("/v1/messages",)
"""Routes of the Anthropic-compatible endpoint: their errors are in Anthropic's shape."""


def error_body(error: GatewayError) -> dict[str, dict[str, str | None]]:
    """The JSON body of an error."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def gateway_error_handler(request: Request, exc: GatewayError) -> Response[dict[str, Any]]:
    """Render a domain error: in OpenAI's shape, or in Anthropic's on the Anthropic-compatible routes
    (``{"type": "error", "error": {"type", "message"}, "request_id"}``)."""
    if request.url.path.startswith(ANTHROPIC_FORMAT_PATHS):
        request_id = new_request_id()
        body = error_object(error_type(exc.status_code), exc.message, request_id)
        headers = {**(exc.headers or {}), "request-id": request_id}
        return Response(content=body, status_code=exc.status_code, headers=headers)
    return Response(content=error_body(exc), status_code=exc.status_code, headers=exc.headers)


def http_exception_handler(_: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    """Render the framework's own HTTP errors (404 route, 405, validation) in OpenAI's shape."""
    status = exc.status_code
    message = exc.detail or "Request failed"
    param: str | None = None
    code: str | None = None
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        if extra and isinstance(extra[0], dict):
            param = str(extra[0].get("key") or "") or None
            message = f"Invalid value for '{param}': {extra[0].get('message', message)}" if param else message
        code = "invalid_value"
    elif isinstance(exc, NotAuthorizedException):
        code = "invalid_api_key"
    elif status == 404:
        code = "unknown_url"
        message = "Unknown request URL. Please check the URL and method."
    elif status == 405:
        code = "method_not_allowed"
    elif status == 413:
        code = "request_too_large"
        message = "The request body is larger than this endpoint accepts."
    headers = dict(exc.headers or {})
    error = GatewayError(message, status_code=status, code=code, param=param, headers=headers)
    return gateway_error_handler(_, error)


def internal_error_handler(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    """Log an unexpected exception and answer a 500 without details."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    error = GatewayError(
        "The server had an error while processing your request.",
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
        code="server_error",
        type_="server_error",
    )
    return gateway_error_handler(request, error)


def storage_full_handler(request: Request, exc: StorageFull) -> Response[dict[str, Any]]:
    """A write the blob store refused (disk full, read-only or not writable): 507, nothing stored."""
    log.error("storage refused a write on %s %s: %s", request.method, request.url.path, exc.strerror or exc)
    error = GatewayError(
        "The gateway's storage is full or cannot be written to, so nothing was stored. Retry later; "
        "if this persists, tell the gateway's operator.",
        status_code=HTTP_507_INSUFFICIENT_STORAGE,
        code="storage_full",
        type_="server_error",
    )
    return gateway_error_handler(request, error)


def database_unavailable_handler(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    """The database could not be reached, dropped the connection mid-request, or had no connection free in time:
    503 with ``Retry-After``, logged without a traceback (the driver's message names hosts, never a password)."""
    cause = getattr(exc, "orig", None) or exc
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, type(cause).__name__)
    error = GatewayError(
        "The gateway's database is unavailable right now, so nothing was done. Retry shortly.",
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        code="database_unavailable",
        type_="server_error",
        headers={"Retry-After": "1"},
    )
    return gateway_error_handler(request, error)


EXCEPTION_HANDLERS = {
    GatewayError: gateway_error_handler,
    StorageFull: storage_full_handler,
    OperationalError: database_unavailable_handler,
    InterfaceError: database_unavailable_handler,
    PoolTimeout: database_unavailable_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
