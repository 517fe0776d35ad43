"""The OpenAI emulator's batch webhooks (provider-apis.md, 9.A): when a batch ends, a thin event naming it goes to
the configured endpoint, signed so that the official SDK's ``client.webhooks.unwrap`` accepts it; a delivery
that fails is retried with the same ``webhook-id``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator

import openai
import pytest

from gateway.simulator import ProviderSpec, SimulatorCluster
from gateway.simulator.webhooks import WebhookSender
from tests.conftest import Receiver, webhook_receiver
from tests.simulator.openai_emulators import lines_of, sdk, submit, wait

SECRET = "whsec_" + base64.b64encode(b"emulated provider webhook key!!!").decode()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as started:
        yield started


@pytest.fixture(scope="module")
def hooked(receiver: Receiver) -> Iterator[SimulatorCluster]:
    spec = ProviderSpec(
        name="hooked", webhook_url=receiver.url("/hooks"), webhook_secret=SECRET, processing_delay_s=0.5
    )
    with SimulatorCluster([spec], control_port=0) as running:
        yield running


def test_an_ended_batch_is_announced_signed_as_openai_signs(hooked: SimulatorCluster, receiver: Receiver) -> None:
    client = sdk(hooked, "hooked")
    done = wait(client, submit(client, lines_of(3)).id)
    cancelled = submit(client, lines_of(3), metadata={"note": "to cancel"})
    client.batches.cancel(cancelled.id)
    assert wait(client, cancelled.id).status == "cancelled"
    posts = receiver.wait_for("/hooks", 2)
    verifier = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
    events = {}
    for headers, body in posts:
        event = verifier.webhooks.unwrap(body, headers)
        events[event.data.id] = event
        assert json.loads(body)["object"] == "event" and headers["user-agent"].startswith("OpenAI/1.0")
    assert events[done.id].type == "batch.completed" and events[done.id].created_at == done.completed_at
    assert events[cancelled.id].type == "batch.cancelled"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        headers, body = posts[0]
        verifier.webhooks.unwrap(body.replace(b"batch", b"batcH"), headers)


def test_a_failed_delivery_is_retried_with_the_same_webhook_id(receiver: Receiver) -> None:
    receiver.answers["/retried"] = [503]
    spec = ProviderSpec(name="retried", webhook_url=receiver.url("/retried"), webhook_secret=SECRET)
    with SimulatorCluster([spec], control_port=0) as running:
        client = sdk(running, "retried")
        wait(client, submit(client, lines_of(1)).id)
        first, second = receiver.wait_for("/retried", 2, timeout=20)
    assert first[0]["webhook-id"] == second[0]["webhook-id"] and first[1] == second[1]
    assert len(receiver.received("/retried")) == 2, "delivered once the endpoint answered 2xx"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"webhook_url": "http://127.0.0.1:1/h"}, "webhook_url and webhook_secret go together"),
        ({"webhook_url": "http://127.0.0.1:1/h", "webhook_secret": "plain"}, "must be a whsec_ secret"),
        ({"webhook_url": "http://h/x", "webhook_secret": SECRET, "kind": "anthropic"}, "need kind 'openai'"),
    ],
)
def test_webhook_settings_are_checked(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProviderSpec(name="bad", **fields)  # type: ignore[arg-type]


def test_deliveries_of_one_emulator_share_a_connection() -> None:
    """One client for every delivery: building one per event (its TLS context) delayed each by tens of ms."""
    peers: list[tuple[str, int]] = []

    async def deliver_three() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError):  # the client closed the connection
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    sizes = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                    await reader.readexactly(int(sizes[0].split(b":", 1)[1]))
                    peers.append(writer.get_extra_info("peername"))
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    await writer.drain()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sender = WebhookSender(f"http://127.0.0.1:{port}/hooks", SECRET)
        for n in range(3):
            await sender.send(f"batch_{n}", "completed", 1_700_000_000)
        server.close()
        assert sender.delivered == 3

    asyncio.run(deliver_three())
    assert len(peers) == 3 and len(set(peers)) == 1, peers
