"""A request id on every HTTP answer, as the providers' own APIs give one.

OpenAI answers every call with an ``x-request-id`` header and Anthropic with ``request-id``; their SDKs show it
(``response.request_id``, ``_request_id``) so that a user can quote it. Both headers carry the same id here, on
every route and every status, the answers the status-read middleware writes itself included; an answer that
carries one already (an Anthropic-shaped error names its id in its body too) keeps it.
"""

from __future__ import annotations

import secrets

from litestar.types import Message, Scope

HEADERS = (b"x-request-id", b"request-id")


def new_request_id() -> str:
    """A fresh id in OpenAI's shape: ``req_`` and 32 hex digits."""
    return "req_" + secrets.token_hex(16)


async def add_request_id(message: Message, scope: Scope) -> None:
    """The app's ``before_send`` hook: give an HTTP answer's start a request id (every answer passes here, those to
    unknown routes included, which no middleware sees)."""
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers", ()))
    present = {bytes(name).lower(): bytes(value) for name, value in headers}
    # An answer that names its id already (an Anthropic-shaped error's body does) keeps it.
    value = next((present[name] for name in HEADERS if name in present), None) or new_request_id().encode()
    headers += [(name, value) for name in HEADERS if name not in present]
    message["headers"] = headers
