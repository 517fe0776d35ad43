"""Rules every stage of the data path agrees on: when a batch's work must stop, and blob names.

Stages never import one another; what two of them must decide the same way lives here.
"""

from __future__ import annotations

import time
from pathlib import Path

from gateway.db.models import Batch, Shard
from gateway.storage import BlobStore


def batch_window_closed(batch: Batch) -> bool:
    """True once the batch's completion window has passed."""
    return batch.expires_at is not None and time.time() >= batch.expires_at


def stop_reason(batch: Batch) -> str | None:
    """Why the batch's unfinished work must stop (``cancelled``, ``expired``), or None to go on."""
    if batch.status == "cancelling":
        return "cancelled"
    return "expired" if batch_window_closed(batch) else None


# --- blob names ----------------------------------------------------------------------------------


def shard_input_key(batch_id: str, seq: int) -> str:
    """Blob name of a first-placement shard's input."""
    return f"shards/{batch_id}/{seq:05d}.in.jsonl"


def shard_base(shard: Shard) -> str:
    """The prefix of every blob a shard's stages write."""
    return f"shards/{shard.batch_id}/{shard.seq:05d}"


def raw_result_key(shard: Shard) -> str:
    """Blob holding a provider batch's results as the provider gave them (before the join)."""
    return f"{shard_base(shard)}.raw.jsonl"


def fanout_parts_prefix(shard: Shard) -> str:
    """Folder of a fan-out shard's answers: one part blob per flush, named by run and sequence."""
    return f"{shard_base(shard)}.fanout/"


def moved_key(shard: Shard) -> str:
    """Blob of the input lines a collected shard hands on."""
    return f"{shard_base(shard)}.moved.jsonl"


def follow_up_key(shard: Shard, index: int) -> str:
    """Blob name of the ``index``-th follow-up shard's input of a collected shard."""
    return f"{shard_base(shard)}.next-{index}.in.jsonl"


async def gather_parts(blobs: BlobStore, prefix: str, dest: Path) -> int:
    """Concatenate every part blob under ``prefix`` into the local file ``dest``; return how many."""
    keys = sorted([info.key async for info in blobs.list(prefix)])
    with dest.open("wb") as sink:
        for key in keys:
            last = b"\n"
            async for chunk in blobs.iter_bytes(key):
                sink.write(chunk)
                last = chunk[-1:] or last
            if last != b"\n":
                sink.write(b"\n")  # a part cut short by a crash: its torn last line stays on its own
    return len(keys)
