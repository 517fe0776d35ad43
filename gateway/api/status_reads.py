"""Status reads of a batch answered straight from ASGI: the route's fast path.

Clients poll ``GET /v1/batches/{id}`` far more often than they call anything else, and most of a read's CPU
went to the framework's per-request work (resolving dependencies, parsing the handler's signature, building
and converting a response object), not to the reads it needs. :func:`fast_status_reads`, a middleware of that
route only, answers the plain case itself, reading the key, the batch and, while the batch runs, its open
shards in one statement (:func:`gateway.db.repo.read_batch_with_key`): a Bearer key that
needs nothing written or counted (:func:`gateway.api.auth.read_only_principal`), a batch of its team, a
database read directly (:class:`gateway.db.point_reads.PointReads`). Everything else (no key, a refused key, a
key whose use is due to be noted, request limits, an unknown batch, a query string, an unusual id) goes on to
the handler, which gives it its usual answer, errors included. Both render the batch with
:func:`gateway.api.objects.batch_object`, and the app's metrics middleware times and counts both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from gateway.api.auth import bearer_token, read_only_principal
from gateway.api.objects import batch_object
from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.models import Batch
from gateway.pipeline import lifecycle

_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
"""Batch ids the fast path answers; any other id (control characters, odd punctuation) takes the handler's
checks."""
_JSON = (b"content-type", b"application/json")


def fast_status_reads(app: ASGIApp) -> ASGIApp:
    """Middleware of the retrieve-batch route: answer a plain status read here, pass anything else to ``app``."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        body = await _plain_answer(scope) if scope["type"] == "http" else None
        if body is None:
            await app(scope, receive, send)
            return
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        await send(HTTPResponseStartEvent(type="http.response.start", status=200, headers=headers))
        await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))

    return answer


async def _plain_answer(scope: Scope) -> bytes | None:
    """The encoded Batch object when this read is the plain case, else None."""
    context: GatewayContext = scope["litestar_app"].state.context
    batch_id = scope["path_params"].get("batch_id", "")
    if not context.point_reads.direct or scope.get("query_string") or not _PLAIN_ID.fullmatch(batch_id):
        return None
    token = _bearer_token(scope["headers"])
    if token is None:
        return None
    found = await repo.read_batch_with_key(context.point_reads, token, batch_id)
    if found is None:
        return None
    key, batch, open_shards = found
    if read_only_principal(context, key) is None:
        return None
    return msgspec.json.encode(batch_object(batch, lifecycle.waiting_of(batch, open_shards)))


async def shown_batch(context: GatewayContext, batch: Batch) -> dict[str, Any]:
    """The Batch object of a batch read directly (``context.point_reads``), with, while it runs, why it waits."""
    return batch_object(batch, await lifecycle.batch_waiting(context.point_reads, batch))


def _bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of the ``Authorization: Bearer`` header, read as the framework reads headers, or None."""
    for name, value in headers:
        if name == b"authorization":
            return bearer_token(value.decode("latin-1"))
    return None
