"""The status answers of one provider's batches, shared by the polls of one tick.

Polling every in-flight batch with its own ``GET`` costs one provider call per shard per tick. A provider
whose protocol lists batches (newest first, with the same objects a retrieve answers) can answer them all
with one page: when more than one of its batches is polled within :attr:`StatusBoard.window_s`, the board
reads the newest page once and answers every poll of that window from it. A batch not on that page (older
than the newest page) and a lone poll get their own retrieve, as before.

A status read this way is at most ``window_s`` old, and a listed answer serves one poll of its batch only: the
next poll of that batch reads a newer page or retrieves it, never the status it saw already. A batch polled
alone is always retrieved afresh. The last answer of each batch is kept for a while, so the collection that
follows a poll seeing the batch end reads its result file ids from that answer instead of asking again: a
batch that ended does not change.
A page that shows another polled batch ended says so (:meth:`StatusBoard.take_ended`), so its shard is
collected at once rather than at its own next poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.providers.base import ProviderError, ProviderRejected

log = logging.getLogger(__name__)
Batch = dict[str, Any]


@dataclass
class StatusBoard:
    """Recent batch objects of one provider, keyed by the provider's batch id (see the module docstring)."""

    window_s: float = 0.5
    """How old a listed status may be when it answers a poll; the polls within it share one list call."""
    lists: bool = True
    """False where the provider has no list endpoint: every poll retrieves its batch."""
    list_pause_s: float = 30.0
    """How long polls retrieve their own batches after a list call failed."""
    keep_s: float = 300.0
    """How long a batch is remembered after its last poll (its last answer serves :meth:`ended`)."""
    _answers: dict[str, tuple[float, Batch]] = field(default_factory=dict, repr=False)
    """The last answer about each batch polled, and when it was listed (-inf once it answered a poll: a retrieve's
    own answer, or a listed one that served its batch's poll)."""
    _answered_at: dict[str, float] = field(default_factory=dict, repr=False)
    """When each batch's last answer arrived: a list call that started before it does not replace it."""
    _polled: dict[str, float] = field(default_factory=dict, repr=False)
    _listed_at: float = field(default=float("-inf"), repr=False)
    _ended: list[str] = field(default_factory=list, repr=False)
    _reported: set[str] = field(default_factory=set, repr=False)
    _listing: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    async def read(
        self,
        batch_id: str,
        retrieve: Callable[[], Awaitable[Batch]],
        newest_page: Callable[[], Awaitable[list[Batch]]],
        has_ended: Callable[[Batch], bool],
        provider: str,
        fresh_after: float | None = None,
    ) -> Batch:
        """The batch's status object: from the shared list page (``newest_page``) when several batches are being
        polled, else from ``retrieve``. Other polled batches the page shows ended (``has_ended``) are noted for
        :meth:`take_ended`. ``provider`` names the provider in the log. A listed answer serves only if it was
        listed after ``fresh_after`` (a ``time.time()``: when the poll fell due, which a provider's webhook
        makes the moment the batch was announced ended); an older one would answer "still running" for it."""
        now = time.monotonic()
        not_before = float("-inf") if fresh_after is None else now - max(0.0, time.time() - fresh_after)
        self._forget(now)
        self._polled[batch_id] = now
        if (fresh := self._take_fresh(batch_id, now, not_before, has_ended)) is not None:
            return fresh
        if self.lists and sum(now - at < self.window_s for at in self._polled.values()) > 1:
            async with self._listing:  # concurrent polls wait for one list call, then read its answer
                if self.lists and time.monotonic() - self._listed_at >= self.window_s:
                    asked = time.monotonic()
                    try:
                        page = await newest_page()
                    except ProviderError as exc:
                        page = self._list_failed(exc, provider)
                    listed = time.monotonic()
                    self._listed_at = max(self._listed_at, listed)
                    for batch in page:
                        found = batch.get("id")
                        if found not in self._polled or self._answered_at.get(found, asked) > asked:
                            continue  # only batches being polled are kept, and a retrieve newer than the page wins
                        self._answers[found], self._answered_at[found] = (listed, batch), listed
                        if found not in self._reported and has_ended(batch):
                            self._reported.add(found)
                            if found != batch_id:  # its own poll is reading it now
                                self._ended.append(found)
            if (fresh := self._take_fresh(batch_id, time.monotonic(), not_before, has_ended)) is not None:
                return fresh
        batch = await retrieve()
        self._answers[batch_id] = (float("-inf"), batch)  # kept for ended(), never answers another poll
        self._answered_at[batch_id] = time.monotonic()
        if has_ended(batch):
            self._reported.add(batch_id)  # its own poll saw the end
        return batch

    def _list_failed(self, exc: ProviderError, provider: str) -> list[Batch]:
        """After a failed list call every poll retrieves its own batch: for good where the provider has no list
        endpoint (404, 405), else for :attr:`list_pause_s`."""
        if isinstance(exc, ProviderRejected) and exc.status_code in (404, 405):
            self.lists = False
            log.warning("provider %s: no batch list (%s); each batch is polled alone", provider, exc)
        else:
            self._listed_at = time.monotonic() + self.list_pause_s - self.window_s  # so no list before the pause ends
            log.warning("provider %s: batch list failed (%s); batches are polled alone for a while", provider, exc)
        return []

    def take_ended(self) -> list[str]:
        """Batches polled here that a list page showed ended since the last call."""
        ended, self._ended = self._ended, []
        return ended

    def ended(self, batch_id: str, has_ended: Callable[[Batch], bool]) -> Batch | None:
        """The last answer for the batch if ``has_ended`` says it ended (its result files are then final)."""
        entry = self._answers.get(batch_id)
        return entry[1] if entry is not None and has_ended(entry[1]) else None

    def _take_fresh(
        self, batch_id: str, now: float, not_before: float, has_ended: Callable[[Batch], bool]
    ) -> Batch | None:
        """The batch's listed answer if it is at most :attr:`window_s` old, has not answered a poll yet, and was
        listed after ``not_before`` or shows the batch ended (which no later read can change); it is then spent: a
        second poll within the window would only see the status its shard already acted on (and take no progress
        for a stall), so it lists or retrieves afresh."""
        entry = self._answers.get(batch_id)
        if entry is None or now - entry[0] >= self.window_s or (entry[0] < not_before and not has_ended(entry[1])):
            return None
        self._answers[batch_id] = (float("-inf"), entry[1])  # kept for ended()
        return entry[1]

    def _forget(self, now: float) -> None:
        """Drop batches not polled for :attr:`keep_s` (they ended and were collected, or another process polls
        them now)."""
        if self._polled and now - min(self._polled.values()) >= self.keep_s:
            self._polled = {key: at for key, at in self._polled.items() if now - at < self.keep_s}
            self._answers = {key: entry for key, entry in self._answers.items() if key in self._polled}
            self._answered_at = {key: at for key, at in self._answered_at.items() if key in self._polled}
            self._reported &= self._polled.keys()
