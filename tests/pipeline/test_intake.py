"""The streaming multipart intake: ``receive_upload`` fed a body in arbitrary chunks.

Exercises the parser and the limits without HTTP, so chunk boundaries can fall anywhere,
including inside the multipart boundary and between a line's bytes and its newline.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError as APIError
from gateway.pipeline.intake import MULTIPART_ALLOWANCE, UploadResult, check_declared_length, receive_upload
from gateway.storage import LocalBlobStore

HYPOTHESIS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def multipart(content: bytes, fields: dict[str, str] | None = None, filename: str = "in.jsonl") -> tuple[str, bytes]:
    """A multipart/form-data body as a client sends it: content type and bytes."""
    request = httpx.Request(
        "POST", "http://gateway/v1/files", data=fields or {"purpose": "batch"}, files={"file": (filename, content)}
    )
    return request.headers["content-type"], request.read()


async def chunked(body: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    """Yield the body in pieces of the given sizes (cycled), then the rest."""
    position, index = 0, 0
    while position < len(body):
        size = sizes[index % len(sizes)] if sizes else len(body)
        yield body[position : position + size]
        position += size
        index += 1


async def upload(
    tmp_path: Path, content_type: str, body: bytes, sizes: list[int], max_bytes: int = 10**9, max_lines: int = 10**9
) -> tuple[UploadResult, LocalBlobStore]:
    blobs = LocalBlobStore(tmp_path / "blobs")
    result = await receive_upload(content_type, chunked(body, sizes), blobs, "files/f", max_bytes, max_lines)
    return result, blobs


def stored(blobs: LocalBlobStore) -> list[Path]:
    """Every file left in the blob folder."""
    return sorted(p for p in blobs.root.rglob("*") if p.is_file())


@HYPOTHESIS
@given(
    content=st.lists(
        st.sampled_from([b'{"a": 1}', b"\n", b"\r\n", b"--", b"\xe2\x82\xac", b"x" * 50]), max_size=40
    ).map(b"".join),
    sizes=st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=5),
)
async def test_stored_bytes_equal_the_upload_whatever_the_chunking(
    tmp_path: Path, content: bytes, sizes: list[int]
) -> None:
    content_type, body = multipart(content, {"purpose": "batch", "note": "n" * 30})
    result, blobs = await upload(tmp_path, content_type, body, sizes)
    async with blobs.local_copy("files/f") as path:
        assert path.read_bytes() == content
    assert result.size == len(content)
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert result.line_count == content.count(b"\n") + (0 if content.endswith(b"\n") or not content else 1)
    assert result.fields == {"purpose": "batch", "note": "n" * 30}
    assert result.filename == "in.jsonl"


async def test_over_size_limit_is_413_and_leaves_nothing_behind(tmp_path: Path) -> None:
    content_type, body = multipart(b"x" * 5000)
    with pytest.raises(APIError) as caught:
        await upload(tmp_path, content_type, body, [1000], max_bytes=4999)
    assert caught.value.status_code == 413
    assert caught.value.code == "file_too_large"
    assert stored(LocalBlobStore(tmp_path / "blobs")) == []


@pytest.mark.parametrize("content", [b"a\nb\nc\n", b"a\nb\nc"])
async def test_more_lines_than_allowed_is_413(tmp_path: Path, content: bytes) -> None:
    content_type, body = multipart(content)
    with pytest.raises(APIError) as caught:
        await upload(tmp_path, content_type, body, [3], max_lines=2)
    assert caught.value.status_code == 413
    assert caught.value.code == "too_many_lines"
    assert stored(LocalBlobStore(tmp_path / "blobs")) == []


async def test_exactly_the_allowed_lines_and_bytes_pass(tmp_path: Path) -> None:
    content_type, body = multipart(b"a\nb\n")
    result, _ = await upload(tmp_path, content_type, body, [2], max_bytes=4, max_lines=2)
    assert (result.size, result.line_count) == (4, 2)


async def test_no_file_part_is_400(tmp_path: Path) -> None:
    request = httpx.Request("POST", "http://gateway/v1/files", data={"purpose": "batch"}, files={"other": b"x"})
    with pytest.raises(APIError) as caught:
        await upload(tmp_path, request.headers["content-type"], request.read(), [64])
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (400, "missing_file", "file")


@pytest.mark.parametrize("content_type", [None, "application/json", "multipart/form-data"])
async def test_not_multipart_is_400(tmp_path: Path, content_type: str | None) -> None:
    with pytest.raises(APIError) as caught:
        await receive_upload(content_type, chunked(b"{}", [2]), LocalBlobStore(tmp_path), "files/f", 10, 10)
    assert (caught.value.status_code, caught.value.code) == (400, "invalid_content_type")


async def test_malformed_multipart_body_is_a_400(tmp_path: Path) -> None:
    with pytest.raises(APIError) as caught:
        await receive_upload(
            "multipart/form-data; boundary=xx",
            chunked(b"garbage\r\n", [64]),
            LocalBlobStore(tmp_path),
            "files/f",
            10**6,
            10**6,
        )
    assert caught.value.status_code == 400


@HYPOTHESIS
@given(sizes=st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=5))
async def test_two_file_parts_are_400_and_leave_nothing_behind(tmp_path: Path, sizes: list[int]) -> None:
    request = httpx.Request(
        "POST",
        "http://gateway/v1/files",
        data={"purpose": "batch"},
        files=[("file", ("a.jsonl", b'{"a": 1}\n' * 20)), ("file", ("b.jsonl", b'{"b": 2}\n'))],
    )
    blobs = LocalBlobStore(tmp_path / f"blobs-{len(sizes)}-{sizes[0]}")
    with pytest.raises(APIError) as caught:
        await receive_upload(
            request.headers["content-type"], chunked(request.read(), sizes), blobs, "files/f", 10**6, 10**6
        )
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (400, "multiple_files", "file")
    assert stored(blobs) == []


@pytest.mark.parametrize("filename", [b"a\x00.jsonl", b"a\nb.jsonl", b"\x1b[2J.jsonl", b"a\x7f"])
async def test_a_file_name_with_a_control_character_is_400(tmp_path: Path, filename: bytes) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n\r\n'
        b'{"a": 1}\n\r\n--b--\r\n'
    )
    blobs = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(APIError) as caught:
        await receive_upload("multipart/form-data; boundary=b", chunked(body, [7]), blobs, "files/f", 10**6, 10**6)
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (400, "invalid_characters", "file")
    assert stored(blobs) == []


@pytest.mark.parametrize(
    ("declared", "refused"),
    [
        (None, False),
        ("", False),
        ("0", False),
        ("1000", False),
        (str(1000 + MULTIPART_ALLOWANCE), False),
        (str(1001 + MULTIPART_ALLOWANCE), True),
        (str(3 * 1024**3), True),
    ],
)
def test_an_announced_length_over_the_limit_and_its_allowance_is_413(declared: str | None, refused: bool) -> None:
    if not refused:
        check_declared_length(declared, 1000)
        return
    with pytest.raises(APIError) as caught:
        check_declared_length(declared, 1000)
    assert (caught.value.status_code, caught.value.code) == (413, "file_too_large")
