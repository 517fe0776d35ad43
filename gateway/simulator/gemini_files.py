"""The Gemini File API as the batch emulator needs it, plus the helpers both Gemini modules share.

Resumable upload: ``POST /upload/v1beta/files`` with ``X-Goog-Upload-Protocol: resumable`` and
``X-Goog-Upload-Command: start`` answers the upload URL in ``x-goog-upload-url``; one ``upload, finalize``
call at offset 0 then sends the bytes and gets ``{"file": File}``. Files are read with ``GET /v1beta/files/{id}``,
removed with ``DELETE``, and their bytes come from ``GET /download/v1beta/files/{id}:download?alt=media``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.response import File

from gateway.simulator.errors import ApiError
from gateway.simulator.file_store import StoredFile, download
from gateway.simulator.model import random_id
from gateway.simulator.state import DAY_S, EmulatorState, emulator_of, note
from gateway.translate.gemini import GOOGLE_STATUS_HTTP

Req = Request[Any, Any, Any]

FILE_TTL_S = 2 * DAY_S


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def invalid(message: str, status: str = "INVALID_ARGUMENT") -> ApiError:
    """An error answer with a Google canonical status (the HTTP status follows from it)."""
    return ApiError(GOOGLE_STATUS_HTTP[status], message, code=status)


def json_field(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    """Google's JSON mapping accepts both spellings of a field name."""
    return obj.get(camel, obj.get(snake))


async def json_object(request: Req) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}``)."""
    try:
        body = msgspec.json.decode(await request.body() or b"{}")
    except msgspec.DecodeError:
        raise invalid("Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received: expected an object.")
    return body


@dataclass
class _Upload:
    display_name: str
    mime_type: str
    length: int | None


@dataclass
class FileApi:
    """Open upload sessions and the MIME type of each stored file."""

    uploads: dict[str, _Upload] = field(default_factory=dict)
    mime_types: dict[str, str] = field(default_factory=dict)


def file_api(emu: EmulatorState) -> FileApi:
    api = getattr(emu.driver, "file_api", None)
    assert isinstance(api, FileApi), "the Gemini file routes need a driver with a file_api"
    return api


def file_resource(stored: StoredFile, mime_type: str, base_url: str) -> dict[str, Any]:
    return {
        "name": f"files/{stored.id}", "displayName": stored.filename, "mimeType": mime_type,
        "sizeBytes": str(stored.bytes), "createTime": rfc3339(stored.created_at),
        "updateTime": rfc3339(stored.created_at), "expirationTime": rfc3339(stored.expires_at or stored.created_at),
        "uri": f"{base_url}/v1beta/files/{stored.id}", "state": "ACTIVE",
        "source": "GENERATED" if stored.purpose == "batch_output" else "UPLOADED",
    }  # fmt: skip


def _reader(request: Req) -> Callable[[int], Awaitable[bytes]]:
    stream = request.stream()

    async def read(_: int) -> bytes:
        async for chunk in stream:
            if chunk:
                return chunk
        return b""

    return read


def _base_url(request: Req) -> str:
    return str(request.base_url).rstrip("/")


@post("/upload/v1beta/files", status_code=200)
async def upload_file(request: Req) -> Response[Any]:
    emu, headers = emulator_of(request), request.headers
    api = file_api(emu)
    commands = {part.strip() for part in headers.get("x-goog-upload-command", "").lower().split(",")}
    upload_id = request.query_params.get("upload_id")
    if upload_id is None:
        if headers.get("x-goog-upload-protocol") != "resumable" or "start" not in commands:
            raise invalid("Send X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start first.")
        meta = (await json_object(request)).get("file") or {}
        length = headers.get("x-goog-upload-header-content-length", "")
        upload_id = random_id("", 32)
        api.uploads[upload_id] = _Upload(
            str(json_field(meta, "displayName", "display_name") or ""),
            headers.get("x-goog-upload-header-content-type", "application/octet-stream"),
            int(length) if length.isdigit() else None,
        )
        url = f"{_base_url(request)}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        return Response(b"", headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
    session = api.uploads.pop(upload_id, None)
    if session is None:
        raise invalid("No such upload session.", "NOT_FOUND")
    if commands != {"upload", "finalize"} or headers.get("x-goog-upload-offset", "0") != "0":
        raise invalid("This emulator takes the whole file in one 'upload, finalize' call at offset 0.")
    now = emu.clock.ts()
    stored = await emu.files.save_stream(
        _reader(request), emu.max_file_bytes, filename=session.display_name, purpose="batch", created_at=now,
        expires_at=now + FILE_TTL_S,
    )  # fmt: skip
    if session.length is not None and stored.bytes != session.length:
        emu.files.delete(stored.id)
        raise invalid(f"Received {stored.bytes} bytes, announced {session.length}.")
    api.mime_types[stored.id] = session.mime_type
    emu.stats.files_uploaded += 1
    emu.stats.bytes_uploaded += stored.bytes
    note(request, file=f"files/{stored.id}", bytes=stored.bytes, lines=stored.lines)
    resource = file_resource(stored, session.mime_type, _base_url(request))
    return Response({"file": resource}, headers={"x-goog-upload-status": "final"})


def _stored(request: Req, ident: str) -> StoredFile:
    stored = emulator_of(request).files.files.get(ident)
    if stored is None:
        raise invalid(f"File files/{ident} not found.", "NOT_FOUND")
    return stored


@get("/v1beta/files/{name:str}")
async def get_file(request: Req) -> dict[str, Any]:
    stored = _stored(request, request.path_params["name"])
    mime = file_api(emulator_of(request)).mime_types.get(stored.id, "application/octet-stream")
    return file_resource(stored, mime, _base_url(request))


@delete("/v1beta/files/{name:str}", status_code=200)
async def delete_file(request: Req) -> dict[str, Any]:
    emulator_of(request).files.delete(_stored(request, request.path_params["name"]).id)
    return {}


@get("/download/v1beta/files/{name:str}")
async def download_file(request: Req) -> File:
    ident, _, action = request.path_params["name"].rpartition(":")
    if action != "download" or request.query_params.get("alt") != "media":
        raise invalid("Download with GET /download/v1beta/files/{id}:download?alt=media.")
    stored = _stored(request, ident)
    return download(stored, filename=f"{stored.id}.jsonl")


FILE_ROUTES = [upload_file, get_file, delete_file, download_file]
