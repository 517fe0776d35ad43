"""The gateway's domain errors, each carrying the OpenAI error it is answered as.

A :class:`GatewayError` knows its HTTP ``status_code``, OpenAI error ``type`` and ``code``, and the
``param`` at fault; :mod:`gateway.api.errors` renders every one of them as
``{"error": {"message", "type", "param", "code"}}``, in one place. This module imports nothing of the
gateway, so any layer may raise these errors.

Every exception the project defines, by where it lives::

    Exception
    ├── GatewayError                   here: answered to an API client in OpenAI's shape
    │   ├── InvalidRequest             400 invalid_request_error (built by bad_request)
    │   ├── Unauthorized, Forbidden    401 invalid_api_key / missing_api_key, 403
    │   ├── NotFound                   404 not_found (built by not_found)
    │   ├── Conflict                   409: the object's state forbids the request
    │   ├── TooLarge                   413: an upload over a size or line limit
    │   ├── QuotaExceeded              429 insufficient_quota: a hard budget is used up
    │   ├── RateLimited                429 rate_limit_exceeded: a key or team over its request rate
    │   └── UnknownModel (LookupError) 404 model_not_found, with "did you mean" suggestions
    ├── ProviderError                  gateway.providers.base: a provider call failed
    │   ├── ProviderUnavailable        transient (network, 5xx); ProviderRateLimited (429) below it
    │   ├── ProviderRejected           4xx; ProviderAuthFailed (the gateway's key) below it
    │   └── CapabilityNotSupported     the provider kind cannot do what was asked
    ├── LeaseLost                      gateway.db.leases: a stage must stop without writing
    ├── ClientError, DemoError         gateway.client_cli, gateway.demo: a one-line failure for a user
    ├── ValueError
    │   ├── ConfigError                gateway.config_errors: settings the gateway cannot start with
    │   ├── CatalogError               gateway.catalog.loader: an invalid catalog or override
    │   ├── UnknownProviderKind, UnknownProviderOption   gateway.providers.registry
    │   ├── TranslationError           gateway.translate: a request a provider format cannot express
    │   ├── MalformedResult            gateway.translate: a provider result line the gateway cannot use
    │   └── PolicyError                router_policies.base: an invalid routing hint or policy
    ├── LookupError
    │   ├── UnknownProvider            gateway.providers.registry: no enabled provider has the name
    │   └── NoUsableProvider           gateway.routing.placement: nothing usable serves a model
    └── OSError
        ├── BlobMissing (FileNotFoundError)   gateway.storage: stored content is gone
        ├── StorageFull                gateway.storage: the blob store refused a write (answered 507)
        └── DatabaseUnreachable (ConnectionError)   gateway.db.engine: the database did not answer at start-up

Only :class:`GatewayError` and :class:`~gateway.storage.StorageFull` reach an API client as exceptions
(:mod:`gateway.api.errors` renders both, and the framework's own HTTP errors, in OpenAI's shape). The
others happen below a request: the pipeline records them on the batch or the request line, with the
same OpenAI ``code`` vocabulary, and the command-line tools print them in one line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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


class GatewayError(Exception):
    """A failure answered to the client in OpenAI's error shape.

    Subclasses set the usual ``status_code`` and ``code``; any of them may be given per instance.
    The ``type`` follows the status unless given. ``line`` is the input line at fault, for an error
    recorded on a batch rather than answered.
    """

    status_code: int = 500
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code
        self.param = param
        self.type = type_ or _TYPE_BY_STATUS.get(self.status_code, "server_error")
        self.headers = headers or {}
        self.line = line

    def as_batch_error(self) -> dict[str, str | int | None]:
        """The error as an entry of a batch's ``errors`` list: ``{"code", "message", "param", "line"}``."""
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


class InvalidRequest(GatewayError):
    """400: the request is malformed or a parameter is invalid."""

    status_code = 400
    code: str | None = "invalid_value"


class Unauthorized(GatewayError):
    """401: the API key is missing or wrong."""

    status_code = 401
    code: str | None = "invalid_api_key"


class Forbidden(GatewayError):
    """403: the caller may not use this endpoint."""

    status_code = 403


class NotFound(GatewayError):
    """404: no such object (for this team)."""

    status_code = 404
    code: str | None = "not_found"


class Conflict(GatewayError):
    """409: the object's state does not allow the request."""

    status_code = 409


class TooLarge(GatewayError):
    """413: the upload is over a size or line limit."""

    status_code = 413


class QuotaExceeded(GatewayError):
    """429 ``insufficient_quota``: a budget refuses new work."""

    status_code = 429
    code: str | None = "budget_exceeded"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, type_="insufficient_quota")


class RateLimited(GatewayError):
    """429 ``rate_limit_exceeded``: a client key or its team sends faster than its limit; ``Retry-After``
    (whole seconds) says when the next request is admitted."""

    status_code = 429
    code: str | None = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message, type_="requests", headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})
        self.retry_after_s = retry_after_s


class UnknownModel(GatewayError, LookupError):
    """No model, alias or pin has this name; ``suggestions`` are close known names, best first.

    The message is ``unknown model 'x'; did you mean 'y', 'z'?`` unless one is given.
    """

    status_code = 404
    code: str | None = "model_not_found"

    def __init__(self, name: str, suggestions: Sequence[str] = (), *, message: str | None = None) -> None:
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(message or f"unknown model {name!r}{hint}", param="model")
        self.name = name
        self.suggestions = list(suggestions)


def bad_request(message: str, *, param: str | None = None, code: str | None = "invalid_value") -> InvalidRequest:
    """A 400 naming the parameter at fault."""
    error = InvalidRequest(message, param=param)
    error.code = code
    return error


def not_found(kind: str, object_id: str, param: str | None = None) -> NotFound:
    """A 404 that does not reveal whether the id exists for another team."""
    return NotFound(f"No such {kind}: '{object_id}'", param=param)
