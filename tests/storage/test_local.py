"""The local folder store on a disk that fills: joining blobs (a batch's merge) where the joined file does not
fit is :class:`~gateway.storage.base.StorageFull`, and nothing is left behind.

The store runs in a process of its own, in a mount namespace where a 1 MiB tmpfs is its folder, so the kernel
itself answers ENOSPC. Skipped where the kernel allows no unprivileged mount namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import can_mount_tmpfs

ON_A_FULL_DISK = """
import asyncio, sys
from pathlib import Path
from gateway.storage import StorageFull
from gateway.storage.local import LocalBlobStore

async def main() -> None:
    store = LocalBlobStore(Path(sys.argv[1]) / "blobs", Path(sys.argv[1]) / "scratch")
    for name in ("a", "b"):
        await store.put_file(f"shards/{name}.out", _file(store, 300 * 1024))
    assert await store.concat("outputs/small.jsonl", ["shards/a.out"]) == 300 * 1024
    await store.delete("outputs/small.jsonl")
    try:
        await store.concat("outputs/big.jsonl", ["shards/a.out", "shards/b.out"])
    except StorageFull as exc:
        print("full:", exc)
    leftovers = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    print("left:", leftovers)

def _file(store: LocalBlobStore, size: int) -> Path:
    path = store.scratch / "part"
    path.write_bytes(b"x" * (size - 1) + b"\\n")
    return path

asyncio.run(main())
"""
MOUNT_THEN_RUN = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$1" -c "$2" "$0"'


def test_joining_blobs_on_a_full_disk_is_storage_full_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "probe").mkdir()
    if not can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("no mount namespaces here (unshare --mount --map-root-user fails)")
    folder = tmp_path / "disk"
    folder.mkdir()
    command = ["unshare", "--mount", "--map-root-user", "sh", "-c", MOUNT_THEN_RUN, str(folder), sys.executable]
    ran = subprocess.run([*command, ON_A_FULL_DISK], capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert "full: [Errno 28] blob store cannot write: No space left on device" in ran.stdout, ran.stdout
    assert "left: ['shards/a.out', 'shards/b.out']" in ran.stdout, "the parts are kept, no partial join"
