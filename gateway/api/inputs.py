"""Guards on what clients send, applied at the API boundary before anything reaches the database.

* Ids, path segments, query parameters and headers the gateway reads must hold no control
  characters; free-text body fields may hold tab and line breaks (see :mod:`gateway.textcheck`).
* JSON request bodies are at most ``MAX_JSON_BODY_BYTES`` long and nested at most
  ``MAX_JSON_DEPTH`` levels deep.
* Integer ids in paths fit the database's integer column (``MAX_DB_INT``).

Each refusal is a 400 in OpenAI's error shape naming the parameter at fault.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request

from gateway.errors import InvalidRequest, bad_request
from gateway.jsondepth import nests_deeper_than
from gateway.textcheck import CONTROL, check_text, invalid_characters

MAX_JSON_BODY_BYTES = 1024 * 1024
"""Largest JSON request body (creating a batch, a key, a budget, an estimate); larger ones answer 413."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of a JSON request body; the API's bodies need 3 levels."""
MAX_DB_INT = 2**31 - 1
"""Largest integer id (a 32-bit column on PostgreSQL)."""
MAX_NAME_CHARS = 200
"""Longest team name and label of a key or webhook endpoint in an admin body (the columns' width)."""


async def check_request_url(request: Request) -> None:
    """Refuse a path or query parameter holding a control character (an app-wide ``before_request``).

    A coroutine on purpose: the framework runs a plain function hook in a worker thread, a thread hop on every
    request that cost about a third of a status read."""
    _refuse_control_characters_in_url(request)


def _refuse_control_characters_in_url(request: Request) -> None:
    if CONTROL.search(request.scope["path"]):
        raise invalid_characters("The request path", None)
    for name, value in request.query_params.multi_items():
        if CONTROL.search(name) or CONTROL.search(value):
            raise invalid_characters(f"Query parameter '{name[:64]}'", name if not CONTROL.search(name) else None)


async def check_json_request(request: Request) -> None:
    """``check_request_url``, then refuse a body nested too deep before the framework decodes it into
    the handler's ``data`` (a ``before_request`` of handlers that take one)."""
    _refuse_control_characters_in_url(request)
    if nests_deeper_than(await request.body(), MAX_JSON_DEPTH):
        raise _too_deep()


def _too_deep() -> InvalidRequest:
    return bad_request(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep.", code="nesting_too_deep")


def _check_strings(value: Any, path: str, free_text_params: frozenset[str]) -> None:
    if isinstance(value, str):
        check_text(value, path, free_text=path in free_text_params or path.split(".")[0] in free_text_params)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else key
            if CONTROL.search(key):
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


def team_and_label(body: dict[str, Any]) -> tuple[str, str | None]:
    """An admin body's ``team`` (required, stripped) and optional ``name`` label, each at most 200 characters."""
    team, name = body.get("team"), body.get("name")
    if not isinstance(team, str) or not team.strip() or len(team.strip()) > MAX_NAME_CHARS:
        raise bad_request(f"'team' must be a non-empty string of at most {MAX_NAME_CHARS} characters.", param="team")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
        raise bad_request(f"'name' must be a string of at most {MAX_NAME_CHARS} characters.", param="name")
    return team.strip(), name
