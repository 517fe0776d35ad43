"""Blobs in S3-compatible object storage (AWS S3, MinIO, Ceph, R2, GCS's S3 interface), through obstore.

Over 400 lines on purpose: one store, whose writes and reads share its multipart, ranged-read and error machinery.

Every API and worker replica can share one bucket, so no shared volume is needed. Writes are
streaming multipart uploads that complete only when every byte is stored, so a reader never sees a
partial blob; a write that fails is aborted. Reads are ranged GETs of a few MiB each, fetched a
little ahead of the consumer, so memory stays flat whatever the blob's size and a slow consumer
never holds a request open.

Credentials come from the environment or the provider chain of the library: ``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, web identity (IRSA: ``AWS_ROLE_ARN`` and
``AWS_WEB_IDENTITY_TOKEN_FILE``), EKS Pod Identity and ECS container credentials, the EC2 instance
role; and ``AWS_PROFILE`` (shared config and credentials files) when boto3 is installed. They are
never part of the settings and never logged.

Incomplete multipart uploads of a process killed mid-write are invisible to readers and listings;
a bucket lifecycle rule (``AbortIncompleteMultipartUpload``) removes their parts.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import anyio
import obstore
from obstore.exceptions import (
    BaseError,
    GenericError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from gateway.settings import parse_s3_url
from gateway.storage.base import CHUNK_SIZE, BlobInfo, BlobMissing, BlobStore, StorageFull
from gateway.storage.local import scratch_file

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config

    from gateway.settings import StorageSettings

log = logging.getLogger(__name__)

FEED_BYTES = 1024 * 1024
"""A streamed upload hands the library pieces of at least this size (each piece crosses threads)."""
READ_RANGE_BYTES = 8 * 1024 * 1024
"""Bytes of one ranged GET."""
STREAM_READ_AHEAD = 2
"""Ranges in flight while a blob is streamed to a consumer."""
COPY_READ_AHEAD = 4
"""Ranges in flight while a blob is copied to a local file."""
ABORT_WAIT_S = 60.0
"""How long a failed streamed upload waits for the library to abort it."""
SETTLE_S = 0.05
"""How long :meth:`S3BlobStore.close` lets the library's threads finish handing over their last results."""
_FULL_MARKERS = re.compile(
    r"\b507\b|Insufficient Storage|QuotaExceeded|StorageFull|XMinioStorageFull|EntityTooLarge", re.IGNORECASE
)


