"""What only the S3 store does: settings, the bucket prefix, credentials, refused writes, bulk removal.

Credentials are checked on a second S3 test server that enforces IAM authentication (moto's
``reset-auth``), with one user that may write and one that may only read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import Settings, StorageSettings
from gateway.storage import BlobMissing, StorageFull, open_blob_store
from gateway.storage.s3 import S3BlobStore
from tests.conftest import S3_TEST_CREDENTIALS, S3Server, loopback, start_s3_server, stop_s3_server
from tests.storage.conftest import PART_BYTES, s3_settings

pytestmark = pytest.mark.usefixtures("s3_env")
MiB = 1024 * 1024


async def chunks_of(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def read_all(store: S3BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.iter_bytes(key)])


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def store(s3_server: S3Server, bucket: str, tmp_path: Path) -> S3BlobStore:
    return S3BlobStore.from_settings(s3_settings(s3_server, bucket), tmp_path / "scratch")


# --- settings --------------------------------------------------------------------------------------------------


def test_open_blob_store_selects_s3_for_an_s3_url(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        storage=s3_settings(s3_server, bucket),  # type: ignore[arg-type]
    )
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert store.description == f"s3://{bucket}/gw"
    assert store.scratch == tmp_path / "scratch"


@pytest.mark.parametrize(
    "url",
    ["http://bucket/prefix", "s3://", "s3:///prefix", "s3://key:secret@bucket/p", "s3://bucket/a//b", "s3://b/p?x=1"],
)
def test_malformed_urls_are_refused_when_settings_load(url: str) -> None:
    with pytest.raises(ValidationError, match=r"storage\.url"):
        StorageSettings(url=url)


@pytest.mark.parametrize(
    ("endpoint", "allow_http", "message"),
    [
        ("http://minio.internal:9000", False, "allow_http"),
        ("ftp://minio.internal", True, "http"),
        ("minio.internal:9000", True, "http"),
        ("https://key:secret@minio.internal", False, "takes no credentials"),
    ],
)
def test_endpoints_are_checked_when_settings_load(endpoint: str, allow_http: bool, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StorageSettings(url="s3://bucket/p", endpoint_url=endpoint, allow_http=allow_http)
    with pytest.raises(ValidationError, match=message):
        Settings(storage={"url": "s3://bucket/p", "endpoint_url": endpoint, "allow_http": allow_http})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "values",
    [
        {"url": "s3://AKIAEXAMPLE:very-secret@bucket/p"},
        {"url": "https://AKIAEXAMPLE:very-secret@bucket.s3.amazonaws.com/p"},
        {"url": "s3://bucket/p", "endpoint_url": "https://AKIAEXAMPLE:very-secret@minio.internal"},
        {"url": "s3://bucket/p", "endpoint_url": "ftp://AKIAEXAMPLE:very-secret@minio.internal"},
    ],
)
def test_a_refused_storage_url_is_not_repeated_in_the_message(values: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as refused:
        StorageSettings(**values)  # type: ignore[arg-type]
    messages = " ".join(error["msg"] for error in refused.value.errors())
    assert "credentials" in messages and "very-secret" not in messages


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHGW_STORAGE__URL", "s3://my-bucket/batch/")
    monkeypatch.setenv("BATCHGW_STORAGE__ENDPOINT_URL", "https://minio.internal:9000")
    monkeypatch.setenv("BATCHGW_STORAGE__MULTIPART_PART_BYTES", str(8 * MiB))
    storage = Settings().storage
    assert (storage.url, storage.endpoint_url, storage.multipart_part_bytes) == (
        "s3://my-bucket/batch/",
        "https://minio.internal:9000",
        8 * MiB,
    )
    assert storage.force_path_style and not storage.allow_http and storage.upload_concurrency == 2


# --- layout in the bucket ------------------------------------------------------------------------------------------


async def test_blobs_live_under_the_url_prefix(s3_server: S3Server, bucket: str, store: S3BlobStore) -> None:
    await store.write_stream("files/file-1", chunks_of(b"abc"))
    async with store.staged("shards/b/00000.out.jsonl") as path:
        path.write_bytes(b"line\n")
    s3_server.client().put_object(Bucket=bucket, Key="elsewhere/x", Body=b"not ours")
    s3_server.client().put_object(Bucket=bucket, Key="gwx/y", Body=b"not ours either")
    assert s3_server.keys(bucket) == {
        "gw/files/file-1": 3,
        "gw/shards/b/00000.out.jsonl": 5,
        "elsewhere/x": 8,
        "gwx/y": 15,
    }
    assert sorted([info.key async for info in store.list("")]) == ["files/file-1", "shards/b/00000.out.jsonl"]
    await store.delete_prefix("")
    assert s3_server.keys(bucket) == {"elsewhere/x": 8, "gwx/y": 15}


@pytest.mark.parametrize("key", ["a//b", "a/../b", "./a", "a/"])
async def test_keys_that_are_no_object_path_are_refused(store: S3BlobStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid blob key"):
        await store.write_stream(key, chunks_of(b"x"))


async def test_delete_prefix_over_a_thousand_blobs(s3_server: S3Server, bucket: str, store: S3BlobStore) -> None:
    client = s3_server.client()

    def put(n: int) -> None:
        client.put_object(Bucket=bucket, Key=f"gw/shards/b/{n:05d}.fanout/part.jsonl", Body=b"x")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(1005)))  # more than one listing page and one bulk delete
    client.put_object(Bucket=bucket, Key="gw/shards/c/keep.jsonl", Body=b"y")
    assert len([info async for info in store.list("shards/b/")]) == 1005
    await store.delete_prefix("shards/b/")
    assert s3_server.keys(bucket) == {"gw/shards/c/keep.jsonl": 1}


async def test_a_blob_replaced_while_it_is_read_fails_the_read(store: S3BlobStore) -> None:
    # Five read ranges: the later ones are asked for after the blob was replaced.
    await store.write_stream("outputs/b/output.jsonl", chunks_of(b"a" * (40 * MiB)))
    reader = store.iter_bytes("outputs/b/output.jsonl")
    assert await anext(reader) == b"a" * MiB
    await store.write_stream("outputs/b/output.jsonl", chunks_of(b"b" * (40 * MiB)))
    with pytest.raises(OSError, match="replaced while it was read"):
        async for _ in reader:
            pass


async def test_a_consumer_stopping_early_leaves_no_request_running(store: S3BlobStore) -> None:
    await store.write_stream("files/long", chunks_of(b"z" * (40 * MiB)))
    reader = store.iter_bytes("files/long")
    await anext(reader)
    await reader.aclose()
    await asyncio.sleep(0)
    pending = [t for t in asyncio.all_tasks() if "_get_range" in repr(t.get_coro())]
    assert pending == []


# --- credentials and refused writes ---------------------------------------------------------------------------------


@dataclass
class AuthServer:
    """An S3 test server that checks every request's signature and the signer's IAM policy."""

    server: S3Server
    bucket: str
    writer: dict[str, str]
    reader: dict[str, str]

    def client(self) -> object:
        return self.server.client(
            aws_access_key_id=self.writer["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.writer["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="module")
def auth_server() -> Iterator[AuthServer]:
    pytest.importorskip("moto.server", reason="moto[server] (test extra) is the S3 test server")
    server = start_s3_server()
    try:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        bucket = server.new_bucket()

        def user(name: str, actions: list[str]) -> dict[str, str]:
            iam.create_user(UserName=name)
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            iam.put_user_policy(UserName=name, PolicyName="blobs", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=name)["AccessKey"]
            return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

        writer = user("gateway", ["s3:*"])
        reader = user("auditor", ["s3:GetObject", "s3:ListBucket"])
        # From now on every request must be signed by a known user and allowed by its policy.
        loopback.post(f"{server.endpoint_url}/moto-api/reset-auth", content=b"0", timeout=10).raise_for_status()
        yield AuthServer(server, bucket, writer, reader)
    finally:
        stop_s3_server(server)


def store_as(auth: AuthServer, tmp_path: Path) -> S3BlobStore:
    """A store built from the credentials now in the environment."""
    return S3BlobStore.from_settings(s3_settings(auth.server, auth.bucket), tmp_path / "scratch")


async def test_credentials_from_the_environment(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in auth_server.writer.items():
        monkeypatch.setenv(name, value)
    store = store_as(auth_server, tmp_path)
    await store.write_stream("files/env", chunks_of(b"signed\n"))
    assert await read_all(store, "files/env") == b"signed\n"


async def test_wrong_credentials_fail_without_showing_the_secret(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", auth_server.writer["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789")
    store = store_as(auth_server, tmp_path)
    with pytest.raises(StorageFull) as refused:
        await store.write_stream("files/nope", chunks_of(b"x"))
    with pytest.raises(OSError) as unreadable:
        await store.size("files/env")
    for error in (refused.value, unreadable.value):
        assert "wrong-secret" not in str(error)
        assert auth_server.writer["AWS_SECRET_ACCESS_KEY"] not in str(error)


async def test_credentials_from_a_profile(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("boto3", reason="profiles are read through boto3")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[batch]\n"
        f"aws_access_key_id = {auth_server.writer['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {auth_server.writer['AWS_SECRET_ACCESS_KEY']}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_PROFILE", "batch")
    store = store_as(auth_server, tmp_path)
    await store.write_stream("files/profile", chunks_of(b"from the profile\n"))
    assert await read_all(store, "files/profile") == b"from the profile\n"


async def test_a_forbidden_write_is_storage_full_and_leaves_nothing(
    auth_server: AuthServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in auth_server.reader.items():
        monkeypatch.setenv(name, value)
    store = store_as(auth_server, tmp_path)
    with pytest.raises(StorageFull, match="refused to store 'files/big'"):
        await store.write_stream("files/big", chunks_of(b"x" * (PART_BYTES + MiB)))
    source = tmp_path / "shard.jsonl"
    source.write_bytes(b"line\n")
    with pytest.raises(StorageFull):
        await store.put_file("shards/b/00000.in.jsonl", source)
    with pytest.raises(StorageFull):
        async with store.staged("shards/b/00000.out.jsonl") as path:
            path.write_bytes(b"result\n")
    assert list(store.scratch.iterdir()) == []
    with pytest.raises(BlobMissing):
        await store.size("files/big")  # reading is allowed: the blob is simply not there
    writer = auth_server.client()
    keys = [item["Key"] for item in writer.list_objects_v2(Bucket=auth_server.bucket).get("Contents", [])]  # type: ignore[attr-defined]
    assert not [key for key in keys if key.startswith(("gw/files/big", "gw/shards/"))]
    assert not writer.list_multipart_uploads(Bucket=auth_server.bucket).get("Uploads")  # type: ignore[attr-defined]
