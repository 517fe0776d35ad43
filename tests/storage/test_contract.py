"""The blob store contract (gateway/storage/base.py), asserted identically on the local folder and on S3.

The S3 store talks to moto's standalone server over HTTP on loopback (see the ``s3_server`` fixture).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.storage import BlobMissing, BlobStore
from tests.bench import RssSampler
from tests.storage.conftest import PART_BYTES, Subject, chunks_of, pattern, read_all

MiB = 1024 * 1024


class Boom(Exception):
    """A producer's own failure."""


# --- round trips -------------------------------------------------------------------------------------------


async def test_write_stream_round_trip(subject: Subject) -> None:
    store = subject.store
    data = pattern(PART_BYTES * 2 + 12345)  # crosses two part boundaries on S3
    assert await store.write_stream("files/one", chunks_of(data)) == len(data)
    assert await store.exists("files/one")
    assert await store.size("files/one") == len(data)
    assert await read_all(store, "files/one") == data
    assert [len(c) for c in [c async for c in store.iter_bytes("files/one", chunk_size=MiB)]][:3] == [MiB] * 3


async def test_empty_blob(subject: Subject) -> None:
    store = subject.store
    assert await store.write_stream("files/empty", chunks_of(b"")) == 0
    assert await store.exists("files/empty") and await store.size("files/empty") == 0
    assert await read_all(store, "files/empty") == b""
    async with store.local_copy("files/empty") as path:
        assert path.read_bytes() == b""


async def test_concat_joins_blobs_in_order(subject: Subject) -> None:
    store = subject.store
    parts = {"shards/a.out": pattern(PART_BYTES + 7), "shards/b.out": b"", "shards/c.out": b"last line\n"}
    for key, data in parts.items():
        await store.write_stream(key, chunks_of(data))
    joined = b"".join(parts.values())
    assert await store.concat("outputs/b/output.jsonl", list(parts)) == len(joined)
    assert await read_all(store, "outputs/b/output.jsonl") == joined
    assert await store.concat("outputs/b/output.jsonl", ["shards/c.out", "shards/c.out"]) == 20, "an overwrite"
    assert await read_all(store, "outputs/b/output.jsonl") == b"last line\n" * 2
    assert await read_all(store, "shards/a.out") == parts["shards/a.out"], "the parts are kept"
    assert await store.concat("outputs/none.jsonl", []) == 0 and await store.size("outputs/none.jsonl") == 0
    assert subject.hidden_leftovers() == []


async def test_concat_with_a_missing_part_raises_blob_missing_and_leaves_nothing(subject: Subject) -> None:
    store = subject.store
    await store.write_stream("shards/a.out", chunks_of(pattern(MiB)))
    await store.write_stream("outputs/kept.jsonl", chunks_of(b"kept\n"))
    for target in ("outputs/new.jsonl", "outputs/kept.jsonl"):
        with pytest.raises(BlobMissing) as raised:
            await store.concat(target, ["shards/a.out", "shards/gone.out"])
        assert raised.value.key == "shards/gone.out"
    assert not await store.exists("outputs/new.jsonl")
    assert await read_all(store, "outputs/kept.jsonl") == b"kept\n", "a failed overwrite keeps the old blob"
    assert subject.hidden_leftovers() == []


async def test_overwrite_replaces_the_blob(subject: Subject) -> None:
    store = subject.store
    await store.write_stream("outputs/b/output.jsonl", chunks_of(b"first version, longer\n"))
    await store.write_stream("outputs/b/output.jsonl", chunks_of(b"second\n"))
    assert await read_all(store, "outputs/b/output.jsonl") == b"second\n"
    assert [(i.key, i.size) async for i in store.list("outputs/")] == [("outputs/b/output.jsonl", 7)]


async def test_put_file_stores_and_consumes_the_file(subject: Subject, tmp_path: Path) -> None:
    store = subject.store
    data = pattern(PART_BYTES + 999)
    source = tmp_path / "shard.jsonl"
    source.write_bytes(data)
    assert await store.put_file("shards/b/00000.in.jsonl", source) == len(data)
    assert not source.exists()
    assert await read_all(store, "shards/b/00000.in.jsonl") == data


