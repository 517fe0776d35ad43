"""The embedded default blob store: files under one local folder.

Joining blobs (a batch's merge, :meth:`LocalBlobStore.concat`) copies no byte: the joined blob is a *composite*,
a folder under the blob's name holding a hard link to each part, in order, and the mark file
:data:`COMPOSITE_MARK`. A hard link is a second name of the same bytes: the parts may be deleted afterwards (the
merge deletes the shards' blobs) and the composite still holds them, and deleting the composite deletes only its
names. Reads, sizes, listings and local copies treat a composite as the one blob it stands for. Where a link
cannot be made (the parts on another filesystem, a filesystem without hard links), the parts are copied into one
file instead, by the kernel where it can.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from io import FileIO
from pathlib import Path

import anyio

from gateway.storage.base import CHUNK_SIZE, BlobAppender, BlobInfo, BlobMissing, BlobStore, StorageFull

WRITE_BUFFER = 4 * 1024 * 1024
PART_SUFFIX = ".part"
"""Blobs being written carry this suffix until they are complete (listings skip them)."""
_KERNEL_COPY = hasattr(os, "copy_file_range")  # Linux
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF})
"""``copy_file_range`` errors that mean "copy it by reading" (another filesystem, an old kernel)."""
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
COMPOSITE_MARK = ".composite"
"""The file that makes a folder a composite blob (see the module docstring); its other files are the parts."""
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES})
"""``link`` errors that mean "join by copying" (another filesystem, no hard links there, too many links)."""


class LocalBlobStore(BlobStore):
    """Blobs as files under one folder, written through a temporary name and renamed."""

    def __init__(self, root: Path, scratch: Path | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._resolved_root = self.root.resolve()
        self.scratch = scratch or self.root / ".scratch"
        self.scratch.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self._resolved_root / key).resolve()
        if self._resolved_root not in path.parents or not key or "\x00" in key:
            raise ValueError(f"invalid blob key {key!r}")
        return path

    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        written = 0
        pending = bytearray()
        with _written_whole(self._path(key)) as tmp:
            async with await anyio.open_file(tmp, "wb") as handle:
                # Each write goes to a thread, so small chunks (a network's) are written in large pieces.
                async for chunk in chunks:
                    written += len(chunk)
                    if not pending and len(chunk) >= WRITE_BUFFER // 4:
                        await handle.write(chunk)  # large enough as it is: no copy
                        continue
                    pending += chunk
                    if len(pending) >= WRITE_BUFFER:
                        await handle.write(bytes(pending))
                        pending.clear()
                if pending:
                    await handle.write(bytes(pending))
        return written

    async def concat(self, key: str, parts: Sequence[str]) -> int:
        """The parts joined as a composite of hard links (see the module docstring), else copied by the kernel
        into one file; no byte passes through the process. Replacing a blob already stored under ``key`` by a
        composite leaves a moment when ``key`` names nothing (a merge writes under a name of its own)."""
        sources = [self._path(part) for part in parts]
        target = self._path(key)
        return await anyio.to_thread.run_sync(_link_or_join_files, sources, target, parts)

    async def put_file(self, key: str, path: Path) -> int:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size
        _remove_composite(target)
        try:
            os.replace(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Scratch on another filesystem: copy through a temporary name, then rename.
            tmp = target.with_name(target.name + PART_SUFFIX)
            try:
                await anyio.to_thread.run_sync(shutil.copyfile, path, tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
                path.unlink(missing_ok=True)
        return size

    async def iter_bytes(
        self, key: str, chunk_size: int = CHUNK_SIZE, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        parts = _composite_parts(path)
        if parts is None:
            async for chunk in _file_bytes(path, key, chunk_size, start, end):
                yield chunk
            return
        offset = 0  # where the part begins in the composite
        for part in parts:
            if end is not None and offset >= end:
                return
            size = _part_size(part, key)
            if start < offset + size:
                stop = None if end is None or end >= offset + size else end - offset
                async for chunk in _file_bytes(part, key, chunk_size, max(0, start - offset), stop):
                    yield chunk
            offset += size

    @asynccontextmanager
    async def local_copy(self, key: str) -> AsyncIterator[Path]:
        path = self._path(key)
        parts = _composite_parts(path)
        if parts is None:
            if not path.is_file():
                raise BlobMissing(key)
            yield path
            return
        # A composite is no one file: its parts are copied into a scratch file (by the kernel where it can).
        copy = scratch_file(self.scratch, suffix=".jsonl")
        try:
            await anyio.to_thread.run_sync(_copy_parts, parts, copy, key)
            yield copy
        finally:
            copy.unlink(missing_ok=True)

    @asynccontextmanager
    async def staged(self, key: str) -> AsyncIterator[Path]:
        target = self._path(key)
        tmp = target.with_name(target.name + PART_SUFFIX)
        try:
            with _storage_errors():
                target.parent.mkdir(parents=True, exist_ok=True)
            with _storage_errors():  # the caller's writes to the staged file too
                yield tmp
            with _storage_errors():
                if not tmp.exists():
                    tmp.touch()
                _remove_composite(target)
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        path = self._path(key)
        return path.is_file() or _composite_parts(path) is not None

    async def size(self, key: str) -> int:
        path = self._path(key)
        parts = _composite_parts(path)
        if parts is not None:
            return sum(_part_size(part, key) for part in parts)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise BlobMissing(key) from None

    async def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def appender(self, key: str) -> BlobAppender:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return _FileAppender(path)

    async def delete_prefix(self, prefix: str) -> None:
        if prefix.endswith("/"):
            folder = self._path(prefix.rstrip("/"))
            if folder.is_dir():
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
                return
        await super().delete_prefix(prefix)

    async def sweep_partial(self, older_than: float) -> int:
        def sweep() -> int:
            removed = 0
            for path in self._resolved_root.rglob(f"*{PART_SUFFIX}"):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < older_than:
                        if path.is_dir():  # a composite whose join was cut short
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink()
                        removed += 1
            return removed

        return await anyio.to_thread.run_sync(sweep)

    async def list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        # Walk only the folder the prefix names (or its parent, for a partial last segment).
        folder_key = prefix if prefix.endswith("/") else prefix.rpartition("/")[0]
        folder = self._path(folder_key) if folder_key.strip("/") else self._resolved_root
        if not folder.is_dir():
            return
        entries = await anyio.to_thread.run_sync(_walk, folder, self._resolved_root, self.scratch.resolve())
        for key, size, modified in entries:
            if key.startswith(prefix):
                yield BlobInfo(key, size, modified)


class _FileAppender(BlobAppender):
    """Appends go to the operating system at once (a killed process loses nothing written)."""

    def __init__(self, path: Path) -> None:
        self.handle = path.open("ab", buffering=0)

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def sync(self) -> None:
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def _join_files(sources: list[Path], target: Path, keys: Sequence[str]) -> int:
    """Write ``sources`` one after another to ``target`` through a temporary name; the bytes written."""
    written = 0
    with _written_whole(target) as tmp, tmp.open("wb", buffering=0) as out:
        # Unbuffered: the kernel's copies and this process's writes go to the same file offset.
        for source, key in zip(sources, keys, strict=True):
            written += _append_files(out, _composite_parts(source) or [source], key)  # a composite: its parts
    return written


def _link_or_join_files(sources: list[Path], target: Path, keys: Sequence[str]) -> int:
    """Join ``sources`` under ``target`` as a composite of hard links, else by copying; the bytes joined."""
    try:
        return _link_files(sources, target, keys)
    except _CannotLink:
        return _join_files(sources, target, keys)


class _CannotLink(Exception):
    """A part cannot be hard-linked into a composite: the parts are copied instead."""


def _link_files(sources: list[Path], target: Path, keys: Sequence[str]) -> int:
    """A composite of hard links to ``sources`` under ``target``, built under a temporary name and renamed."""
    tmp = target.with_name(target.name + PART_SUFFIX)
    size = 0
    try:
        _remove_any(tmp)  # a join cut short before
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for index, (source, key) in enumerate(zip(sources, keys, strict=True)):
            link = tmp / f"{index:06d}"
            try:
                if not source.is_file():
                    if source.is_dir():
                        raise _CannotLink  # a composite itself: its parts are copied
                    raise BlobMissing(key)
                os.link(source, link)
            except FileNotFoundError:
                raise BlobMissing(key) from None
            except OSError as exc:
                if exc.errno in _NO_LINK:
                    raise _CannotLink from None
                raise
            size += link.stat().st_size
        (tmp / COMPOSITE_MARK).touch()
        if target.exists() or target.is_symlink():
            # Another blob under this name: set aside, then removed once the composite stands in its place.
            old = target.with_name(f"{target.name}.old{PART_SUFFIX}")
            _remove_any(old)
            os.replace(target, old)
            os.replace(tmp, target)
            _remove_any(old)
        else:
            os.replace(tmp, target)
    except OSError as exc:
        _remove_any(tmp)
        if not isinstance(exc, BlobMissing):
            _raise_full(exc)
        raise
    except BaseException:
        _remove_any(tmp)
        raise
    return size


def _composite_parts(path: Path) -> list[Path] | None:
    """The parts of the composite blob at ``path``, in order; None when ``path`` is no composite."""
    if not (path / COMPOSITE_MARK).is_file():
        return None
    return sorted(part for part in path.iterdir() if part.name != COMPOSITE_MARK)


def _part_size(part: Path, key: str) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        raise BlobMissing(key) from None


def _remove_composite(path: Path) -> None:
    """Remove the composite blob at ``path``, if there is one, before another blob is stored there."""
    if _composite_parts(path) is not None:
        shutil.rmtree(path, ignore_errors=True)


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _copy_parts(parts: list[Path], dest: Path, key: str) -> None:
    """Write a composite's parts one after another into ``dest``."""
    with dest.open("wb", buffering=0) as out:
        _append_files(out, parts, key)


