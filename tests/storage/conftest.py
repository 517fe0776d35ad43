"""The blob stores under test: the local folder, and S3 on a real S3-wire server (moto's standalone server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.settings import StorageSettings
from gateway.storage import BlobStore, LocalBlobStore
from gateway.storage.local import PART_SUFFIX
from tests.conftest import S3_TEST_CREDENTIALS, S3Server

PART_BYTES = 5 * 1024 * 1024
"""The smallest part S3 accepts: tests cross part boundaries with little data."""


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``data`` in network-sized pieces."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def read_all(store: BlobStore, key: str, **kwargs: int) -> bytes:
    """The blob's bytes (``start``/``end``/``chunk_size`` as :meth:`BlobStore.iter_bytes` takes them)."""
    return b"".join([chunk async for chunk in store.iter_bytes(key, **kwargs)])


def pattern(size: int) -> bytes:
    """``size`` bytes that differ from offset to offset, so a misplaced range shows."""
    block = bytes(range(251)) * (64 * 1024 // 251 + 1)
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Subject:
    """A store under test, with a look behind it."""

    kind: str
    store: BlobStore
    hidden_leftovers: Callable[[], list[str]]
    """What a write in progress or an unfinished write keeps outside the blob namespace: the local
    store's temporary ``.part`` files, object storage's multipart uploads neither completed nor aborted."""


def s3_settings(server: S3Server, bucket: str, **overrides: object) -> StorageSettings:
    """Settings of a store in ``bucket`` under the prefix ``gw`` on the test server."""
    values: dict[str, object] = {
        "url": f"s3://{bucket}/gw",
        "endpoint_url": server.endpoint_url,
        "allow_http": True,
        "multipart_part_bytes": PART_BYTES,
    }
    return StorageSettings(**(values | overrides))  # type: ignore[arg-type]


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test server's credentials in this process's environment, where the store reads them."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in S3_TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["local", "s3"])
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    """Each contract test runs once on every store."""
    scratch = tmp_path / "scratch"
    if request.param == "local":
        root = tmp_path / "blobs"
        store = LocalBlobStore(root, scratch)
        yield Subject("local", store, lambda: [str(p) for p in root.rglob(f"*{PART_SUFFIX}")])
        return
    from gateway.storage.s3 import S3BlobStore

    request.getfixturevalue("s3_env")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    store = S3BlobStore.from_settings(s3_settings(server, bucket), scratch)
    yield Subject("s3", store, lambda: server.pending_uploads(bucket))
    empty_bucket(server, bucket)  # the server keeps objects in memory


def empty_bucket(server: S3Server, bucket: str) -> None:
    """Remove every object of a bucket."""
    keys = list(server.keys(bucket))
    client = server.client()
    for first in range(0, len(keys), 1000):
        objects = [{"Key": key} for key in keys[first : first + 1000]]
        client.delete_objects(Bucket=bucket, Delete={"Objects": objects})