async def test_staged_publishes_only_on_success(subject: Subject) -> None:
    store = subject.store
    async with store.staged("shards/b/00000.out.jsonl") as path:
        path.write_bytes(b'{"custom_id": "a"}\n')
        assert not await store.exists("shards/b/00000.out.jsonl")
    assert await read_all(store, "shards/b/00000.out.jsonl") == b'{"custom_id": "a"}\n'

    with pytest.raises(Boom):
        async with store.staged("shards/b/00001.out.jsonl") as path:
            path.write_bytes(b"half")
            raise Boom
    assert not await store.exists("shards/b/00001.out.jsonl")
    assert list(store.scratch.iterdir()) == []

    async with store.staged("shards/b/00002.out.jsonl"):
        pass  # nothing written: an empty blob
    assert await store.size("shards/b/00002.out.jsonl") == 0


# --- atomic publication --------------------------------------------------------------------------------------


async def test_a_reader_never_sees_a_blob_being_written(subject: Subject) -> None:
    store = subject.store
    await store.write_stream("files/f", chunks_of(b"old contents\n"))
    halfway, finish = [asyncio.Event(), asyncio.Event()], asyncio.Event()
    data = pattern(PART_BYTES + MiB)
    cut = PART_BYTES + MiB // 2  # past the first part: on S3 one part is uploaded meanwhile

    async def slow(writer: int) -> AsyncIterator[bytes]:
        async for chunk in chunks_of(data[:cut]):
            yield chunk
        halfway[writer].set()
        await finish.wait()
        async for chunk in chunks_of(data[cut:]):
            yield chunk

    # An overwrite of files/f and a new files/g, both stopped half-way.
    writes = asyncio.gather(store.write_stream("files/f", slow(0)), store.write_stream("files/g", slow(1)))
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in halfway)), 30)
    await asyncio.sleep(0.5)
    assert await read_all(store, "files/f") == b"old contents\n"
    assert await store.size("files/f") == len(b"old contents\n")
    assert not await store.exists("files/g")
    with pytest.raises(BlobMissing):
        await store.size("files/g")
    assert sorted([i.key async for i in store.list("files/")]) == ["files/f"]
    finish.set()
    assert await asyncio.wait_for(writes, 60) == [len(data), len(data)]
    assert await read_all(store, "files/f") == data
    assert await read_all(store, "files/g") == data
    assert subject.hidden_leftovers() == []


async def test_a_failed_write_leaves_nothing(subject: Subject) -> None:
    store = subject.store
    await store.write_stream("files/kept", chunks_of(b"kept\n"))

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in chunks_of(pattern(PART_BYTES * 2 + MiB)):  # two parts uploaded before it fails
            yield chunk
        raise Boom("the client went away")

    with pytest.raises(Boom, match="the client went away"):
        await store.write_stream("files/broken", failing())
    with pytest.raises(Boom):
        await store.write_stream("files/kept", failing())  # a failed overwrite keeps the old blob
    assert not await store.exists("files/broken")
    assert await read_all(store, "files/kept") == b"kept\n"
    assert [i.key async for i in store.list("files/")] == ["files/kept"]
    assert subject.hidden_leftovers() == []


async def test_a_cancelled_write_leaves_nothing(subject: Subject) -> None:
    store = subject.store
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        block = pattern(MiB)
        for _ in range(7):
            yield block
        started.set()
        while True:
            await asyncio.sleep(0.01)
            yield block

    task = asyncio.ensure_future(store.write_stream("files/cancelled", endless()))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await store.exists("files/cancelled")
    assert [i.key async for i in store.list("")] == []
    assert subject.hidden_leftovers() == []


# --- reads -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 1),
        (10, 20),
        (8 * MiB - 3, 8 * MiB + 5),  # across a read range boundary of the S3 store
        (9 * MiB, None),
        (5, 5),  # empty range
        (9 * MiB + 100, 20 * MiB),  # end past the end: up to the end
        (20 * MiB, None),  # start past the end: nothing
    ],
)
async def test_ranges(subject: Subject, start: int, end: int | None) -> None:
    data = pattern(9 * MiB + 123)
    await subject.store.write_stream("files/ranged", chunks_of(data))
    kwargs = {"start": start} if end is None else {"start": start, "end": end}
    assert await read_all(subject.store, "files/ranged", chunk_size=100_000, **kwargs) == data[start:end]


async def test_chunk_sizes(subject: Subject) -> None:
    data = pattern(3 * MiB + 7)
    await subject.store.write_stream("files/c", chunks_of(data))
    pieces = [c async for c in subject.store.iter_bytes("files/c", chunk_size=MiB)]
    assert b"".join(pieces) == data
    assert all(len(p) <= MiB for p in pieces) and len(pieces) == 4


