"""OpenAI's batch webhooks, as the emulator sends them (provider-apis.md, section 9.A).

When a batch ends, a ``POST`` goes to the endpoint configured for the provider (``webhook_url``) with a thin
event, ``{"id": "evt_...", "object": "event", "created_at": <when it ended>, "type": "batch.completed",
"data": {"id": "batch_..."}}`` (``batch.failed``, ``batch.expired``, ``batch.cancelled``), signed per Standard
Webhooks with the provider's ``whsec_`` secret: headers ``webhook-id`` (the same on every retry of one event),
``webhook-timestamp`` (this attempt) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256). The official
SDK's ``client.webhooks.unwrap`` verifies them. A delivery that fails (no answer, or not 2xx) is retried a few
times with a growing pause, then dropped: a receiver must not depend on webhooks alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

log = logging.getLogger(__name__)

EVENT_TYPES = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}
"""The event type of each terminal batch status."""
RETRY_PAUSES_S = (0.5, 2.0, 8.0)
"""Pauses between delivery attempts of one event (an attempt more than there are pauses)."""
USER_AGENT = "OpenAI/1.0 (+https://platform.openai.com/docs/webhooks)"


class WebhookSender:
    """Delivers the batch events of one emulated provider to its configured endpoint."""

    def __init__(self, url: str, secret: str, timeout_s: float = 10.0) -> None:
        self.url = url
        self._signer = Webhook(secret)
        self.timeout_s = timeout_s
        self.delivered = 0
        self.dropped = 0
        self._http: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> httpx.AsyncClient:
        """One client for every delivery of an event loop: building one takes tens of milliseconds (its TLS
        context), which would otherwise delay each event by as much."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._http, self._loop = httpx.AsyncClient(timeout=self.timeout_s), loop
        return self._http

    async def send(self, batch_id: str, status: str, ended_at: int) -> None:
        """Deliver the event of a batch that reached ``status`` (nothing for a status that is not terminal)."""
        kind = EVENT_TYPES.get(status)
        if kind is None:
            return
        event = {
            "id": f"evt_{secrets.token_hex(16)}",
            "object": "event",
            "created_at": ended_at,
            "type": kind,
            "data": {"id": batch_id},
        }
        body = json.dumps(event)
        message_id = f"wh_{secrets.token_hex(16)}"
        for attempt, pause in enumerate((*RETRY_PAUSES_S, None), 1):
            now = datetime.now(UTC).replace(microsecond=0)
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": message_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": self._signer.sign(message_id, now, body),
            }
            try:
                response = await self._client().post(self.url, content=body, headers=headers)
                if response.is_success:
                    self.delivered += 1
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if pause is None:
                break
            log.info("webhook %s for batch %s: attempt %d failed (%s)", kind, batch_id, attempt, problem)
            await asyncio.sleep(pause)
        self.dropped += 1
        log.warning("webhook %s for batch %s dropped after %d attempts (%s)", kind, batch_id, attempt, problem)
