"""An upload's lines checked while they arrive: the API's side (``checking_upload``) feeding a real check process
of a :class:`~gateway.cpu_pool.CpuPool` over a local socket. A clean file gets its verdict; a file with a problem,
a short stream, a busy, frozen or killed check process get none, and the upload is never held for long."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from unittest import mock

import psutil
import pytest

from gateway.cpu_pool import CpuPool
from gateway.pipeline.input_lines import UPLOAD_CHECK_VERSION, validate_input_file
from gateway.pipeline.intake import upload_check
from gateway.pipeline.intake.upload_check import checking_upload
from gateway.pipeline.line_figures import LineFigures
from gateway.settings import LimitSettings
from tests.conftest import cpu_pool_processes

CHAT = "/v1/chat/completions"
LIMITS = LimitSettings()


def lines(count: int, start: int = 0, model: str = "gpt-4o-mini") -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"r-{i}",
                "method": "POST",
                "url": CHAT,
                "body": {"model": model, "messages": [{"role": "user", "content": "x" * 400}]},
            }
        ).encode()
        + b"\n"
        for i in range(start, start + count)
    )


@pytest.fixture
async def pool() -> AsyncIterator[CpuPool]:
    checks = CpuPool(1)
    checks.warm(("gateway.pipeline.input_lines",))
    yield checks
    checks.close()


async def check(
    pool: CpuPool, content: bytes, piece: int = 65536, size: int | None = None, ran: bool | None = None
) -> dict | None:
    """Feed ``content`` in pieces as an upload would, and ask for the verdict on ``size`` bytes (default: all);
    ``ran`` asserts whether the check process ran to its end (a verdict or none of its own)."""
    async with checking_upload([pool], LIMITS) as line_check:
        for start in range(0, len(content), piece):
            await line_check.feed(content[start : start + piece])
        found = await line_check.verdict(len(content) if size is None else size)
        if ran is not None:
            await asyncio.sleep(0.5)  # a check that stopped at a problem has returned by now
            assert line_check.check_ran is ran
        return found.check if found is not None else None


async def test_a_clean_file_gets_what_its_batches_need(pool: CpuPool) -> None:
    content = lines(3000) + lines(2, start=3000, model="other-model")
    found = await check(pool, content, piece=7777)
    assert found == {
        "version": UPLOAD_CHECK_VERSION,
        "url": CHAT,
        "lines": 3002,
        "size": len(content),
        "models": {"gpt-4o-mini": 3000, "other-model": 2},
        "limits": [LIMITS.max_line_bytes, LIMITS.max_file_lines],
    }


async def test_a_clean_uploads_figures_for_routing_are_those_its_full_check_finds(
    pool: CpuPool, tmp_path: Path
) -> None:
    content = lines(3000) + lines(2, start=3000, model="other-model")
    async with checking_upload([pool], LIMITS) as line_check:
        for start in range(0, len(content), 7777):
            await line_check.feed(content[start : start + 7777])
        found = await line_check.verdict(len(content))
    path = tmp_path / "input.jsonl"
    path.write_bytes(content)
    assert found is not None and found.figures is not None
    assert found.figures == validate_input_file(path, CHAT, LIMITS).figures
    figures = LineFigures.from_bytes(found.figures)
    assert figures is not None and figures.names == ["gpt-4o-mini", "other-model"] and len(figures) == 3002


@pytest.mark.parametrize(
    "bad_line",
    [
        b"not json",
        b"",
        json.dumps({"custom_id": "r-5", "method": "POST", "url": CHAT, "body": {"model": "m"}}).encode(),  # duplicate
        json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}).encode(),
        b"[" * 200 + b"]" * 200,
        json.dumps({"custom_id": "x", "method": "POST", "body": {"model": "m"}}).encode(),
        json.dumps({"custom_id": "x", "method": "POST", "url": None, "body": {"model": "m"}}).encode(),
    ],
    ids=["not-json", "blank", "duplicate-id", "another-url", "too-deep", "no-url", "null-url"],
)
async def test_a_file_with_a_problem_gets_no_verdict(pool: CpuPool, bad_line: bytes) -> None:
    assert await check(pool, lines(100) + bad_line + b"\n" + lines(100, start=100), ran=True) is None


@pytest.mark.parametrize("url", [None, "missing"])
async def test_a_file_whose_first_lines_name_no_url_gets_no_verdict(pool: CpuPool, url: str | None) -> None:
    first = {"custom_id": "x", "method": "POST", "body": {"model": "m"}} | ({} if url == "missing" else {"url": url})
    assert await check(pool, json.dumps(first).encode() + b"\n" + lines(100), ran=True) is None


async def test_a_verdict_on_fewer_bytes_than_the_upload_stored_is_not_given(pool: CpuPool) -> None:
    content = lines(200)
    assert await check(pool, content, size=len(content) + 1, ran=True) is None


async def test_with_no_check_processes_nothing_is_checked() -> None:
    assert await check(CpuPool(0), lines(10)) is None


async def test_a_second_upload_while_the_process_is_busy_goes_unchecked_at_once(pool: CpuPool) -> None:
    async with checking_upload([pool], LIMITS) as first:
        await first.feed(lines(10))
        started = time.monotonic()
        assert await check(pool, lines(10)) is None
        assert time.monotonic() - started < 1
        assert await first.verdict(len(lines(10))) is not None
    assert await check(pool, lines(10)) is not None, "the process is free again"


@pytest.mark.parametrize("size", [1, 40_000], ids=["small", "18-MB"])
async def test_a_frozen_check_process_holds_an_upload_only_for_a_bounded_time_and_is_replaced(
    pool: CpuPool, size: int
) -> None:
    await check(pool, lines(1))  # the process is up
    [process] = cpu_pool_processes()
    content = lines(size)
    with mock.patch.object(upload_check, "STALL_S", 1.0):
        process.send_signal(signal.SIGSTOP)
        try:
            with mock.patch.object(upload_check, "CONNECT_S", 1.0):
                started = time.monotonic()
                assert await check(pool, content, piece=1 << 20) is None
                assert time.monotonic() - started < 2.5, "held past the connect wait"
            deadline = time.monotonic() + 20
            while (found := await check(pool, lines(5))) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)  # the stuck step's process is killed after STALL_S, and a new one starts
            assert found is not None and found["lines"] == 5
            assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE, "the frozen process ended"
        finally:
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGCONT)


async def test_replacing_a_frozen_check_process_ends_no_other_uploads_check() -> None:
    frozen_pool, other_pool = CpuPool(1), CpuPool(1)
    pools = [frozen_pool, other_pool]
    try:
        assert await check(frozen_pool, lines(1)) is not None  # both processes are up
        [frozen] = cpu_pool_processes()
        assert await check(other_pool, lines(1)) is not None
        [other] = [process for process in cpu_pool_processes() if process.pid != frozen.pid]
        frozen.send_signal(signal.SIGSTOP)
        content = lines(20_000)  # 9 MB, fed a megabyte at a time across the frozen check's replacement
        with mock.patch.object(upload_check, "STALL_S", 1.0), mock.patch.object(upload_check, "CONNECT_S", 1.0):
            async with checking_upload(pools, LIMITS) as stuck:  # the first pool's frozen process takes it
                await stuck.feed(lines(10))
                assert await stuck.verdict(len(lines(10))) is None
            async with checking_upload(pools, LIMITS) as line_check:  # the frozen pool is busy: the other one
                await line_check.feed(content[: 1 << 20])
                deadline = time.monotonic() + 10
                while frozen.is_running() and frozen.status() != psutil.STATUS_ZOMBIE:
                    assert time.monotonic() < deadline, "the frozen check process was not replaced"
                    await asyncio.sleep(0.1)
                assert [process.pid for process in cpu_pool_processes()] == [other.pid], (
                    "the other upload's check process ended with the frozen one"
                )
                for start in range(1 << 20, len(content), 1 << 20):
                    await line_check.feed(content[start : start + (1 << 20)])
                found = await line_check.verdict(len(content))
        assert found is not None and found.check["lines"] == 20_000, "the other upload's check was ended too"
    finally:
        with contextlib.suppress(psutil.Error):
            frozen.send_signal(signal.SIGCONT)
        for pool in pools:
            pool.close()


async def test_an_upload_whose_check_cannot_be_set_up_goes_on_unchecked(pool: CpuPool, tmp_path: Path) -> None:
    too_long = tmp_path / ("x" * 120)  # a socket path must fit in 108 bytes
    too_long.mkdir()
    with mock.patch.object(tempfile, "tempdir", str(too_long)):
        assert await check(pool, lines(50)) is None
    assert await check(pool, lines(50)) is not None, "the process was not taken"


async def test_a_check_process_killed_mid_upload_fails_that_check_only(pool: CpuPool) -> None:
    await check(pool, lines(1))
    [process] = cpu_pool_processes()
    content = lines(20_000)
    async with checking_upload([pool], LIMITS) as line_check:
        await line_check.feed(content[: 1 << 20])
        os.kill(process.pid, signal.SIGKILL)
        for start in range(1 << 20, len(content), 1 << 20):
            await line_check.feed(content[start : start + (1 << 20)])
        assert await line_check.verdict(len(content)) is None
    found = await check(pool, lines(7))
    assert found is not None and found["lines"] == 7, "a new process checks the next upload"


async def test_a_check_process_that_dies_before_it_connects_holds_the_upload_for_moments_only(
    pool: CpuPool,
) -> None:
    await check(pool, lines(1))
    [process] = cpu_pool_processes()
    process.send_signal(signal.SIGSTOP)  # it cannot take the next upload's connection before it dies
    async with checking_upload([pool], LIMITS) as line_check:
        started = time.monotonic()
        os.kill(process.pid, signal.SIGKILL)
        for start in range(0, 12 << 20, 1 << 20):  # more than the check may fall behind
            await line_check.feed(lines(2_300, start=start)[: 1 << 20])
        assert await line_check.verdict(12 << 20) is None
        assert time.monotonic() - started < upload_check.CONNECT_S - 1


async def test_no_socket_or_folder_is_left_behind(pool: CpuPool, tmp_path: Path) -> None:
    with mock.patch.object(tempfile, "tempdir", str(tmp_path)):
        assert await check(pool, lines(20)) is not None
        with pytest.raises(RuntimeError):
            async with checking_upload([pool], LIMITS) as line_check:
                await line_check.feed(lines(20))
                raise RuntimeError("the upload failed")
    assert list(tmp_path.iterdir()) == []


async def test_an_upload_stopped_in_the_turn_the_check_connects_logs_no_error(
    tmp_path: Path,
) -> None:
    """The check process connects in the very turn of the event loop in which the upload stops waiting for it (a
    full disk failed the upload): the accept queued for that turn must not complete the cancelled wait."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    path = str(tmp_path / "check.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, socket.socket(socket.AF_UNIX) as process:
        listener.bind(path)
        listener.listen(1)
        listener.setblocking(False)
        never = asyncio.ensure_future(asyncio.Event().wait())  # the check process's step, still running
        line_check = upload_check.UploadLineCheck(never, listener)
        waiting = asyncio.ensure_future(line_check._accepted(loop, listener, never))
        for _ in range(3):
            await asyncio.sleep(0)  # the accept finds no connection and waits for one
        process.connect(path)  # the next turn's poll finds it ...
        waiting.cancel()  # ... and this cancel runs in that turn, before the accept
        await asyncio.wait({waiting})
        assert waiting.cancelled()
        await asyncio.sleep(0.05)
        never.cancel()
    assert errors == [], errors