async def test_local_copy_holds_the_bytes_and_leaves_no_scratch_file(subject: Subject) -> None:
    store = subject.store
    data = pattern(9 * MiB + 1)
    await store.write_stream("files/copied", chunks_of(data))
    async with store.local_copy("files/copied") as path:
        assert path.read_bytes() == data
    assert list(store.scratch.iterdir()) == []
    with pytest.raises(Boom):
        async with store.local_copy("files/copied") as path:
            assert path.stat().st_size == len(data)
            raise Boom
    assert list(store.scratch.iterdir()) == []
    assert await read_all(store, "files/copied") == data  # the blob itself stays


# --- listing and removal --------------------------------------------------------------------------------------

KEYS = {
    "shards/b1/00000.in.jsonl": 3,
    "shards/b1/00000.fanout/run-000001.jsonl": 5,
    "shards/b1/00000.fanout/run-000002.jsonl": 7,
    "shards/b1/00001.in.jsonl": 11,
    "shards/b10/00000.in.jsonl": 13,
    "files/file-1": 17,
}


async def stored(store: BlobStore) -> None:
    for key, size in KEYS.items():
        await store.write_stream(key, chunks_of(b"x" * size))


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", set(KEYS)),
        ("shards/", {k for k in KEYS if k.startswith("shards/")}),
        ("shards/b1/", {k for k in KEYS if k.startswith("shards/b1/")}),
        ("shards/b1", {k for k in KEYS if k.startswith("shards/b1")}),  # b10 too: a string prefix
        ("shards/b1/00000", {k for k in KEYS if k.startswith("shards/b1/00000")}),
        ("shards/b1/00000.fanout/", {k for k in KEYS if ".fanout/" in k}),
        ("shards/b2/", set()),
        ("nothing", set()),
    ],
)
async def test_list_by_prefix(subject: Subject, prefix: str, expected: set[str]) -> None:
    before = time.time()
    await stored(subject.store)
    listed = [info async for info in subject.store.list(prefix)]
    assert sorted(info.key for info in listed) == sorted(expected)
    assert all(info.size == KEYS[info.key] for info in listed)
    # Object stores keep whole seconds.
    assert all(before - 2 <= info.modified_at <= time.time() + 2 for info in listed)


async def test_delete_and_delete_prefix(subject: Subject) -> None:
    store = subject.store
    await stored(store)
    await store.delete("files/file-1")
    await store.delete("files/file-1")  # a missing blob is no error
    await store.delete("files/never-stored")
    assert not await store.exists("files/file-1")
    await store.delete_prefix("shards/b1/00000.fanout/")
    assert {i.key async for i in store.list("")} == set(KEYS) - {"files/file-1"} - {k for k in KEYS if ".fanout/" in k}
    await store.delete_prefix("shards/b1/")
    assert {i.key async for i in store.list("")} == {"shards/b10/00000.in.jsonl"}
    await store.delete_prefix("shards/none/")


async def test_missing_blobs_raise_blob_missing(subject: Subject) -> None:
    store = subject.store
    assert not await store.exists("files/missing")
    with pytest.raises(BlobMissing) as raised:
        await store.size("files/missing")
    assert raised.value.key == "files/missing"
    with pytest.raises(BlobMissing):
        await read_all(store, "files/missing")
    with pytest.raises(BlobMissing):
        await read_all(store, "files/missing", start=3, end=9)
    with pytest.raises(BlobMissing):
        async with store.local_copy("files/missing"):
            pass
    assert list(store.scratch.iterdir()) == []


@pytest.mark.parametrize("key", ["", "/abs", "../outside", "a/\x00"])
async def test_invalid_keys_are_refused(subject: Subject, key: str) -> None:
    with pytest.raises(ValueError):
        await subject.store.write_stream(key, chunks_of(b"x"))
    with pytest.raises(ValueError):
        await subject.store.exists(key)


# --- memory ----------------------------------------------------------------------------------------------------

LARGE = 256 * MiB
RSS_HEADROOM = 64 * MiB
"""Growth allowed while LARGE bytes stream through: a few parts (S3: 5 MiB parts, two in flight)."""


async def test_large_streamed_upload_keeps_memory_flat(subject: Subject) -> None:
    block = pattern(64 * 1024)

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(LARGE // len(block)):
            yield block

    sampler = RssSampler(os.getpid(), interval=0.01)
    baseline = sampler.process.memory_info().rss
    sampler.start()
    try:
        written = await subject.store.write_stream("files/large", stream())
    finally:
        peak = sampler.stop()
    assert written == LARGE and await subject.store.size("files/large") == LARGE
    growth = peak - baseline
    assert growth < RSS_HEADROOM, f"RSS grew by {growth / MiB:.0f} MiB while streaming {LARGE // MiB} MiB"
    await subject.store.delete("files/large")
