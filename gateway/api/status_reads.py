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
:func:`gateway.api.objects.batch_object`, and the app's metrics middleware times and counts both. A batch's
answer is kept (:class:`KeptBatchAnswers`) and given again while its version (:data:`gateway.db.repo.BatchVersion`:
the batch's ``updated_at`` and its open shards' count and latest ``updated_at``), read with the key, is unchanged:
a client polling a running batch is answered without rendering it again until something it shows changed.
"""

from __future__ import annotations

import re
import time
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


class KeptBatchAnswers:
    """Encoded answers to status reads, kept by batch id with the version (:data:`repo.BatchVersion`) they show.

    A kept answer is given only while the batch's version is unchanged (read with the key, in one indexed
    statement, on every read: a revocation, a new count, a shard's new wait or a late charge of a provider batch
    the batch had abandoned shows on the next read), and for at most ``status_cache_s``, which bounds what a write
    that stamps no ``updated_at`` could leave unseen.
    """

    def __init__(self, most: int = 4096) -> None:
        self._answers: dict[str, tuple[repo.BatchVersion, bytes, float]] = {}
        """batch id -> (the batch's version, encoded Batch object, time.monotonic() it is kept until)"""
        self._most = most

    def get(self, batch_id: str) -> tuple[repo.BatchVersion, bytes] | None:
        """The version and the answer kept for ``batch_id``, while it is fresh."""
        kept = self._answers.get(batch_id)
        if kept is None:
            return None
        if time.monotonic() >= kept[2]:
            del self._answers[batch_id]
            return None
        return kept[0], kept[1]

    def keep(self, batch_id: str, version: repo.BatchVersion, body: bytes, ttl_s: float) -> None:
        """Keep a batch's answer for ``ttl_s`` (nothing for 0); the oldest goes when full."""
        if ttl_s <= 0:
            return
        if len(self._answers) >= self._most and batch_id not in self._answers:
            del self._answers[next(iter(self._answers))]
        self._answers[batch_id] = (version, body, time.monotonic() + ttl_s)


def fast_status_reads(app: ASGIApp) -> ASGIApp:
    """Middleware of the retrieve-batch route: answer a plain status read here, pass anything else to ``app``."""
    kept = KeptBatchAnswers()

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        body = await _plain_answer(scope, kept) if scope["type"] == "http" else None
        if body is None:
            await app(scope, receive, send)
            return
        headers = [_JSON, (b"content-length", str(len(body)).encode())]
        await send(HTTPResponseStartEvent(type="http.response.start", status=200, headers=headers))
        await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))

    return answer


async def _plain_answer(scope: Scope, answers: KeptBatchAnswers) -> bytes | None:
    """The encoded Batch object when this read is the plain case, else None."""
    context: GatewayContext = scope["litestar_app"].state.context
    batch_id = scope["path_params"].get("batch_id", "")
    if not context.point_reads.direct or scope.get("query_string") or not _PLAIN_ID.fullmatch(batch_id):
        return None
    token = _bearer_token(scope["headers"])
    if token is None:
        return None
    kept = answers.get(batch_id)
    if kept is not None:
        found_version = await repo.read_key_and_batch_version(context.point_reads, token, batch_id)
        if found_version is None or read_only_principal(context, found_version[0]) is None:
            return None
        if found_version[1] == kept[0]:
            return kept[1]
    found = await repo.read_batch_with_key(context.point_reads, token, batch_id)
    if found is None:
        return None
    key, batch, open_shards, version = found
    if read_only_principal(context, key) is None:
        return None
    body = msgspec.json.encode(batch_object(batch, lifecycle.waiting_of(batch, open_shards)))
    answers.keep(batch.id, version, body, context.settings.status_cache_s)
    return body


async def shown_batch(context: GatewayContext, batch: Batch) -> dict[str, Any]:
    """The Batch object of a batch read directly (``context.point_reads``), with, while it runs, why it waits."""
    return batch_object(batch, await lifecycle.batch_waiting(context.point_reads, batch))


def _bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key of the ``Authorization: Bearer`` header, read as the framework reads headers, or None."""
    for name, value in headers:
        if name == b"authorization":
            return bearer_token(value.decode("latin-1"))
    return None