class S3BlobStore(BlobStore):
    """Blobs as objects under ``prefix`` in one bucket."""

    def __init__(
        self,
        store: S3Store,
        scratch: Path,
        *,
        part_bytes: int = 16 * 1024 * 1024,
        upload_concurrency: int = 2,
        description: str = "object storage",
    ) -> None:
        self.store = store
        self.scratch = scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.part_bytes = part_bytes
        self.upload_concurrency = upload_concurrency
        self.description = description

    @classmethod
    def from_settings(cls, settings: StorageSettings, scratch: Path) -> S3BlobStore:
        """The store ``[storage]`` names; credentials are taken from the environment only."""
        if not settings.url:
            raise ValueError("storage.url is not set")
        bucket, prefix = parse_s3_url(settings.url)
        config: S3Config = {}
        if settings.region:
            config["region"] = settings.region
        if settings.endpoint_url:
            endpoint = settings.endpoint_url.rstrip("/")
            if not settings.force_path_style:
                endpoint = _virtual_host(endpoint, bucket)
            config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = not settings.force_path_style
        client: ClientConfig = {
            "allow_http": settings.allow_http,
            "timeout": timedelta(seconds=settings.request_timeout_s),
            "connect_timeout": timedelta(seconds=min(10.0, settings.request_timeout_s)),
        }
        store = S3Store(
            bucket,
            prefix=prefix or None,
            config=config,
            client_options=client,
            credential_provider=_profile_credentials(),
        )
        where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return cls(
            store,
            scratch,
            part_bytes=settings.multipart_part_bytes,
            upload_concurrency=settings.upload_concurrency,
            description=where,
        )

    # --- writes -----------------------------------------------------------------------------------------

    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        path = _path(key)
        iterator = aiter(chunks)
        # A blob that fits in one part is stored with a single request; a larger one streams into a
        # multipart upload, which completes only once every part is stored.
        head = bytearray()
        async for chunk in iterator:
            head += chunk
            if len(head) > self.part_bytes:
                return await self._write_multipart(key, path, head, iterator)
        try:
            await obstore.put_async(self.store, path, bytes(head), use_multipart=False)
        except BaseError as exc:
            self._raise_write_error(key, exc)
        return len(head)

    async def _write_multipart(self, key: str, path: str, head: bytearray, rest: AsyncIterator[bytes]) -> int:
        # The library pulls pieces from ``feed`` on its own threads; the caller's iterator is read
        # here, in the caller's task, so a failure or a cancellation on either side ends both and
        # the multipart upload is aborted rather than left behind.
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=2)

        async def feed() -> AsyncIterator[bytes]:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

        upload = asyncio.ensure_future(
            obstore.put_async(
                self.store,
                path,
                feed(),
                use_multipart=True,
                chunk_size=self.part_bytes,
                max_concurrency=self.upload_concurrency,
            )
        )
        written = len(head)
        try:
            first = bytes(head)
            head.clear()  # the caller's buffer: only the copy handed to the library stays alive
            await _send(queue, first, upload)
            del first
            pending = bytearray()
            async for chunk in rest:
                pending += chunk
                written += len(chunk)
                if len(pending) >= FEED_BYTES:
                    await _send(queue, bytes(pending), upload)
                    pending.clear()
            if pending:
                await _send(queue, bytes(pending), upload)
            await _send(queue, None, upload)
            await asyncio.shield(upload)
        except BaseException as exc:
            await _abort(queue, upload, exc)
            if isinstance(exc, BaseError):
                self._raise_write_error(key, exc)
            raise
        return written

    async def put_file(self, key: str, path: Path) -> int:
        target = _path(key)
        try:
            size = path.stat().st_size
            await obstore.put_async(
                self.store, target, path, chunk_size=self.part_bytes, max_concurrency=self.upload_concurrency
            )
        except BaseError as exc:
            self._raise_write_error(key, exc)
        finally:
            path.unlink(missing_ok=True)
        return size

    @asynccontextmanager
    async def staged(self, key: str) -> AsyncIterator[Path]:
        _path(key)
        tmp = scratch_file(self.scratch, suffix=".staged")
        try:
            yield tmp
            if not tmp.exists():
                tmp.touch()
            await self.put_file(key, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _raise_write_error(self, key: str, exc: BaseError) -> NoReturn:
        summary = _summary(exc)
        if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
            raise StorageFull(errno.EACCES, f"{self.description} refused to store {key!r}: {summary}") from None
        if isinstance(exc, GenericError) and _FULL_MARKERS.search(str(exc)):
            raise StorageFull(errno.ENOSPC, f"{self.description} is out of space for {key!r}: {summary}") from None
        raise OSError(errno.EIO, f"{self.description} could not store {key!r}: {summary}") from None

    # --- reads ------------------------------------------------------------------------------------------

    async def iter_bytes(
        self, key: str, chunk_size: int = CHUNK_SIZE, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        path = _path(key)
        meta = await self._head(key, path)
        stop = meta["size"] if end is None else min(end, meta["size"])
        span = max(READ_RANGE_BYTES, chunk_size)
        ranges = self._read_ranges(key, path, meta.get("e_tag"), max(0, start), stop, span, STREAM_READ_AHEAD)
        async with aclosing(ranges):  # a consumer stopping early cancels the reads in flight at once
            async for piece in ranges:
                for offset in range(0, len(piece), chunk_size):
                    yield bytes(piece[offset : offset + chunk_size])

    @asynccontextmanager
    async def local_copy(self, key: str) -> AsyncIterator[Path]:
        path = _path(key)
        meta = await self._head(key, path)
        copy = scratch_file(self.scratch, suffix=".copy")
        try:
            async with await anyio.open_file(copy, "wb") as handle:
                ranges = self._read_ranges(
                    key, path, meta.get("e_tag"), 0, meta["size"], READ_RANGE_BYTES, COPY_READ_AHEAD
                )
                async with aclosing(ranges):
                    async for piece in ranges:
                        await handle.write(piece)
            yield copy
        finally:
            copy.unlink(missing_ok=True)

    async def _read_ranges(
        self, key: str, path: str, etag: str | None, start: int, stop: int, span: int, ahead: int
    ) -> AsyncGenerator[memoryview, None]:
        """The bytes ``[start, stop)`` in ranges of ``span``, up to ``ahead`` requests in flight.

        Every range is asked for with the ETag of the object first seen, so a blob replaced while
        it is read fails the read instead of mixing two versions.
        """
        offsets = iter(range(start, stop, span))
        in_flight: deque[asyncio.Task[memoryview]] = deque()

        def launch() -> None:
            offset = next(offsets, None)
            if offset is not None:
                request = self._get_range(key, path, etag, offset, min(offset + span, stop))
                in_flight.append(asyncio.ensure_future(request))

        try:
            for _ in range(ahead):
                launch()
            while in_flight:
                piece = await in_flight.popleft()
                launch()
                yield piece
        finally:
            for task in in_flight:
                task.cancel()
            for task in in_flight:
                with suppress(BaseException):
                    await task

    async def _get_range(self, key: str, path: str, etag: str | None, start: int, stop: int) -> memoryview:
        options: dict[str, Any] = {"range": (start, stop)}
        if etag:
            options["if_match"] = etag
        try:
            result = await obstore.get_async(self.store, path, options=options)  # type: ignore[arg-type]
            return memoryview(await result.bytes_async())
        except (FileNotFoundError, NotFoundError):
            raise BlobMissing(key) from None
        except PreconditionError:
            raise OSError(errno.EAGAIN, f"blob {key!r} was replaced while it was read") from None
        except BaseError as exc:
            raise OSError(errno.EIO, f"{self.description} could not read {key!r}: {_summary(exc)}") from None

    async def _head(self, key: str, path: str) -> Any:
        try:
            return await obstore.head_async(self.store, path)
        except (FileNotFoundError, NotFoundError):
            raise BlobMissing(key) from None
        except BaseError as exc:
            raise OSError(errno.EIO, f"{self.description} could not read {key!r}: {_summary(exc)}") from None

    async def exists(self, key: str) -> bool:
        try:
            await self._head(key, _path(key))
        except BlobMissing:
            return False
        return True

    async def size(self, key: str) -> int:
        return int((await self._head(key, _path(key)))["size"])

    # --- listing and removal ----------------------------------------------------------------------------

    async def list(self, prefix: str) -> AsyncIterator[BlobInfo]:
        # The library lists whole path segments: list the folder the prefix names (or its parent,
        # for a partial last segment) and keep the keys that start with the prefix.
        folder = prefix if prefix.endswith("/") else prefix.rpartition("/")[0]
        folder = folder.strip("/")
        try:
            stream = obstore.list(self.store, folder or None, chunk_size=1000)
            async for batch in stream:
                for meta in batch:
                    name = str(meta["path"])
                    if name.startswith(prefix):
                        yield BlobInfo(name, int(meta["size"]), meta["last_modified"].timestamp())
        except BaseError as exc:
            raise OSError(errno.EIO, f"{self.description} could not list {prefix!r}: {_summary(exc)}") from None

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self.store, _path(key))
        except (FileNotFoundError, NotFoundError):
            return
        except BaseError as exc:
            raise OSError(errno.EIO, f"{self.description} could not delete {key!r}: {_summary(exc)}") from None

    async def close(self) -> None:
        """Let the library's threads finish handing over their last results before the process may end.

        The library answers each call from a thread of its own, which still needs the GIL for a moment after the
        awaiting task has its result (to wake the event loop). Python 3.11 makes a thread that wakes while the
        interpreter is finalizing exit in the middle of its call, which aborts the process from the library's
        thread (SIGABRT): one-shot commands such as ``batchgw gc`` on object storage ended so, now and then, after
        their work was done. A short sleep lets the GIL go to those threads first."""
        await asyncio.sleep(SETTLE_S)

    async def delete_prefix(self, prefix: str) -> None:
        keys = [info.key async for info in self.list(prefix)]
        for first in range(0, len(keys), 1000):  # one bulk request per 1,000 keys, the S3 maximum
            await self._delete_many(keys[first : first + 1000])

    async def _delete_many(self, keys: Sequence[str]) -> None:
        try:
            await obstore.delete_async(self.store, [_path(key) for key in keys])
        except (FileNotFoundError, NotFoundError):
            return
        except BaseError as exc:
            raise OSError(
                errno.EIO, f"{self.description} could not delete {len(keys)} blobs: {_summary(exc)}"
            ) from None


# --- helpers ----------------------------------------------------------------------------------------------


def _path(key: str) -> str:
    """The key as an object path; the same keys as the local store are valid."""
    if (
        not key
        or key.startswith("/")
        or any(segment in ("", ".", "..") for segment in key.split("/"))
        or any(ord(char) < 32 for char in key)
    ):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def _virtual_host(endpoint: str, bucket: str) -> str:
    """``https://host`` as ``https://bucket.host`` (virtual-hosted-style requests name the bucket in the host)."""
    parts = urlsplit(endpoint)
    if parts.netloc.startswith(f"{bucket}."):
        return endpoint
    return urlunsplit(parts._replace(netloc=f"{bucket}.{parts.netloc}"))


def _profile_credentials() -> Callable[[], Any] | None:
    """Credentials of ``AWS_PROFILE`` through boto3, which reads the shared config files the library does not.

    Only when a profile is named and no keys or web identity are in the environment: those the
    library reads itself.
    """
    if not os.environ.get("AWS_PROFILE") or os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return None
    try:
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        raise ValueError(
            "AWS_PROFILE is set, but profiles need boto3: install batch-gateway[aws-profiles], "
            "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    return Boto3CredentialProvider()


def _summary(exc: BaseException) -> str:
    """The first line of a library error (its later lines repeat the request and response)."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


async def _send(
    queue: asyncio.Queue[bytes | BaseException | None], item: bytes | None, upload: asyncio.Future[Any]
) -> None:
    """Hand one piece to the upload, unless the upload has already ended (then raise its error)."""
    if upload.done():
        upload.result()
        raise RuntimeError("the upload ended before its input")
    if not queue.full():
        queue.put_nowait(item)
        return
    put = asyncio.ensure_future(queue.put(item))
    try:
        await asyncio.wait({put, upload}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not put.done():
            put.cancel()
    if not put.done() or put.cancelled():
        upload.result()
        raise RuntimeError("the upload ended before its input")


async def _abort(
    queue: asyncio.Queue[bytes | BaseException | None], upload: asyncio.Future[Any], exc: BaseException
) -> None:
    """Make the library abort the multipart upload, and wait (a bounded time) until it has."""
    if not upload.done():
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(_UploadAborted(repr(exc)[:200]))
        await asyncio.wait({upload}, timeout=ABORT_WAIT_S)
    if upload.done() and not upload.cancelled():
        upload.exception()  # retrieved: the caller's error is the one raised
    elif not upload.done():
        log.warning(
            "a failed upload was not aborted within %.0fs; its parts stay until the bucket's lifecycle rule",
            ABORT_WAIT_S,
        )
        upload.cancel()


class _UploadAborted(Exception):
    """Ends the library's read of a streamed upload whose producer failed."""
