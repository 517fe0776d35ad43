"""A provider's word that one of its batches ended: the poll of that batch comes at once.

OpenAI sends ``batch.completed`` (``failed``, ``expired``, ``cancelled``) events to an endpoint configured per
project (provider-apis.md, section 9.A): a thin event naming the batch, signed per Standard Webhooks. A provider
whose ``webhook_secret_env`` is set takes them at ``POST /webhooks/providers/<name>``. A verified event makes the
running shard that holds the batch (or an abandoned provider batch still owned) due for its poll now, and wakes
the workers; the poll then reads the batch from the provider and collects it, exactly as after any poll.

An event that arrives before the answer to the call that created the batch is stored is matched again for a
moment (:data:`MATCH_WAIT_S`, while a create call at that provider is under way). One that arrives while the
shard is being polled may be overtaken by that poll's own schedule. An event only moves a poll forward: nothing
is taken from its body but the batch id, so a replayed event costs a provider call, never a result. Polls still
run on their own schedule, for batches whose event is lost. Events of other types, and of batches no shard waits
for (ended already, or another deployment's), are acknowledged and ignored, so the provider does not retry them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import msgspec
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway import metrics
from gateway.context import GatewayContext
from gateway.db import abandoned as abandoned_db
from gateway.db import shards as shard_db
from gateway.db.unit_of_work import transaction
from gateway.errors import NotFound, bad_request
from gateway.providers.registry import UnknownProvider

log = logging.getLogger(__name__)

BATCH_ENDED = frozenset({"batch.completed", "batch.failed", "batch.expired", "batch.cancelled"})
MAX_BODY_BYTES = 64 * 1024
"""Largest event body taken (a batch event is about 150 bytes)."""


class _Data(msgspec.Struct):
    id: str = ""


class _Event(msgspec.Struct):
    type: str = ""
    data: _Data = msgspec.field(default_factory=_Data)


_event_decoder = msgspec.json.Decoder(_Event)


async def receive(context: GatewayContext, provider: str, body: bytes, headers: Mapping[str, str]) -> str:
    """Verify and act on one webhook delivery of ``provider``; what it did: ``polled`` (a waiting batch is
    polled now) or ``ignored``. Raises :class:`~gateway.errors.NotFound` for a provider that takes no webhooks
    and a 400 for a delivery that fails verification or is no event."""
    key = _key_of(context, provider)
    if key is None:  # one answer for an unknown provider and one without webhooks: callers are not authenticated
        raise NotFound(f"No provider '{provider}' takes webhooks here.")
    try:
        Webhook(key).verify(body, dict(headers), json_parse=False)
    except WebhookVerificationError as exc:
        metrics.record_provider_webhook(provider, "refused")
        log.warning("provider %s: refused a webhook: %s", provider, exc)
        raise bad_request(f"Webhook verification failed: {exc}.", code="invalid_webhook_signature") from None
    try:
        event = _event_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        metrics.record_provider_webhook(provider, "refused")
        raise bad_request("The webhook body is not an event object.", code="invalid_webhook_event") from None
    if event.type not in BATCH_ENDED or not event.data.id:
        metrics.record_provider_webhook(provider, "ignored")
        return "ignored"
    outcome = await _poll_now(context, provider, event.data.id)
    metrics.record_provider_webhook(provider, outcome)
    log.info("provider %s: %s for batch %s: %s", provider, event.type, event.data.id, _SAID[outcome])
    if outcome == "polled":
        context.work_available.set()
    return outcome


_SAID = {"polled": "polled now", "ignored": "no shard waits for it"}
MATCH_WAIT_S = 2.0
"""How long an event naming a batch no open shard holds is matched again: a batch that ends at once can be
announced before the answer to the call that created it is stored."""
MATCH_PAUSE_S = 0.1


def _key_of(context: GatewayContext, provider: str) -> bytes | None:
    """The webhook key of an enabled provider, or None (unknown provider, no key configured)."""
    try:
        config = context.providers.get(provider).config
    except UnknownProvider:
        return None
    try:
        return config.webhook_key()
    except ValueError as exc:  # refused at start-up already; the environment cannot have changed since
        log.error("provider %s: %s", provider, exc)
        return None


async def _poll_now(context: GatewayContext, provider: str, provider_batch_id: str) -> str:
    deadline = time.monotonic() + MATCH_WAIT_S
    while True:
        now = time.time()
        async with transaction(context.sessions) as session:
            holder = await shard_db.poll_ended_now(session, provider, provider_batch_id, now)
            abandoned = 0 if holder else await abandoned_db.poll_ended_now(session, provider, provider_batch_id, now)
            creating = holder is None and not abandoned and await shard_db.creating_at(session, provider)
        if holder == "running" or abandoned:
            return "polled"
        # Matched again only while a create call at the provider may not be stored yet.
        if not creating or time.monotonic() >= deadline:
            return "ignored"
        await asyncio.sleep(MATCH_PAUSE_S)
