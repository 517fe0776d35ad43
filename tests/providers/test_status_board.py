"""The polls of one tick share one ``GET /batches`` page (OpenAI protocol, against the emulator on loopback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.providers.anthropic_batch import AnthropicBatchAdapter
from gateway.providers.base import ProviderBatchState, ProviderError, ProviderRejected, ProviderUnavailable
from gateway.providers.config import ProviderConfig
from gateway.providers.openai_batch import OpenAIBatchAdapter
from gateway.providers.status_board import StatusBoard
from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.providers.support import FAST_RETRY, calls, questions, read_lines, wait_terminal, write_shard

MODEL = "gpt-4o-mini"
CLAUDE = "claude-haiku-4-5"


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatorCluster]:
    specs = [
        ProviderSpec(name="sim", models=[MODEL], processing_delay_s=1.5),
        ProviderSpec(name="together", dialect="together", models=[MODEL], processing_delay_s=0.2),
        ProviderSpec(name="claude", kind="anthropic", models=[CLAUDE], processing_delay_s=0.4),
    ]
    with SimulatorCluster(specs, control_port=None) as running:
        yield running


@pytest.fixture
def adapter(cluster: SimulatorCluster, http: httpx.AsyncClient) -> OpenAIBatchAdapter:
    config = ProviderConfig(name="sim", kind="openai", base_url=cluster.base_url("sim"), models=[MODEL], timeout_s=5)
    return OpenAIBatchAdapter(config=config, http=http, retry=FAST_RETRY)


async def submitted(adapter: OpenAIBatchAdapter, folder: Path, count: int, size: int = 2) -> list[str]:
    return [
        (await adapter.submit(write_shard(folder, questions(size, MODEL), MODEL))).provider_batch_id
        for _ in range(count)
    ]


async def status_calls(cluster: SimulatorCluster, name: str = "sim") -> tuple[int, int]:
    """(list calls, retrieve calls) the emulator answered so far."""
    gets = [entry for entry in await calls(cluster, name, "GET", "/batches") if not entry.path.endswith("/results")]
    listed = sum(entry.path.rstrip("/").endswith("/batches") for entry in gets)
    return listed, len(gets) - listed


async def ended_at_the_emulator(
    cluster: SimulatorCluster, *batch_ids: str, name: str = "sim", timeout: float = 20.0
) -> None:
    """Wait until the emulator's own records show the batches ended, without a status call the test counts."""
    deadline = time.monotonic() + timeout
    jobs = cluster.state(name).jobs
    while any(jobs[batch_id].status != "completed" for batch_id in batch_ids):
        assert time.monotonic() < deadline, f"{batch_ids} did not end within {timeout} s"
        await asyncio.sleep(0.05)


