"""A provider's word that one of its batches ended: the poll of that batch comes at once.

OpenAI sends ``batch.completed`` (``failed``, ``expired``, ``cancelled``) events to an endpoint configured per
project (provider-apis.md, section 9.A): a thin event naming the batch, signed per Standard Webhooks. A provider
whose ``webhook_secret_env`` is set takes them at ``POST /webhooks/providers/<name>``. A verified event makes the
running shard that holds the batch (or an abandoned provider batch still owned) due for its poll now, and wakes
the workers; the poll then reads the batch from the provider and collects it, exactly as after any poll.

OpenAI posts the events of every batch of a project to the project's one endpoint, so an event is matched
against the batches of every provider on the same project (:func:`same_project`: kind ``openai``, the same base
URL and API key), not only the one it is addressed to. An event that arrives before the answer to the call
that created the batch is stored is matched again for a moment (:data:`MATCH_WAIT_S`, while a create call at
one of those providers is under way). One that arrives while the shard is being polled stands: that poll's own
schedule does not overwrite it (:func:`gateway.db.leases.keeping_wakeups`). An event only moves a poll forward: nothing
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


def same_project(context: GatewayContext, provider: str) -> list[str]:
    """``provider`` and the other providers of the gateway on the same OpenAI project: kind ``openai`` in its own
    dialect, the same base URL and the same API key (a project's key; or none, for the same keyless endpoint).
    Their batches' events all reach the one endpoint the project names."""
    own = context.providers.get(provider).config
    siblings = [
        adapter.name
        for adapter in context.providers
        if adapter.name != provider
        and adapter.config.kind == "openai"
        and adapter.config.options.get("dialect", "openai") == "openai"
        and adapter.config.base_url == own.base_url
        and adapter.config.api_key() == own.api_key()
    ]
    return [provider, *siblings]


async def _poll_now(context: GatewayContext, provider: str, provider_batch_id: str) -> str:
    deadline = time.monotonic() + MATCH_WAIT_S
    providers = same_project(context, provider)
    while True:
        # Whether a create call may be under way is read first: one whose answer is stored after this read is
        # matched just below, so an event is never dropped between the two.
        async with transaction(context.sessions) as session:
            creating = [name for name in providers if await shard_db.creating_at(session, name)]
        found = await _make_due(context, providers, provider_batch_id)
        if found is not None:
            return "polled" if found else "ignored"
        # Matched again only while a create call at one of the providers may not be stored yet.
        if not creating or time.monotonic() >= deadline:
            return "ignored"
        await asyncio.sleep(MATCH_PAUSE_S)


async def _make_due(context: GatewayContext, providers: list[str], provider_batch_id: str) -> bool | None:
    """Make the running shard or owned abandoned provider batch holding ``provider_batch_id`` at one of
    ``providers`` due for its poll now: True if one was, False if an open shard holds it past its polls
    (collecting it already), None if nothing holds it."""
    now = time.time()
    async with transaction(context.sessions) as session:
        for name in providers:
            holder = await shard_db.poll_ended_now(session, name, provider_batch_id, now)
            if holder is not None:
                return holder == "running"
            if await abandoned_db.poll_ended_now(session, name, provider_batch_id, now):
                return True
    return None
