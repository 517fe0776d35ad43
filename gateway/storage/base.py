"""The blob store contract: where file bytes live (uploads, shard inputs and results, outputs).

Keys are relative, slash-separated names. Every method is a coroutine (or an async iterator or
async context manager), so an object store can implement it over the network; the local folder
of the embedded default implements it with files. Code that must work on lines of a blob in a
worker thread asks for a local copy (:meth:`BlobStore.local_copy`) and writes results to a local
staging file that is published on success (:meth:`BlobStore.staged`).

Blobs are published whole: a reader never sees a half-written blob under its key.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

CHUNK_SIZE = 1024 * 1024


class BlobMissing(FileNotFoundError):
    """No blob is stored under the key. A stage meeting one cannot heal by retrying."""

    def __init__(self, key: str) -> None:
        super().__init__(f"blob {key!r} is not stored")
        self.key = key


class StorageFull(OSError):
    """The store refused a write for lack of space or permission; nothing was left behind."""


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob, as a listing shows it."""

    key: str
    size: int
    modified_at: float
    """Unix time of the last write."""


class BlobAppender(abc.ABC):
    """A blob that grows line by line, each write visible and durable against a process crash at once."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Append ``data``; it survives the process being killed once this returns."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make what was written durable against a machine crash too."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish appending."""


class BlobStore(abc.ABC):
    """Where file bytes live."""

    scratch: Path
    """A local folder of this process for temporary files (local copies, staged writes)."""

    @abc.abstractmethod
    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the chunks under ``key`` atomically; return the number of bytes written.

        Memory stays flat whatever the size. Raises :class:`StorageFull` when the store is out of
        space or refuses the write; no partial blob is left behind either way.
        """

    @abc.abstractmethod
    async def put_file(self, key: str, path: Path) -> int:
        """Store a local file's bytes under ``key`` and consume the file (moved or removed)."""

    @abc.abstractmethod
    def iter_bytes(
        self, key: str, chunk_size: int = CHUNK_SIZE, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream a blob's bytes, optionally only ``[start, end)``; raises :class:`BlobMissing`."""

    @abc.abstractmethod
    def local_copy(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A local file holding the blob's bytes while the block runs (read-only use).

        Raises :class:`BlobMissing` when nothing is stored under ``key``.
        """

    @abc.abstractmethod
    def staged(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A local path to write; its bytes are published under ``key`` only when the block succeeds."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool:
        """True if a blob is stored under ``key``."""

    @abc.abstractmethod
    async def size(self, key: str) -> int:
        """Size of a stored blob in bytes; raises :class:`BlobMissing`."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove a blob; a missing blob is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        """Every blob whose key starts with ``prefix`` (in no particular order)."""

    async def concat(self, key: str, parts: Sequence[str]) -> int:
        """Store the blobs ``parts``, one after another, under ``key`` atomically; return the bytes written.

        Raises :class:`BlobMissing` when a part is not stored and :class:`StorageFull` as
        :meth:`write_stream` does; nothing is left under ``key`` either way. This default streams the parts
        through the process; a store that can join blobs itself does so.
        """
        return await self.write_stream(key, self.chained(parts))

    async def chained(self, parts: Sequence[str]) -> AsyncIterator[bytes]:
        """The bytes of the blobs ``parts``, one after another (raises :class:`BlobMissing` for one not stored)."""
        for part in parts:
            async for chunk in self.iter_bytes(part):
                yield chunk

    def appender(self, key: str) -> BlobAppender | None:
        """An in-place appender for ``key``, or None when the store publishes only whole blobs."""
        return None

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every blob whose key starts with ``prefix``."""
        for key in [info.key async for info in self.list(prefix)]:
            await self.delete(key)

    async def sweep_partial(self, older_than: float) -> int:
        """Remove writes that never completed (a process killed mid-write) started before ``older_than``."""
        return 0

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default store holds none."""
