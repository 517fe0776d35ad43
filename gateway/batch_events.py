"""Batch webhooks: each team endpoint gets ``batch.completed`` / ``failed`` / ``expired`` / ``cancelled`` events,
signed per Standard Webhooks exactly as OpenAI signs its own (its SDK's ``client.webhooks.unwrap`` verifies them).

* **What is sent.** OpenAI's thin event, ``{"id": "evt_...", "object": "event", "created_at": <when the batch
  ended>, "type": "batch.completed", "data": {"id": "batch_..."}}``, with the headers ``webhook-id`` (the same on
  every retry of the event: receivers deduplicate on it), ``webhook-timestamp`` (this attempt) and
  ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` under the endpoint's ``whsec_``
  secret).
* **From the outbox.** Events are queued from committed state (:func:`gateway.db.events.queue_new_events`), one
  per batch and endpoint, and posted by whichever worker claims them; a 2xx answer delivers, anything else (a
  redirect included: none is followed) is retried with exponential backoff until ``events.give_up_after_s``.
  Delivery is at least once: a worker that dies after the receiver answered but before recording it posts again,
  with the same ``webhook-id``.
* Neither the endpoint's URL (it may carry a token) nor its secret is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from base64 import b64encode
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

from gateway import __version__
from gateway.context import GatewayContext
from gateway.db import events as db
from gateway.db import outbox
from gateway.db.models import BatchEvent, WebhookEndpoint
from gateway.db.unit_of_work import reading, transaction
from gateway.errors import bad_request
from gateway.metrics import record_batch_event_attempt

log = logging.getLogger(__name__)

BATCH_SIZE = 50
"""Events queued per endpoint, and posted, per pass."""
USER_AGENT = f"batch-gateway/{__version__} (webhooks)"
MAX_URL_CHARS = 2048


def checked_url(value: object) -> str:
    """An http(s) URL with a host, at most 2,048 characters."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        raise bad_request(f"'url' must be an http(s) URL of at most {MAX_URL_CHARS} characters.", param="url")
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("'url' must be an http(s) URL with a host, e.g. https://example.com/hooks.", param="url")
    return value


def checked_event_types(value: object) -> list[str]:
    """A non-empty subset of the batch event types; all of them when absent."""
    if value is None:
        return list(db.EVENT_TYPES)
    if (
        not isinstance(value, list)
        or not value
        or any(not isinstance(v, str) or v not in db.EVENT_TYPES for v in value)
    ):
        raise bad_request(
            f"'event_types' must be a non-empty list of {', '.join(db.EVENT_TYPES)}.", param="event_types"
        )
    return sorted(set(value), key=db.EVENT_TYPES.index)


def new_signing_secret() -> str:
    """A ``whsec_`` secret: base64 of 32 random bytes (Standard Webhooks' form)."""
    return "whsec_" + b64encode(secrets.token_bytes(32)).decode()


def event_body(event: BatchEvent) -> str:
    """The JSON posted for an event (signed as these exact bytes)."""
    body = {
        "id": event.id,
        "object": "event",
        "created_at": event.created_at,
        "type": event.type,
        "data": {"id": event.batch_id},
    }
    return json.dumps(body, separators=(",", ":"))


def signed_headers(event: BatchEvent, body: str, secret: str, now: float) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    timestamp = datetime.fromtimestamp(int(now), UTC)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event.message_id,
        "webhook-timestamp": str(int(now)),
        "webhook-signature": Webhook(secret).sign(event.message_id, timestamp, body),
    }


async def queue_new(context: GatewayContext) -> int:
    """Queue the events of batches that ended since the last pass, for every endpoint."""
    queued = 0
    async with reading(context.sessions) as session:
        endpoints = list(await db.endpoints(session))
    for endpoint in endpoints:
        async with transaction(context.sessions) as session:
            queued += await db.queue_new_events(session, endpoint, BATCH_SIZE)
    return queued


async def _post(client: httpx.AsyncClient, endpoint: WebhookEndpoint, event: BatchEvent, timeout: float) -> int | None:
    """POST one attempt; the HTTP status, or None when no answer came (the error is logged without the URL)."""
    body = event_body(event)
    headers = signed_headers(event, body, endpoint.signing_secret, time.time())
    try:
        response = await client.post(
            endpoint.url, content=body.encode(), headers=headers, timeout=timeout, follow_redirects=False
        )
    except httpx.HTTPError as exc:
        log.info("event %s to endpoint %s: %s", event.id, endpoint.id, type(exc).__name__)
        return None
    return response.status_code


async def _attempt(context: GatewayContext, event: BatchEvent, endpoint: WebhookEndpoint) -> bool:
    settings = context.settings.events
    async with transaction(context.sessions) as session:
        claimed = await outbox.claim(session, event, time.time() + settings.timeout_s + outbox.LEASE_MARGIN_S)
    if not claimed:
        return False
    attempt = event.attempts + 1
    status = await _post(context.http, endpoint, event, settings.timeout_s)
    now = time.time()
    error = None if status is not None and 200 <= status < 300 else f"HTTP {status}" if status else "no answer"
    if error is None:
        state, next_at, outcome = "delivered", now, "delivered"
    elif now - event.queued_at >= settings.give_up_after_s:
        state, next_at, outcome = "gave_up", now, "gave_up"
        log.warning("gave up posting event %s to endpoint %s after %d attempts", event.id, endpoint.id, attempt)
    else:
        state, outcome = "pending", "failed"
        next_at = now + min(settings.backoff_s * 2 ** (attempt - 1), settings.backoff_max_s)
    async with transaction(context.sessions) as session:
        recorded = await outbox.finish(
            session, event, state=state, next_attempt_at=next_at, last_status=status, last_error=error
        )
    if not recorded:
        log.info("event %s: its attempt outlived its lease; the answer is not recorded", event.id)
        return False
    record_batch_event_attempt(outcome)
    return error is None


async def deliver_due(context: GatewayContext) -> int:
    """Post every event whose attempt is due; returns how many were delivered now."""
    async with reading(context.sessions) as session:
        due = await db.due_events(session, time.time(), BATCH_SIZE)
    results = await asyncio.gather(*(_attempt(context, event, endpoint) for event, endpoint in due))
    return sum(results)


async def run_event_loop(context: GatewayContext, stop: asyncio.Event) -> None:
    """Queue and post batch events every ``events.poll_interval_s`` until ``stop`` is set."""
    interval = context.settings.events.poll_interval_s
    while not stop.is_set():
        try:
            await queue_new(context)
            await deliver_due(context)
        except Exception:
            log.exception("batch webhook pass failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
