"""A client's upload, streamed into the blob store.

The multipart body is parsed while it arrives and the file part is written straight to storage,
so memory stays flat whatever the file's size. Size and line limits are enforced on the way and
answered with a clear error before the whole body has been read; a body whose announced length is
already over the limit is refused before any of it is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from gateway.errors import GatewayError, TooLarge, bad_request
from gateway.storage import BlobStore
from gateway.textcheck import has_control_characters, invalid_characters

MAX_FIELD_BYTES = 64 * 1024
MULTIPART_ALLOWANCE = 1024 * 1024
"""Room for the form fields and part headers around the file: a body announcing more than
``max_upload_bytes`` plus this is refused before it is read."""
MAX_FILENAME_CHARS = 1024
HAND_ON_BYTES = 1024 * 1024
"""The file's bytes go to storage (and to the upload's check) in pieces of about this size."""


@dataclass
class UploadResult:
    """What the upload carried besides the stored bytes."""

    fields: dict[str, str]
    filename: str | None
    size: int
    line_count: int
    sha256: str


@dataclass
class _PartState:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    name: str | None = None
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)


@dataclass
class _Tally:
    size: int = 0
    newlines: int = 0
    last_byte: bytes = b"\n"

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        self.newlines += piece.count(b"\n")
        self.last_byte = piece[-1:] or self.last_byte

    @property
    def line_count(self) -> int:
        """Lines, counting a last line that lacks its newline."""
        return self.newlines + (0 if self.last_byte == b"\n" else 1)


class _MultipartSink:
    """Collects form fields and hands file bytes to a queue the storage writer drains."""

    def __init__(self) -> None:
        self.part = _PartState()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_chunks: list[bytes] = []
        self.file_seen = False
        self.in_file = False
        self.oversized_field: str | None = None
        self.problem: GatewayError | None = None
        """The first problem found in the parts' headers, raised by the reader."""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self.part.header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.part.header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.part = _PartState()

    def _header_end(self) -> None:
        self.part.headers[bytes(self.part.header_field).lower()] = bytes(self.part.header_value)
        self.part.header_field, self.part.header_value = bytearray(), bytearray()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        self.part.name = name.decode("utf-8", "replace") if name is not None else None
        filename = options.get(b"filename")
        if self.part.name != "file":
            return
        if self.file_seen:
            self.problem = self.problem or bad_request(
                "The upload has more than one 'file' part; send one file per request.",
                param="file",
                code="multiple_files",
            )
            return
        self.in_file = self.file_seen = True
        given = filename.decode("utf-8", "replace") if filename is not None else None
        self.filename = given[:MAX_FILENAME_CHARS] if given is not None else None
        if has_control_characters(self.filename or ""):
            self.problem = self.problem or invalid_characters("The file's name", "file")
        elif given is not None and not given.lower().endswith(".jsonl"):
            # OpenAI's rule for batch files, checked before any byte is stored (every upload here is one).
            self.problem = self.problem or bad_request(
                "Invalid file format for Batch API. Must be .jsonl", param="file", code="invalid_file_format"
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.file_chunks.append(data[start:end])
        elif len(self.part.value) + (end - start) > MAX_FIELD_BYTES:
            self.oversized_field = self.part.name
        else:
            self.part.value.extend(data[start:end])

    def _part_end(self) -> None:
        if self.in_file:
            self.in_file = False
        elif self.part.name is not None:
            self.fields[self.part.name] = self.part.value.decode("utf-8", "replace")


def check_declared_length(content_length: str | None, max_bytes: int) -> None:
    """Answer 413 at once when the announced body is larger than any acceptable upload."""
    try:
        declared = int(content_length) if content_length else None
    except ValueError:
        return  # the HTTP server refuses a malformed Content-Length before the gateway sees it
    if declared is not None and declared > max_bytes + MULTIPART_ALLOWANCE:
        raise _too_large(max_bytes)


def _too_large(max_bytes: int) -> TooLarge:
    return TooLarge(
        f"The file is larger than the {max_bytes} bytes this gateway accepts.", param="file", code="file_too_large"
    )


async def receive_upload(
    content_type: str | None,
    body: AsyncIterator[bytes],
    blobs: BlobStore,
    key: str,
    max_bytes: int,
    max_lines: int,
    digest_content: bool = True,
    on_file_piece: Callable[[bytes], Awaitable[None]] | None = None,
) -> UploadResult:
    """Parse a ``multipart/form-data`` body, storing its ``file`` part under ``key``.

    Raises a 400 :class:`~gateway.errors.InvalidRequest` for a body that is not multipart, lacks a
    file, has two file parts or a file name with control characters, and a 413
    :class:`~gateway.errors.TooLarge` as soon as the file passes ``max_bytes`` or ``max_lines`` (the
    partial blob is removed). ``digest_content`` computes the file's SHA-256, needed only to compare idempotent retries.
    ``on_file_piece`` sees every piece of the file, in order, before it is stored.
    """
    mime, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise bad_request(
            "Uploads must be sent as multipart/form-data with a 'file' part and a 'purpose' field.",
            param="file",
            code="invalid_content_type",
        )
    sink = _MultipartSink()
    parser = MultipartParser(boundary, sink.callbacks())  # type: ignore[arg-type]
    digest = hashlib.sha256()
    tally = _Tally()

    def feed(chunk: bytes | None) -> None:
        try:
            if chunk is None:
                parser.finalize()
            else:
                parser.write(chunk)
        except MultipartParseError as exc:
            message = f"The multipart body is malformed: {exc}"
            raise bad_request(message, param="file", code="invalid_multipart") from None

    async def handed_on(pieces: list[bytes]) -> bytes:
        piece = b"".join(pieces)
        tally.add(piece)
        if tally.size > max_bytes:
            raise _too_large(max_bytes)
        if tally.newlines > max_lines:
            raise TooLarge(
                f"The file has more than {max_lines} lines, the most one batch accepts.",
                param="file",
                code="too_many_lines",
            )
        if digest_content:
            digest.update(piece)
        if on_file_piece is not None:
            await on_file_piece(piece)
        return piece

    async def file_bytes() -> AsyncIterator[bytes]:
        # The network's pieces are small: they are handed on joined, so each later step works on few large ones.
        pending: list[bytes] = []
        held = 0
        async for chunk in body:
            feed(chunk)
            if sink.problem:
                raise sink.problem
            if sink.oversized_field:
                raise bad_request(f"Form field '{sink.oversized_field}' is too large.", param=sink.oversized_field)
            pending += sink.file_chunks
            held += sum(map(len, sink.file_chunks))
            sink.file_chunks.clear()
            if held >= HAND_ON_BYTES:
                yield await handed_on(pending)
                pending, held = [], 0
        feed(None)
        if sink.problem:
            raise sink.problem
        if pending:
            yield await handed_on(pending)

    size = await blobs.write_stream(key, file_bytes())
    if not sink.file_seen:
        await blobs.delete(key)
        raise bad_request("The upload has no 'file' part.", param="file", code="missing_file")
    lines = tally.line_count
    if lines > max_lines:
        await blobs.delete(key)
        raise TooLarge(
            f"The file has more than {max_lines} lines, the most one batch accepts.",
            param="file",
            code="too_many_lines",
        )
    return UploadResult(
        fields=sink.fields, filename=sink.filename, size=size, line_count=lines, sha256=digest.hexdigest()
    )
