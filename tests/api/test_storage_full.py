"""Uploads into a blob folder that is full or read-only: 507 with a clear message, nothing left behind.

The gateway runs in its own mount namespace (``unshare --mount --map-root-user``) with a tmpfs of
1 MiB, or a read-only tmpfs, mounted on its blob folder: the kernel itself answers ENOSPC or
EROFS, nothing in the gateway is faked, and the mount vanishes with the process. The test reads
the folder through ``/proc/<pid>/root``, the gateway's own view of the filesystem. Skipped where
the kernel allows no unprivileged mount namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_files import chat_jsonl
from tests.conftest import GatewayProcess, can_mount_tmpfs, loopback

# The subject is not the database: each test runs on one of them (see tests/conftest.py).
pytestmark = pytest.mark.spread_databases

MOUNT_THEN_SERVE = 'mount -t tmpfs -o "$0" tmpfs "$1" && exec "$2" -m gateway.cli serve'


@pytest.fixture(scope="module")
def mountable(tmp_path_factory: pytest.TempPathFactory) -> None:
    if not can_mount_tmpfs(tmp_path_factory.mktemp("probe")):
        pytest.skip("no mount namespaces here (unshare --mount --map-root-user fails)")


def start_on_tmpfs(gateway_factory: Any, options: str) -> tuple[GatewayProcess, Path]:
    """A gateway whose blob folder is a tmpfs mounted with ``options``; returns it and the folder as it sees it."""
    gateway: GatewayProcess = gateway_factory()
    blobs = gateway.data_dir / "tmpfs-blobs"
    blobs.mkdir()
    gateway.extra_env["BATCHGW_BLOB_DIR"] = str(blobs)
    gateway.log_path = gateway.data_dir / "serve.log"
    command = ["unshare", "--mount", "--map-root-user", "sh", "-c", MOUNT_THEN_SERVE, options, str(blobs)]
    gateway.process = subprocess.Popen(
        [*command, sys.executable], env=gateway.env(), stdout=gateway.log_path.open("wb"), stderr=subprocess.STDOUT
    )
    gateway.wait_ready()
    assert gateway.process is not None
    return gateway, Path(f"/proc/{gateway.process.pid}/root") / blobs.relative_to("/")


def upload(gateway: GatewayProcess, key: str, content: bytes) -> httpx.Response:
    return loopback.post(
        f"{gateway.base_url}/v1/files",
        headers={"Authorization": f"Bearer {key}"},
        files={"file": ("in.jsonl", content)},
        data={"purpose": "batch"},
        timeout=60,
    )


def storage_error(response: httpx.Response) -> dict[str, Any]:
    """The 507's error: OpenAI's four keys, a server error (the client's request was fine)."""
    assert response.status_code == 507, response.text
    body = response.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "server_error" and body["error"]["code"] == "storage_full"
    assert "storage is full or cannot be written" in body["error"]["message"]
    return dict(body["error"])


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def full_disk(mountable: None, gateway_factory: Any) -> tuple[GatewayProcess, Path, str]:
    """A gateway on a 1 MiB blob folder, the folder as it sees it, and a client key."""
    gateway, blobs = start_on_tmpfs(gateway_factory, "size=1m")
    return gateway, blobs, gateway.create_key("acme")


@pytest.mark.parametrize("size", [2 * 1024**2, 12 * 1024**2])
def test_an_upload_that_fills_the_disk_is_507_and_leaves_no_partial_file(
    full_disk: tuple[GatewayProcess, Path, str], size: int
) -> None:
    """2 MiB fails at the last write, after the whole body was read; 12 MiB fails while the client still sends."""
    gateway, blobs, key = full_disk
    for leftover in files_in(blobs):
        (blobs / leftover).unlink()
    content = chat_jsonl(size // 160)
    assert len(content) > 1024**2
    storage_error(upload(gateway, key, content))
    assert files_in(blobs) == []
    # The space was given back: a small upload is stored, and no other file was.
    small = upload(gateway, key, chat_jsonl(3))
    assert small.status_code == 200, small.text
    assert files_in(blobs) == [f"files/{small.json()['id']}"]
    assert "No space left on device" in gateway.log()
    assert "Traceback" not in gateway.log()


def test_an_upload_into_a_read_only_blob_folder_is_507(mountable: None, gateway_factory: Any) -> None:
    gateway, blobs = start_on_tmpfs(gateway_factory, "size=1m,ro")
    key = gateway.create_key("acme")
    storage_error(upload(gateway, key, chat_jsonl(3)))
    assert files_in(blobs) == []
    assert "Read-only file system" in gateway.log()