async def test_the_polls_of_one_tick_share_one_list_call(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    ids = await submitted(adapter, tmp_path, 10)
    first = await adapter.poll(ids[0])  # alone so far: retrieved
    assert await status_calls(cluster) == (0, 1)
    results = await asyncio.gather(*(adapter.poll(batch_id) for batch_id in ids))
    assert await status_calls(cluster) == (1, 2)  # ten polls: the first alone again, then one page for the rest
    assert not first.state.is_terminal and not any(result.state.is_terminal for result in results)
    await asyncio.sleep(2.0)  # the page is too old now
    await ended_at_the_emulator(cluster, *ids)
    ended = await asyncio.gather(*(adapter.poll(batch_id) for batch_id in ids))
    assert [(result.state, result.total) for result in ended] == [(ProviderBatchState.COMPLETED, 2)] * 10
    assert await status_calls(cluster) == (2, 3)  # again: the first poll alone, then one page


async def test_a_listed_status_answers_one_poll_of_its_batch_only(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    ids = await submitted(adapter, tmp_path, 2)
    await asyncio.gather(*(adapter.poll(batch_id) for batch_id in ids))
    assert await status_calls(cluster) == (1, 1)  # the first alone, the second from the page
    again = await adapter.poll(ids[1])  # within the page's window: the page is the status it saw already
    assert await status_calls(cluster) == (1, 2)
    assert not again.state.is_terminal


async def test_a_poll_that_fell_due_after_the_page_was_listed_reads_afresh_unless_the_page_shows_the_end(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    """A webhook makes a poll due the moment its batch ended: a page listed before then may still show it running."""
    first, second, third = await submitted(adapter, tmp_path, 3)
    await adapter.poll(first)  # alone: retrieved
    await asyncio.gather(adapter.poll(second), adapter.poll(third))  # one page, which holds first's status too
    assert await status_calls(cluster) == (1, 1)
    await adapter.poll(first, fresh_after=time.time())  # fell due after that page: retrieved
    assert await status_calls(cluster) == (1, 2)
    await asyncio.sleep(0.6)
    await adapter.poll(first)  # a new window: retrieved alone again
    await asyncio.gather(adapter.poll(second), adapter.poll(third))
    assert await status_calls(cluster) == (2, 3)
    await adapter.poll(first, fresh_after=time.time() - 5)  # fell due before the page: the page serves it
    assert await status_calls(cluster) == (2, 3)

    await asyncio.sleep(2.0)  # all three ended
    await adapter.poll(first)
    await asyncio.gather(adapter.poll(second), adapter.poll(third))
    assert await status_calls(cluster) == (3, 4)
    ended = await adapter.poll(first, fresh_after=time.time())  # an ended batch does not change: the page serves it
    assert ended.state is ProviderBatchState.COMPLETED
    assert await status_calls(cluster) == (3, 4)


async def test_a_page_that_shows_other_batches_ended_names_them_once(
    adapter: OpenAIBatchAdapter, tmp_path: Path
) -> None:
    first, second, third = await submitted(adapter, tmp_path, 3)
    await asyncio.gather(*(adapter.poll(batch_id) for batch_id in (first, second, third)))
    assert adapter.take_seen_ended() == []  # running: nothing ended yet
    await asyncio.sleep(2.0)
    await adapter.poll(first)  # alone within this window: retrieved, no page
    assert adapter.take_seen_ended() == []
    assert (await adapter.poll(second)).state is ProviderBatchState.COMPLETED  # the page: third ended too
    assert adapter.take_seen_ended() == [third]
    await asyncio.sleep(0.6)
    await asyncio.gather(adapter.poll(first), adapter.poll(second))
    assert adapter.take_seen_ended() == []  # third was named already


async def test_a_batch_polled_alone_is_always_read_afresh(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    [batch_id] = await submitted(adapter, tmp_path, 1)
    final = await wait_terminal(adapter, batch_id)
    listed, retrieved = await status_calls(cluster)
    assert final.state is ProviderBatchState.COMPLETED
    assert listed == 0 and retrieved >= 1


async def test_collection_reads_the_file_ids_from_the_poll_that_saw_the_end(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    [batch_id] = await submitted(adapter, tmp_path, 1, size=5)
    await wait_terminal(adapter, batch_id)
    before = await status_calls(cluster)
    dest = tmp_path / "results.jsonl"
    await adapter.fetch_results(batch_id, dest)
    assert await status_calls(cluster) == before  # no second read of the batch
    assert sorted(line["custom_id"] for line in read_lines(dest)) == [f"req-{i:03d}" for i in range(5)]
    other = OpenAIBatchAdapter(config=adapter.config, http=adapter.http, retry=FAST_RETRY)  # another process
    await other.fetch_results(batch_id, tmp_path / "again.jsonl")
    assert (await status_calls(cluster))[1] == before[1] + 1


async def test_a_batch_older_than_the_newest_page_is_retrieved(
    adapter: OpenAIBatchAdapter, cluster: SimulatorCluster, tmp_path: Path
) -> None:
    oldest, *_ = await submitted(adapter, tmp_path, 101, size=1)
    newest = (await submitted(adapter, tmp_path, 1, size=1))[0]
    await ended_at_the_emulator(cluster, oldest)
    results = await asyncio.gather(adapter.poll(newest), adapter.poll(oldest))
    assert results[1].state is ProviderBatchState.COMPLETED and results[1].total == 1
    assert await status_calls(cluster) == (1, 2)  # newest alone at first, then the page, then oldest not on it


async def test_message_batches_share_one_list_call_too(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    config = ProviderConfig(
        name="claude", kind="anthropic", base_url=cluster.base_url("claude"), models=[CLAUDE], timeout_s=5
    )
    adapter = AnthropicBatchAdapter(config=config, http=http, retry=FAST_RETRY)
    shards = [write_shard(tmp_path, questions(2, CLAUDE), CLAUDE) for _ in range(5)]
    ids = [(await adapter.submit(shard)).provider_batch_id for shard in shards]
    running = await asyncio.gather(*(adapter.poll(batch_id) for batch_id in ids))
    assert not any(result.state.is_terminal for result in running)
    assert await status_calls(cluster, "claude") == (1, 1)  # the first alone, then one page for the other four
    await asyncio.sleep(1.0)  # the page is too old now
    await ended_at_the_emulator(cluster, *ids, name="claude")
    ended = await asyncio.gather(*(adapter.poll(batch_id) for batch_id in ids))
    assert [result.state for result in ended] == [ProviderBatchState.COMPLETED] * 5
    before = await status_calls(cluster, "claude")
    dest = tmp_path / "results.jsonl"
    await adapter.fetch_results(ids[3], dest, input_path=shards[3].input_path)
    assert await status_calls(cluster, "claude") == before  # the results URL came from the poll's answer
    assert sorted(line["custom_id"] for line in read_lines(dest)) == ["req-000", "req-001"]


async def test_a_dialect_without_a_documented_newest_first_list_retrieves_every_batch(
    cluster: SimulatorCluster, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    config = ProviderConfig(
        name="together", kind="openai", base_url=cluster.base_url("together"), models=[MODEL], timeout_s=5
    )
    adapter = OpenAIBatchAdapter(config=config, http=http, retry=FAST_RETRY, dialect="together")
    ids = await submitted(adapter, tmp_path, 3)
    await asyncio.gather(*(adapter.poll(batch_id) for batch_id in ids))
    assert await status_calls(cluster, "together") == (0, 3)


class _Provider:
    """A provider's answers for the board: a list call that fails as told, and retrieves that answer."""

    def __init__(self, list_error: ProviderError | None) -> None:
        self.list_error, self.listed, self.retrieved = list_error, 0, 0

    async def page(self) -> list[dict[str, object]]:
        self.listed += 1
        if self.list_error is not None:
            raise self.list_error
        return [{"id": "b1", "status": "in_progress"}, {"id": "b2", "status": "in_progress"}]

    async def read(self, board: StatusBoard, batch_id: str) -> dict[str, object]:
        async def retrieve() -> dict[str, object]:
            self.retrieved += 1
            return {"id": batch_id, "status": "in_progress"}

        return await board.read(batch_id, retrieve, self.page, lambda _: False, "p")


async def test_a_page_asked_for_before_a_batch_was_retrieved_does_not_answer_its_next_poll() -> None:
    board, calls = StatusBoard(window_s=0.5), {"listed": 0, "retrieved": 0}
    retrieving, asked = asyncio.Event(), asyncio.Event()

    async def read(batch_id: str) -> dict[str, object]:
        async def retrieve() -> dict[str, object]:
            calls["retrieved"] += 1
            retrieving.set()
            await asyncio.wait_for(asked.wait(), 5)  # answered only once the page was asked for
            return {"id": batch_id, "status": "in_progress", "from": "retrieve"}

        async def page() -> list[dict[str, object]]:
            calls["listed"] += 1
            asked.set()
            taken = [{"id": listed, "status": "in_progress", "from": "page"} for listed in ("a", "b")]
            await asyncio.sleep(0.05)  # answered after a's own retrieve, but taken before it
            return taken

        return await board.read(batch_id, retrieve, page, lambda _: False, "p")

    alone = asyncio.create_task(read("a"))
    await asyncio.wait_for(retrieving.wait(), 5)
    await asyncio.gather(alone, read("b"))  # a is retrieved alone; b's poll lists while a's retrieve runs
    again = await read("a")
    assert calls == {"listed": 1, "retrieved": 2} and again["from"] == "retrieve"


async def test_a_failed_list_call_falls_back_to_retrieves_and_pauses_listing() -> None:
    board, provider = StatusBoard(list_pause_s=0.5), _Provider(ProviderUnavailable("HTTP 503"))
    answers = await asyncio.gather(*(provider.read(board, batch_id) for batch_id in ("b1", "b2", "b3")))
    assert [answer["id"] for answer in answers] == ["b1", "b2", "b3"]
    assert (provider.listed, provider.retrieved, board.lists) == (1, 3, True)  # one try for the tick, then alone
    await asyncio.gather(provider.read(board, "b1"), provider.read(board, "b2"))
    assert provider.listed == 1  # paused
    provider.list_error = None
    await asyncio.sleep(0.6)
    await asyncio.gather(provider.read(board, "b1"), provider.read(board, "b2"))
    assert provider.listed == 2 and provider.retrieved == 6  # listing again: b1 alone first, b2 from the page


async def test_a_provider_without_a_list_endpoint_is_never_listed_again() -> None:
    board, provider = StatusBoard(), _Provider(ProviderRejected("HTTP 404", status_code=404))
    await asyncio.gather(*(provider.read(board, batch_id) for batch_id in ("b1", "b2")))
    assert board.lists is False
    await asyncio.sleep(0.6)
    await asyncio.gather(*(provider.read(board, batch_id) for batch_id in ("b1", "b2")))
    assert (provider.listed, provider.retrieved) == (1, 4)
