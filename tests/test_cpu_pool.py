"""CPU-heavy steps run in processes of their own: results and errors come back as they were, a process that
dies under a step fails that step only, a Ctrl-C to the process group does not cut a step, and the pool's
processes log in the gateway's format."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from gateway.cpu_pool import CpuPool, CpuProcessLost
from tests.conftest import cpu_pool_processes


def where_am_i(tag: str) -> tuple[int, str, str]:
    return os.getpid(), threading.current_thread().name, tag


def fill_the_disk() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def warn(text: str) -> None:
    logging.getLogger("gateway.pipeline.joining").warning(text)


def where_am_i_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def meet(mine: str, other: str) -> tuple[int, bool]:
    """This process's id, and whether the step ``other`` was running while this one ran: each leaves a mark and
    waits for the other's (at most 30 s)."""
    Path(mine).touch()
    deadline = time.monotonic() + 30
    while not Path(other).exists():
        if time.monotonic() > deadline:
            return os.getpid(), False
        time.sleep(0.01)
    return os.getpid(), True


def test_a_step_runs_in_another_process_and_returns_what_it_returned() -> None:
    async def scenario() -> tuple[tuple[int, str, str], tuple[int, str, str]]:
        pool = CpuPool(1)
        try:
            return await pool.run(where_am_i, "a"), await pool.run(where_am_i, tag="b")
        finally:
            pool.close()

    first, second = asyncio.run(scenario())
    assert first[0] != os.getpid() and first[2] == "a"
    assert second[0] == first[0] and second[2] == "b", "the pool's process is started once and kept"


def test_with_no_processes_a_step_runs_in_a_thread_of_this_process() -> None:
    pid, thread, tag = asyncio.run(CpuPool(0).run(where_am_i, "t"))
    assert (pid, tag) == (os.getpid(), "t") and thread != threading.main_thread().name


def test_a_step_s_error_comes_back_as_it_was_raised() -> None:
    async def scenario() -> None:
        pool = CpuPool(1)
        try:
            await pool.run(fill_the_disk)
        finally:
            pool.close()

    with pytest.raises(OSError) as raised:
        asyncio.run(scenario())
    assert raised.value.errno == errno.ENOSPC


def test_a_process_that_dies_fails_its_step_only_and_the_steps_that_waited_run_in_a_new_one() -> None:
    async def scenario() -> tuple[str, list[tuple[int, str, str]], int]:
        pool = CpuPool(1)
        try:
            before = await pool.run(where_am_i, "before")
            dying = asyncio.ensure_future(pool.run(die))
            await asyncio.sleep(0)  # the dying step has the process; these two wait for it
            waiting = [asyncio.ensure_future(pool.run(where_am_i, tag)) for tag in ("w1", "w2")]
            with pytest.raises(CpuProcessLost) as lost:
                await dying
            return str(lost.value), list(await asyncio.gather(*waiting)), before[0]
        finally:
            pool.close()

    message, after, before_pid = asyncio.run(scenario())
    assert "a CPU process ended while it ran die" in message
    assert [tag for _, _, tag in after] == ["w1", "w2"]
    assert all(pid not in (before_pid, os.getpid()) for pid, _, _ in after)


def interrupted_nap(seconds: float) -> str:
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(seconds)
    return "slept"


def sleep_then_die(seconds: float) -> None:
    time.sleep(seconds)
    die()


def test_a_process_that_dies_beside_another_fails_its_own_step_at_once_and_the_other_runs_on() -> None:
    async def scenario() -> tuple[int | BaseException, float | None, float]:
        pool = CpuPool(2)
        try:
            pool.warm([])
            started = time.monotonic()
            running = asyncio.ensure_future(pool.run(where_am_i_after, 5.0))
            failed_after: float | None = None
            try:
                await pool.run(sleep_then_die, 0.5)
            except CpuProcessLost:
                failed_after = time.monotonic() - started
            other = (await asyncio.gather(running, return_exceptions=True))[0]
            return other, failed_after, time.monotonic() - started
        finally:
            pool.close()

    other, failed_after, took = asyncio.run(scenario())
    assert failed_after is not None, "the step whose process died failed as lost"
    assert failed_after < 4.5, f"its failure was seen {failed_after:.1f} s in, not at once (the other ran 5 s)"
    assert isinstance(other, int), f"the step in the other process ran on: {other!r}"
    assert took >= 5.0


def test_a_ctrl_c_or_sigterm_to_the_process_group_does_not_cut_a_step() -> None:
    async def scenario() -> str:
        pool = CpuPool(1)
        try:
            return await pool.run(interrupted_nap, 0.2)
        finally:
            pool.close()

    assert asyncio.run(scenario()) == "slept", "the worker decides when its steps stop"


def test_a_closed_pool_takes_no_more_steps() -> None:
    async def scenario() -> None:
        pool = CpuPool(1)
        await pool.run(where_am_i, "once")
        pool.close()
        with pytest.raises(RuntimeError, match="closed"):
            await pool.run(where_am_i, "again")
        assert not pool_processes()

    asyncio.run(scenario())


