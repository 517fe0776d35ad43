"""Blob storage for file contents behind a small interface.

The gateway only needs to write a stream, read it back as a stream, open it as a local file for
line-by-line work, and delete it. ``LocalBlobStore`` keeps blobs in a folder; an object-store
backend implements the same five methods.
"""

from __future__ import annotations

import abc
import os
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

CHUNK_SIZE = 1024 * 1024
WRITE_BUFFER = 4 * 1024 * 1024


class BlobStore(abc.ABC):
    """Where file bytes live. Keys are relative, slash-separated names."""

    @abc.abstractmethod
    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the chunks under ``key`` atomically; return the number of bytes written."""

    @abc.abstractmethod
    def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """Stream a blob's bytes."""

    @abc.abstractmethod
    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """A local file holding the blob, for line-by-line processing in a worker thread."""

    @abc.abstractmethod
    @contextmanager
    def writer_path(self, key: str) -> Iterator[Path]:
        """A local path to write; the blob appears under ``key`` only when the block succeeds."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """True if a blob is stored under ``key``."""

    @abc.abstractmethod
    def append_path(self, key: str) -> Path:
        """A local file that accumulates a blob by appends (durable progress of a running step)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove a blob; a missing blob is not an error."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size of a stored blob in bytes."""


class LocalBlobStore(BlobStore):
    """Blobs as files under one folder, written through a temporary name and renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"invalid blob key {key!r}")
        return path

    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        written = 0
        pending = bytearray()
        try:
            async with await anyio.open_file(tmp, "wb") as handle:
                # Network chunks are small; each write goes to a thread, so write in large pieces.
                async for chunk in chunks:
                    pending += chunk
                    written += len(chunk)
                    if len(pending) >= WRITE_BUFFER:
                        await handle.write(bytes(pending))
                        pending.clear()
                if pending:
                    await handle.write(bytes(pending))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return written

    async def iter_bytes(self, key: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self._path(key), "rb") as handle:
            while chunk := await handle.read(chunk_size):
                yield chunk

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(key)
        yield path

    @contextmanager
    def writer_path(self, key: str) -> Iterator[Path]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def append_path(self, key: str) -> Path:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size
