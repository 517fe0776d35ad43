"""OpenAI-shaped errors and the exception handlers that render every failure in that shape.

Every non-2xx answer has the body ``{"error": {"message", "type", "param", "code"}}``; a write the
blob store refused (disk full or not writable) is a 507; unexpected exceptions are logged with a
traceback on the server and answered as a plain 500 message, never as a traceback.
"""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR, HTTP_507_INSUFFICIENT_STORAGE

from gateway.storage import StorageFull

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or _TYPE_BY_STATUS.get(status_code, "server_error")
        self.headers = headers or {}


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    """A 400 naming the parameter at fault."""
    return APIError(400, message, param=param, code=code)


def not_found(kind: str, object_id: str, param: str | None = None) -> APIError:
    """A 404 that does not reveal whether the id exists for another team."""
    return APIError(404, f"No such {kind}: '{object_id}'", code="not_found", param=param)


def error_body(error: APIError) -> dict[str, dict[str, str | None]]:
    """The JSON body of an error."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def api_error_handler(_: Request, exc: APIError) -> Response[dict[str, dict[str, str | None]]]:
    """Render an APIError."""
    return Response(content=error_body(exc), status_code=exc.status_code, headers=exc.headers)


def http_exception_handler(_: Request, exc: HTTPException) -> Response[dict[str, dict[str, str | None]]]:
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
    error = APIError(status, message, code=code, param=param, headers=headers)
    return api_error_handler(_, error)


def internal_error_handler(request: Request, exc: Exception) -> Response[dict[str, dict[str, str | None]]]:
    """Log an unexpected exception and answer a 500 without details."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    error = APIError(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "The server had an error while processing your request.",
        code="server_error",
        type_="server_error",
    )
    return api_error_handler(request, error)


def storage_full_handler(request: Request, exc: StorageFull) -> Response[dict[str, dict[str, str | None]]]:
    """A write the blob store refused (disk full, read-only or not writable): 507, nothing stored."""
    log.error("storage refused a write on %s %s: %s", request.method, request.url.path, exc.strerror or exc)
    error = APIError(
        HTTP_507_INSUFFICIENT_STORAGE,
        "The gateway's storage is full or cannot be written to, so nothing was stored. Retry later; "
        "if this persists, tell the gateway's operator.",
        code="storage_full",
        type_="server_error",
    )
    return api_error_handler(request, error)


EXCEPTION_HANDLERS = {
    APIError: api_error_handler,
    StorageFull: storage_full_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