def _append_files(out: FileIO, files: list[Path], key: str) -> int:
    """Append ``files``, which store blob ``key``, to ``out`` in order; the bytes appended."""
    written = 0
    for path in files:
        try:
            handle = path.open("rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError):
            raise BlobMissing(key) from None
        with handle:
            written += _copy_all(handle, out)
    return written


async def _file_bytes(path: Path, key: str, chunk_size: int, start: int, end: int | None) -> AsyncIterator[bytes]:
    """The bytes ``start`` to ``end`` (None: the end) of the file at ``path``, which stores (part of) ``key``."""
    try:
        handle = await anyio.open_file(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        raise BlobMissing(key) from None
    async with handle:
        if start:
            await handle.seek(start)
        remaining = None if end is None else max(0, end - start)
        while remaining is None or remaining > 0:
            size = chunk_size if remaining is None else min(chunk_size, remaining)
            chunk = await handle.read(size)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


@contextlib.contextmanager
def _written_whole(path: Path) -> Iterator[Path]:
    """A temporary name for ``path``'s new content: renamed to ``path`` when the block ends, removed when it
    fails (an error meaning a full or read-only store raised as :class:`StorageFull`)."""
    tmp = path.with_name(path.name + PART_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        _remove_composite(path)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _raise_full(exc)
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _copy_all(source: FileIO, out: FileIO) -> int:
    """Append all of ``source`` to ``out``: in the kernel where it can (``copy_file_range``), else by reading
    (from where the kernel's copy stopped: both files' offsets moved with it)."""
    size = os.fstat(source.fileno()).st_size
    copied = 0
    try:
        while copied < size and _KERNEL_COPY:
            step = os.copy_file_range(source.fileno(), out.fileno(), size - copied)
            if step == 0:
                break
            copied += step
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
    source.seek(copied)
    while chunk := source.read(CHUNK_SIZE):
        view = memoryview(chunk)
        while view:
            written = out.write(view)
            if not written:
                raise OSError(errno.EIO, "the blob store wrote nothing")
            view = view[written:]
        copied += len(chunk)
    return copied


def _raise_full(exc: OSError) -> None:
    """Raise :class:`StorageFull` for an error that means the store is out of space or not writable."""
    if exc.errno in _FULL_ERRNOS:
        raise StorageFull(exc.errno, f"blob store cannot write: {os.strerror(exc.errno)}") from exc


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        _raise_full(exc)
        raise


def _walk(folder: Path, root: Path, scratch: Path) -> list[tuple[str, int, float]]:
    found: list[tuple[str, int, float]] = []
    for directory, subdirs, files in os.walk(folder):
        if Path(directory) == scratch or scratch in Path(directory).parents:
            subdirs.clear()
            continue
        for name in list(subdirs):
            path = Path(directory) / name
            if name.endswith(PART_SUFFIX):
                subdirs.remove(name)  # a composite being joined
            elif (parts := _composite_parts(path)) is not None:
                subdirs.remove(name)  # one blob, not a folder of blobs
                with contextlib.suppress(FileNotFoundError):
                    size = sum(part.stat().st_size for part in parts)
                    modified = (path / COMPOSITE_MARK).stat().st_mtime
                    found.append((path.relative_to(root).as_posix(), size, modified))
        for name in files:
            if name.endswith(PART_SUFFIX):
                continue
            path = Path(directory) / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime))
    return found


def scratch_file(folder: Path, suffix: str = "") -> Path:
    """A new empty file in ``folder`` (the caller removes it)."""
    handle, name = tempfile.mkstemp(dir=folder, suffix=suffix)
    os.close(handle)
    return Path(name)
