"""The ``Idempotency-Key`` header of the create endpoints.

What a key means for the objects created: :mod:`gateway.pipeline.intake.idempotency`.
"""

from __future__ import annotations

from litestar import Request

from gateway.errors import InvalidRequest
from gateway.textcheck import check_text

MAX_KEY_LENGTH = 256


def key_of(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, checked before any work is done."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} characters long.",
            code="invalid_idempotency_key",
            param="Idempotency-Key",
        )
    return None if key is None else check_text(key, "Idempotency-Key")
