"""The work signal that wakes a process's idle loops (:class:`gateway.context.WorkSignal`)."""

from __future__ import annotations

import asyncio

from gateway.context import WorkSignal


async def _woken(signal: WorkSignal, kind: str, timeout: float = 0.5) -> bool:
    """Whether a loop waiting for ``kind`` of work from now on is woken before it gives up after ``timeout``."""
    ticket = signal.ticket(kind)
    await signal.wait(timeout, ticket)
    return ticket.is_set()


async def test_a_wake_up_for_one_kind_wakes_its_loops_and_leaves_the_others_asleep() -> None:
    signal = WorkSignal()
    shard_loop = asyncio.create_task(_woken(signal, "shard"))
    batch_loop = asyncio.create_task(_woken(signal, "batch"))
    await asyncio.sleep(0.01)
    signal.set("shard")
    assert await shard_loop is True
    assert await batch_loop is False


async def test_a_wake_up_for_every_kind_wakes_every_waiting_loop_here_and_is_announced() -> None:
    announced: list[int] = []

    async def announce() -> None:
        announced.append(1)

    signal = WorkSignal(announce)
    loops = [asyncio.create_task(_woken(signal, kind)) for kind in ("shard", "batch", "batch")]
    await asyncio.sleep(0.01)
    signal.set()
    assert await asyncio.gather(*loops) == [True, True, True]
    await signal.close()
    assert announced == [1]


async def test_a_wake_up_for_one_kind_is_announced_to_other_processes_too() -> None:
    announced: list[int] = []

    async def announce() -> None:
        announced.append(1)

    signal = WorkSignal(announce)
    signal.set("shard")
    await signal.close()
    assert announced == [1]


async def test_a_loop_that_takes_its_ticket_after_a_wake_up_waits_for_the_next() -> None:
    signal = WorkSignal()
    early = signal.ticket("shard")
    signal.wake_local("shard")
    assert early.is_set()
    late = signal.ticket("shard")
    assert not late.is_set()
    signal.wake_local("batch")
    assert not late.is_set()
    signal.wake_local()
    assert late.is_set()
