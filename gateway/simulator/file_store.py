"""The files of one emulated provider: uploads streamed to disk, result files written by finished jobs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
from litestar.response import File

from gateway.simulator.errors import ApiError, not_found
from gateway.simulator.model import random_id


class StoredFile(msgspec.Struct):
    """A file held by the emulator on disk."""

    id: str
    filename: str
    purpose: str
    created_at: int
    expires_at: int | None
    path: str
    bytes: int = 0
    lines: int = 0


DOWNLOAD_CHUNK = 8 * 1024 * 1024
"""Bytes a file download sends at a time. Each chunk waits for a turn of the event loop, which running batches
share: with 1 MiB chunks, a 30 MB result file took 2-3 s to download while five other batches ran."""


def download(stored: StoredFile, media_type: str = "application/octet-stream", filename: str | None = None) -> File:
    """The response that sends a stored file's bytes (every protocol's content download)."""
    return File(
        path=stored.path, filename=filename or stored.filename, media_type=media_type, chunk_size=DOWNLOAD_CHUNK
    )


class FileStore:
    """Files of one emulated provider, kept in a private temporary folder made on first use."""

    CHUNK = 1024 * 1024
    WRITE_BUFFER = 4 * 1024 * 1024

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.files: dict[str, StoredFile] = {}
        self._root: Path | None = None

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix=self.prefix))
        return self._root

    def remove_all(self) -> None:
        """Forget every file and delete the folder."""
        self.files.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _new(self, filename: str, purpose: str, created_at: int, expires_at: int | None) -> StoredFile:
        file_id = random_id("file-")
        return StoredFile(file_id, filename, purpose, created_at, expires_at, str(self.root / file_id))

    async def save_stream(self, read: Callable[[int], Awaitable[bytes]], max_bytes: int, **fields: Any) -> StoredFile:
        """Copy an upload chunk by chunk (``fields``: filename, purpose, created_at, expires_at).

        Raises a 413 ``ApiError`` once more than ``max_bytes`` arrived.
        """
        stored, last = self._new(**fields), b""
        with open(stored.path, "wb") as out:
            while chunk := await read(self.CHUNK):
                stored.bytes += len(chunk)
                if stored.bytes > max_bytes:
                    out.close()
                    Path(stored.path).unlink()
                    raise ApiError(413, f"File is too large: the limit is {max_bytes} bytes.", param="file")
                stored.lines += chunk.count(b"\n")
                last = chunk[-1:]
                out.write(chunk)
        stored.lines += 1 if stored.bytes and last != b"\n" else 0
        self.add(stored)
        return stored

    def write_lines(self, lines: Iterable[bytes], **fields: Any) -> StoredFile:
        """Write a JSONL file (``fields`` as for :meth:`save_stream`); it is listed once :meth:`add`-ed.

        Safe to call from a worker thread, while :meth:`add` belongs to the event loop.
        """
        stored = self._new(**fields)
        # A large buffer: each write to the file lets go of the GIL, and taking it back from the event loop's
        # thread can wait a whole switch interval (5 ms), so a write every 8 KB made a result file slow to write
        # and cost both threads CPU in hand-overs while other jobs ran.
        with open(stored.path, "wb", buffering=self.WRITE_BUFFER) as out:
            for line in lines:
                out.write(line + b"\n")
                stored.bytes += len(line) + 1
                stored.lines += 1
        return stored

    def add(self, stored: StoredFile) -> None:
        self.files[stored.id] = stored

    def get(self, file_id: str) -> StoredFile:
        if file_id not in self.files:
            raise not_found("File", file_id)
        return self.files[file_id]

    def delete(self, file_id: str) -> StoredFile:
        stored = self.files.pop(self.get(file_id).id)
        Path(stored.path).unlink(missing_ok=True)
        return stored

    def clear(self) -> None:
        for file_id in list(self.files):
            self.delete(file_id)
