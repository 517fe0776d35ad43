"""The blob collector removes what no row names (attempts cut short, finished batches' shard blobs, expired
files) and nothing a row names, run as ``batchgw gc`` against a live gateway's database and blob folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayProcess, S3Server
from tests.engine import chat_requests, query, submit, wait_for


def test_gc_removes_unnamed_blobs_and_keeps_named_ones(gateway_factory: Any) -> None:
    gateway: GatewayProcess = gateway_factory({"BATCHGW_WORKER__ENABLED_IN_SERVE": "false"}).start()
    client = gateway.client(gateway.create_key("acme"))
    kept = client.files.create(file=("kept.jsonl", b'{"a": 1}\n'), purpose="batch")
    expiring = client.files.create(
        file=("expiring.jsonl", b'{"a": 2}\n'),
        purpose="batch",
        extra_body={"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    )
    query(gateway, "UPDATE files SET expires_at = :t WHERE id = :f", t=int(time.time()) - 1, f=expiring.id)
    blobs = gateway.data_dir / "blobs"
    [(kept_key,)] = query(gateway, "SELECT storage_key FROM files WHERE id = :f", f=kept.id)
    [(expiring_key,)] = query(gateway, "SELECT storage_key FROM files WHERE id = :f", f=expiring.id)
    strays = [
        blobs / "outputs" / "batch_gone" / "output.t7.jsonl",  # a merge attempt that never committed
        blobs / "shards" / "batch_gone" / "00000.r3.in.jsonl",  # shard input of a batch that is no more
        blobs / "files" / "file-never-committed",  # an upload whose row was never written
    ]
    # The requests' figures beside a file (small uploads are not checked while they arrive: none were stored).
    figures = [blobs / f"{key}.figures" for key in (kept_key, expiring_key, "files/file-never-committed")]
    for stray in [*strays, *figures]:
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"{}\n")
    partial = blobs / "files" / "file-cut.part"  # a write a killed process left behind
    partial.write_bytes(b"{")

    result = gateway.cli("gc", "--grace-s", "0")
    assert "removed 7 blob(s)" in result.stdout, result.stdout + result.stderr
    assert not any(stray.exists() for stray in strays) and not partial.exists()
    assert (blobs / kept_key).is_file(), "a blob a live file names was removed"
    assert figures[0].is_file(), "the figures of a live file were removed"
    assert not figures[1].exists() and not figures[2].exists(), "figures of files that are no more stayed"
    assert not (blobs / expiring_key).exists(), "an expired file's content stayed"
    assert [row[0] for row in query(gateway, "SELECT deleted FROM files WHERE id = :f", f=expiring.id)] == [True]
    assert client.files.content(kept.id).read() == b'{"a": 1}\n'


def test_gc_keeps_the_input_file_of_a_finished_batch(gateway_factory: Any) -> None:
    gateway: GatewayProcess = gateway_factory().start()
    client = gateway.client(gateway.create_key("acme"))
    batch = wait_for(client, submit(client, chat_requests(3)).id)  # no provider serves it: it fails at routing
    before = sorted(p.relative_to(gateway.data_dir) for p in (gateway.data_dir / "blobs").rglob("*") if p.is_file())
    gateway.cli("gc", "--grace-s", "0")
    after = sorted(p.relative_to(gateway.data_dir) for p in (gateway.data_dir / "blobs").rglob("*") if p.is_file())
    assert batch.status == "failed"
    # The file's content and its requests' figures, kept by its validation for routing.
    stored = Path("blobs/files") / batch.input_file_id
    assert after == before == [stored, stored.with_name(f"{stored.name}.figures")]


@pytest.mark.spread_databases  # the storage library's threads at exit, not the database, are the subject
def test_gc_on_object_storage_ends_cleanly_every_time(gateway_factory: Any, s3_server: S3Server) -> None:
    """The storage library answers from threads of its own; a one-shot command that ended while one of them was
    still handing over a result was aborted (SIGABRT, in about one run of five on PostgreSQL)."""
    gateway: GatewayProcess = gateway_factory(s3_server.storage_env(s3_server.new_bucket()))
    runs = [gateway.cli("gc", "--grace-s", "0", check=False) for _ in range(15)]
    assert [run.returncode for run in runs] == [0] * 15, [run.stderr[-500:] for run in runs if run.returncode]
    assert all("removed 0 blob(s)" in run.stdout for run in runs)
