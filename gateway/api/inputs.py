"""Guards on what clients send, applied at the API boundary before anything reaches the database.

* Ids, path segments, query parameters and headers the gateway reads must hold no control
  characters (U+0000-U+001F, U+007F-U+009F): PostgreSQL cannot store a NUL, and none of them has a
  meaning in an id. Free-text body fields (metadata values, a key's label) may hold tab, line
  feed and carriage return, and no other control character.
* JSON request bodies are at most ``MAX_JSON_BODY_BYTES`` long and nested at most
  ``MAX_JSON_DEPTH`` levels deep.
* Integer ids in paths fit the database's integer column (``MAX_DB_INT``).

Each refusal is a 400 in OpenAI's error shape naming the parameter at fault.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request

from gateway.api.errors import APIError, bad_request
from gateway.jsondepth import nests_deeper_than

MAX_JSON_BODY_BYTES = 1024 * 1024
"""Largest JSON request body (creating a batch, a key, a budget, an estimate); larger ones answer 413."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of a JSON request body; the API's bodies need 3 levels."""
MAX_DB_INT = 2**31 - 1
"""Largest integer id (a 32-bit column on PostgreSQL)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_WHITESPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def invalid_characters(where: str, param: str | None) -> APIError:
    """The 400 answered for a control character."""
    return bad_request(
        f"{where} contains a control character (such as NUL or a line break), which is not allowed.",
        param=param,
        code="invalid_characters",
    )


def has_control_characters(value: str, *, free_text: bool = False) -> bool:
    """True when ``value`` holds a control character (tab and line breaks do not count in free text)."""
    return (_CONTROL_BUT_WHITESPACE if free_text else _CONTROL).search(value) is not None


def check_text(value: str, param: str, *, free_text: bool = False) -> str:
    """``value`` unless it holds a control character (tab and line breaks allowed in free text)."""
    if has_control_characters(value, free_text=free_text):
        raise invalid_characters(f"'{param}'", param)
    return value


def check_request_url(request: Request) -> None:
    """Refuse a path or query parameter holding a control character (an app-wide ``before_request``)."""
    if _CONTROL.search(request.scope["path"]):
        raise invalid_characters("The request path", None)
    for name, value in request.query_params.multi_items():
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise invalid_characters(f"Query parameter '{name[:64]}'", name if not _CONTROL.search(name) else None)


async def check_json_request(request: Request) -> None:
    """``check_request_url``, then refuse a body nested too deep before the framework decodes it into
    the handler's ``data`` (a ``before_request`` of handlers that take one)."""
    check_request_url(request)
    if nests_deeper_than(await request.body(), MAX_JSON_DEPTH):
        raise _too_deep()


def _too_deep() -> APIError:
    return bad_request(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.", code="nesting_too_deep")


def _check_strings(value: Any, path: str, free_text_params: frozenset[str]) -> None:
    if isinstance(value, str):
        check_text(value, path, free_text=path in free_text_params or path.split(".")[0] in free_text_params)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else key
            if _CONTROL.search(key):
                raise invalid_characters(f"A key of '{path or 'the body'}'", path or None)
            _check_strings(item, name, free_text_params)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, path, free_text_params)


def decode_json_object(raw: bytes, *, free_text: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON request body that must be an object, nested at most ``MAX_JSON_DEPTH`` levels deep,
    with no control characters in its keys and strings (except tab and line breaks in the
    ``free_text`` fields and everything under them)."""
    if nests_deeper_than(raw, MAX_JSON_DEPTH):
        raise _too_deep()
    try:
        body = msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    _check_strings(body, "", frozenset(free_text))
    return body
