"""The local folder store's own behaviour beyond the contract: blobs joined as composites of hard links (a batch's
merge takes no space and copies no byte), and a disk that fills.

The full-disk test runs the store in a process of its own, in a mount namespace where a 1 MiB tmpfs is its folder,
so the kernel itself answers ENOSPC. Skipped where the kernel allows no unprivileged mount namespaces.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.storage import BlobMissing
from gateway.storage.local import COMPOSITE_MARK, PART_SUFFIX, LocalBlobStore
from tests.conftest import can_mount_tmpfs
from tests.storage.conftest import chunks_of, pattern, read_all

MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", tmp_path / "scratch")


async def joined(store: LocalBlobStore) -> bytes:
    """Three parts (one empty) stored and joined under ``outputs/b/output.jsonl``; the bytes they hold."""
    parts = {"shards/a.out": pattern(MiB + 7), "shards/b.out": b"", "shards/c.out": b"last line\n"}
    for key, data in parts.items():
        await store.write_stream(key, chunks_of(data))
    assert await store.concat("outputs/b/output.jsonl", list(parts)) == MiB + 17
    return b"".join(parts.values())


async def test_a_joined_blob_links_its_parts_and_outlives_them(store: LocalBlobStore) -> None:
    data = await joined(store)
    folder = store.root / "outputs/b/output.jsonl"
    assert (folder / COMPOSITE_MARK).is_file()
    assert os.stat(folder / "000000").st_ino == os.stat(store.root / "shards/a.out").st_ino, "a link, not a copy"
    for key in ("shards/a.out", "shards/b.out", "shards/c.out"):
        await store.delete(key)  # what the merge does once the batch's files are published
    assert await store.exists("outputs/b/output.jsonl")
    assert await store.size("outputs/b/output.jsonl") == len(data)
    assert await read_all(store, "outputs/b/output.jsonl") == data
    async with store.local_copy("outputs/b/output.jsonl") as path:
        assert path.read_bytes() == data and path.parent == store.scratch
    assert list(store.scratch.iterdir()) == [], "the local copy is removed after use"
    await store.delete("outputs/b/output.jsonl")
    assert not await store.exists("outputs/b/output.jsonl") and not folder.exists()
    with pytest.raises(BlobMissing):
        await store.size("outputs/b/output.jsonl")


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (5, 100), (MiB, MiB + 8), (MiB + 6, None), (MiB + 7, MiB + 12), (MiB + 16, None), (MiB + 17, None)],
)
async def test_ranges_of_a_joined_blob_cross_its_parts(store: LocalBlobStore, start: int, end: int | None) -> None:
    data = await joined(store)
    assert await read_all(store, "outputs/b/output.jsonl", start=start, end=end) == data[start:end]


async def test_a_joined_blob_is_listed_as_one_blob_and_its_links_never_as_blobs(store: LocalBlobStore) -> None:
    data = await joined(store)
    await store.write_stream("outputs/b/error.jsonl", chunks_of(b"error\n"))
    listed = {info.key: info.size async for info in store.list("outputs/")}
    assert listed == {"outputs/b/output.jsonl": len(data), "outputs/b/error.jsonl": 6}
    # A join cut short (its folder still under the temporary name) is not listed, and the sweep removes it.
    unfinished = store.root / f"outputs/b/output.t9.jsonl{PART_SUFFIX}"
    unfinished.mkdir()
    os.link(store.root / "shards/c.out", unfinished / "000000")
    assert {info.key async for info in store.list("outputs/")} == set(listed)
    assert await store.sweep_partial(time.time() + 1) == 1
    assert not unfinished.exists()
    assert await read_all(store, "outputs/b/output.jsonl") == data


async def test_another_blob_stored_under_a_joined_blobs_name_replaces_it(store: LocalBlobStore) -> None:
    await joined(store)
    await store.write_stream("outputs/b/output.jsonl", chunks_of(b"rewritten\n"))
    assert await read_all(store, "outputs/b/output.jsonl") == b"rewritten\n"
    assert (store.root / "outputs/b/output.jsonl").is_file()
    assert await store.concat("outputs/b/output.jsonl", ["shards/c.out", "shards/c.out"]) == 20
    assert await read_all(store, "outputs/b/output.jsonl") == b"last line\n" * 2
    assert [str(p) for p in store.root.rglob(f"*{PART_SUFFIX}")] == []


async def test_a_joined_blob_may_be_a_part_of_another_join(store: LocalBlobStore) -> None:
    data = await joined(store)
    assert await store.concat("outputs/c/output.jsonl", ["outputs/b/output.jsonl", "shards/c.out"]) == len(data) + 10
    assert await read_all(store, "outputs/c/output.jsonl") == data + b"last line\n"
    assert (store.root / "outputs/c/output.jsonl").is_file(), "a composite part is copied, not linked"


ON_A_FULL_DISK = """
import asyncio, sys
from pathlib import Path
from gateway.storage import StorageFull
from gateway.storage.local import LocalBlobStore

async def main() -> None:
    store = LocalBlobStore(Path(sys.argv[1]) / "blobs", Path(sys.argv[1]) / "scratch")
    for name in ("a", "b"):
        await store.put_file(f"shards/{name}.out", _file(store, 300 * 1024))
    # Linked, not copied: fits although a copy of both would not (600 KB more on a 1 MiB disk holding 600 KB).
    print("joined:", await store.concat("outputs/small.jsonl", ["shards/a.out", "shards/b.out"]))
    try:  # a composite part is copied: 900 KB that do not fit
        await store.concat("outputs/big.jsonl", ["outputs/small.jsonl", "shards/a.out"])
    except StorageFull as exc:
        print("full:", exc)
    leftovers = sorted(str(p.relative_to(store.root)) for p in store.root.rglob("*") if p.is_file())
    print("left:", leftovers)
    for name in ("a", "b"):
        await store.delete(f"shards/{name}.out")
    print("kept:", await store.size("outputs/small.jsonl"))

def _file(store: LocalBlobStore, size: int) -> Path:
    path = store.scratch / "part"
    path.write_bytes(b"x" * (size - 1) + b"\\n")
    return path

asyncio.run(main())
"""
MOUNT_THEN_RUN = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$1" -c "$2" "$0"'


def test_joining_blobs_on_a_full_disk_takes_no_space_and_a_copy_that_does_not_fit_is_storage_full(
    tmp_path: Path,
) -> None:
    (tmp_path / "probe").mkdir()
    if not can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("no mount namespaces here (unshare --mount --map-root-user fails)")
    folder = tmp_path / "disk"
    folder.mkdir()
    command = ["unshare", "--mount", "--map-root-user", "sh", "-c", MOUNT_THEN_RUN, str(folder), sys.executable]
    ran = subprocess.run([*command, ON_A_FULL_DISK], capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0, ran.stderr
    assert f"joined: {600 * 1024}" in ran.stdout, ran.stdout
    assert "full: [Errno 28] blob store cannot write: No space left on device" in ran.stdout, ran.stdout
    composite = ["outputs/small.jsonl/.composite", "outputs/small.jsonl/000000", "outputs/small.jsonl/000001"]
    assert f"left: {[*composite, 'shards/a.out', 'shards/b.out']}" in ran.stdout, "no partial copy is left"
    assert f"kept: {600 * 1024}" in ran.stdout, "the joined blob holds its parts' bytes once they are deleted"