def test_a_pool_process_logs_in_the_gateway_format_with_control_characters_escaped(
    capfd: pytest.CaptureFixture[str],
) -> None:
    async def scenario() -> None:
        pool = CpuPool(1, "json", "INFO")
        try:
            await pool.run(warn, "skipping line 3\nFAKE RECORD")
        finally:
            pool.close()

    asyncio.run(scenario())
    lines = [line for line in capfd.readouterr().err.splitlines() if "skipping line 3" in line]
    assert len(lines) == 1, "one record, on one line"
    assert '"level": "WARNING"' in lines[0] and '"logger": "gateway.pipeline.joining"' in lines[0]
    assert "\\nFAKE RECORD" in lines[0]


def imported(name: str) -> bool:
    return name in sys.modules


def test_a_warmed_pool_has_its_process_running_with_the_steps_modules_before_the_first_step() -> None:
    async def scenario() -> tuple[int, bool, bool]:
        pool = CpuPool(1)
        try:
            before = {child.pid for child in psutil.Process().children()}
            pool.warm(["gateway.pipeline.joining"])
            deadline = time.monotonic() + 30
            started: set[int] = set()
            while not started and time.monotonic() < deadline:
                started = {child.pid for child in psutil.Process().children()} - before
                await asyncio.sleep(0.05)
            return (
                len(started),
                await pool.run(imported, "gateway.pipeline.joining"),
                await pool.run(imported, "gateway.pipeline.collect"),
            )
        finally:
            pool.close()

    started, joining, collect = asyncio.run(scenario())
    assert started == 1, "the process started before any step was sent"
    assert joining, "the step's module was imported as the process started"
    assert not collect, "and only what was asked: the stage modules stay out of the CPU process"


def test_the_cli_module_each_cpu_process_imports_again_loads_no_settings_database_or_http_library() -> None:
    # A process started with ``spawn`` imports its parent's main module first: for ``batchgw serve`` and
    # ``batchgw worker`` that is gateway.cli, so whatever it imports at the top each CPU process imports too.
    heavy = ("gateway.settings", "gateway.context", "pydantic", "sqlalchemy", "httpx")
    code = f"import sys, gateway.cli; print(*[name for name in {heavy!r} if name in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.split() == [], f"gateway.cli imports {loaded.stdout.strip()} at the top"


def pool_processes() -> set[int]:
    return {process.pid for process in cpu_pool_processes()}


def test_closing_ends_a_step_still_running_instead_of_waiting_for_it() -> None:
    async def scenario() -> tuple[float, set[int], set[int]]:
        pool = CpuPool(1)
        pool.warm([])
        step = asyncio.ensure_future(pool.run(time.sleep, 60))
        await asyncio.sleep(1.0)  # the step is running in the pool's process
        running = pool_processes()
        started = time.monotonic()
        pool.close()
        took = time.monotonic() - started
        step.cancel()
        return took, running, pool_processes() & running

    took, running, left = asyncio.run(scenario())
    assert len(running) == 1
    assert took < 5, f"close waited {took:.1f}s for the step"
    assert not left, "the pool's process is gone"


def test_a_pool_of_two_starts_one_process_and_a_second_when_steps_overlap_which_then_run_side_by_side(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[set[int], list[tuple[int, bool]], set[int]]:
        pool = CpuPool(2)
        try:
            pool.warm([])
            deadline = time.monotonic() + 30
            while not pool_processes() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # time enough for a second process to show, were one started
            warmed = pool_processes()
            first, second = str(tmp_path / "first"), str(tmp_path / "second")
            overlapping = await asyncio.gather(pool.run(meet, first, second), pool.run(meet, second, first))
            return warmed, list(overlapping), pool_processes()
        finally:
            pool.close()

    warmed, overlapping, after = asyncio.run(scenario())
    assert len(warmed) == 1, "warming starts one process"
    (first, met), (second, met_too) = overlapping
    assert met and met_too, "each step ran while the other did: side by side, not one after the other"
    assert first != second and len(after) == 2 and warmed <= after


def test_start_if_free_starts_a_step_only_in_a_process_free_now() -> None:
    async def scenario() -> None:
        pool = CpuPool(1)
        try:
            first = pool.start_if_free(time.sleep, 0.5)
            assert first is not None
            assert pool.start_if_free(where_am_i, "busy") is None, "the one process is taken"
            await first
            second = pool.start_if_free(where_am_i, "free")
            assert second is not None and (await second)[2] == "free"
        finally:
            pool.close()
        assert pool.start_if_free(where_am_i, "closed") is None
        assert CpuPool(0).start_if_free(where_am_i, "threads") is None, "never in a thread of this process"

    asyncio.run(scenario())


def _running(pid: int) -> bool:
    """True while ``pid`` is a process that has not exited (a zombie waiting to be reaped has)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # exited and reaped, also between two looks
        return False


def test_recycle_fails_the_running_steps_as_lost_and_the_next_step_gets_a_new_process() -> None:
    async def scenario() -> None:
        pool = CpuPool(1)
        try:
            first_pid = (await pool.run(where_am_i, "before"))[0]
            stuck = pool.start_if_free(time.sleep, 60)
            assert stuck is not None
            await asyncio.sleep(0.5)
            started = time.monotonic()
            pool.recycle()
            with pytest.raises(CpuProcessLost):
                await stuck
            assert time.monotonic() - started < 10
            deadline = time.monotonic() + 10
            while _running(first_pid):
                assert time.monotonic() < deadline, "the process running the stuck step is still alive"
                await asyncio.sleep(0.05)
            pid, _, tag = await pool.run(where_am_i, "after")
            assert tag == "after" and pid != first_pid
        finally:
            pool.close()

    asyncio.run(scenario())
