"""Batch webhooks from a provider (OpenAI's, sent by the emulator): a verified ``batch.completed`` makes the
gateway poll that batch at once instead of at its next scheduled poll; deliveries that fail verification, of
unknown providers or of providers without a webhook secret are refused with OpenAI-shaped errors."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from gateway.simulator import ProviderSpec, SimulatorCluster
from tests.api.batch_helpers import assert_error
from tests.conftest import GatewayProcess, free_port, loopback, simulated_provider_env
from tests.engine import chat_requests, emulator_log, submit
from tests.observability import samples, scrape

SECRET = "whsec_" + base64.b64encode(b"the provider's webhook key, 32b!").decode()
POLL_S = 60
"""The gateway's provider polls come this far apart: a batch done sooner was announced by its webhook."""
SAFETY_NET_S = 6.0
"""The first poll at a provider whose webhooks announce ended batches, in the ``safety_net`` gateway."""
TERMINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def hooked(gateway_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway whose provider ``hooked`` sends webhooks (and ``quiet`` does not), polling only every minute;
    ``hooked-flex`` is a second gateway provider on ``hooked``'s project (the same endpoint and key), without a
    webhook secret of its own."""
    gateway: GatewayProcess = gateway_factory()
    url = f"{gateway.base_url}/webhooks/providers/hooked"
    specs = [ProviderSpec(name="hooked", webhook_url=url, webhook_secret=SECRET), ProviderSpec(name="quiet")]
    with SimulatorCluster(specs, control_port=0) as cluster:
        providers = {
            "hooked": {"emulator": "hooked", "models": {"gpt-4o-mini": "gpt-4o-mini"}, "webhook_secret_env": "HOOKS"},
            "quiet": {"emulator": "quiet", "models": {"other-model": "gpt-4o-mini"}},
            "hooked-flex": {"emulator": "hooked", "models": {"flex-model": "gpt-4o-mini"}},
        }
        gateway.extra_env.update(simulated_provider_env(cluster, tmp_path_factory.mktemp("hooked"), providers))
        gateway.extra_env.update(
            {
                "HOOKS": SECRET,
                "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": str(POLL_S),
                "BATCHGW_WORKER__PROVIDER_POLL_ANNOUNCED_MIN_S": str(POLL_S),
                "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": str(POLL_S),
            }
        )
        yield gateway.start()


@pytest.fixture(scope="module")
def safety_net(
    gateway_factory: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, SimulatorCluster]]:
    """A gateway polling its providers from 0.25 s, except those whose webhooks announce ended batches: from
    ``SAFETY_NET_S`` there. ``hooked``'s webhooks arrive; ``deaf``'s go to a port nobody listens on. The emulated
    providers take 2 s per batch."""
    gateway: GatewayProcess = gateway_factory()
    url = f"{gateway.base_url}/webhooks/providers/hooked"
    nowhere = f"http://127.0.0.1:{free_port()}/webhooks/providers/deaf"
    specs = [
        ProviderSpec(name="hooked", webhook_url=url, webhook_secret=SECRET, processing_delay_s=2.0),
        ProviderSpec(name="deaf", webhook_url=nowhere, webhook_secret=SECRET, processing_delay_s=2.0),
        ProviderSpec(name="quiet", processing_delay_s=2.0),
    ]
    with SimulatorCluster(specs, control_port=0) as cluster:
        hooks = {"webhook_secret_env": "HOOKS"}
        providers = {
            "hooked": {"emulator": "hooked", "models": {"gpt-4o-mini": "gpt-4o-mini"}, **hooks},
            "deaf": {"emulator": "deaf", "models": {"deaf-model": "gpt-4o-mini"}, **hooks},
            "quiet": {"emulator": "quiet", "models": {"other-model": "gpt-4o-mini"}},
        }
        gateway.extra_env.update(simulated_provider_env(cluster, tmp_path_factory.mktemp("net"), providers))
        gateway.extra_env.update(
            {
                "HOOKS": SECRET,
                "BATCHGW_WORKER__PROVIDER_POLL_MIN_S": "0.25",
                "BATCHGW_WORKER__PROVIDER_POLL_ANNOUNCED_MIN_S": str(SAFETY_NET_S),
                "BATCHGW_WORKER__PROVIDER_POLL_MAX_S": str(POLL_S),
            }
        )
        yield gateway.start(), cluster


def delivery(event: dict[str, Any], *, secret: str = SECRET, age_s: float = 0.0) -> tuple[bytes, dict[str, str]]:
    """A signed delivery of ``event``, as sent ``age_s`` seconds ago."""
    body = json.dumps(event).encode()
    sent = datetime.fromtimestamp(int(time.time() - age_s), UTC)
    headers = {
        "content-type": "application/json",
        "webhook-id": "wh_test",
        "webhook-timestamp": str(int(sent.timestamp())),
        "webhook-signature": Webhook(secret).sign("wh_test", sent, body),
    }
    return body, headers


def post(gateway: GatewayProcess, provider: str, body: bytes, headers: dict[str, str]) -> Any:
    return loopback.post(f"{gateway.base_url}/webhooks/providers/{provider}", content=body, headers=headers)


def outcomes(gateway: GatewayProcess) -> dict[str, float]:
    found = samples(scrape(gateway.base_url))
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in found.items()
        if name == "batchgw_provider_webhooks_total" and dict(labels).get("provider") == "hooked"
    }


def test_a_batch_is_collected_when_its_provider_announces_its_end(hooked: GatewayProcess) -> None:
    client = hooked.client(hooked.create_key("acme"))
    started = time.monotonic()
    batch = submit(client, chat_requests(20))
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() - started < POLL_S / 2, f"still {batch.status}: the webhook did not bring the poll"
        time.sleep(0.2)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == 20
    assert outcomes(hooked).get("polled", 0) >= 1
    assert len(client.files.content(batch.output_file_id or "").text.splitlines()) == 20


def test_an_event_reaches_the_batch_of_another_provider_on_the_same_project(hooked: GatewayProcess) -> None:
    """OpenAI posts every batch of a project to the project's endpoint: a batch ``hooked-flex`` created is
    announced at ``hooked``'s, and polled at once all the same."""
    client = hooked.client(hooked.create_key("flexers"))
    started = time.monotonic()
    batch = submit(client, chat_requests(10, model="flex-model"))
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() - started < POLL_S / 2, f"still {batch.status}: the webhook did not bring the poll"
        time.sleep(0.2)
    assert batch.status == "completed" and batch.metadata and batch.metadata.get("gateway_providers") == "hooked-flex"


def test_a_provider_that_announces_ended_batches_is_polled_as_a_safety_net_only(
    safety_net: tuple[GatewayProcess, SimulatorCluster],
) -> None:
    """At ``hooked`` the first poll is ``SAFETY_NET_S`` after the submit, so its batch's one status read is the poll
    its webhook brought, seconds before; ``deaf``'s webhooks never arrive, and the first poll finds its batch ended;
    ``quiet`` sends none, and its batch is polled from 0.25 s on, doubling. The delays are read off each emulator's
    own log (its batch's create, then its status reads), so a slow upload or hand-off before the create cannot
    move them."""
    gateway, cluster = safety_net
    client = gateway.client(gateway.create_key("net"))
    submitted = {
        provider: (time.monotonic(), submit(client, chat_requests(5, model=model)))
        for provider, model in (("hooked", "gpt-4o-mini"), ("deaf", "deaf-model"), ("quiet", "other-model"))
    }
    for started, batch in submitted.values():
        while (batch := client.batches.retrieve(batch.id)).status not in TERMINAL:
            assert time.monotonic() - started < POLL_S / 2, f"still {batch.status}"
            time.sleep(0.1)
        assert batch.status == "completed", batch.errors

    def status_reads_after_create(provider: str) -> list[float]:
        """Seconds from the provider batch's create to each status read of it, as the emulator saw them."""
        log = emulator_log(cluster, provider)
        (created,) = [e["timestamp"] for e in log if e["method"] == "POST" and e["path"] == "/v1/batches"]
        reads = [e["timestamp"] for e in log if e["method"] == "GET" and e["path"].startswith("/v1/batches")]
        return [read - created for read in reads]

    hooked, deaf, quiet = (status_reads_after_create(name) for name in ("hooked", "deaf", "quiet"))
    assert len(hooked) == 1 and hooked[0] < SAFETY_NET_S, f"the webhook brought the one poll: {hooked}"
    assert len(deaf) == 1 and deaf[0] >= SAFETY_NET_S, f"no webhook: one poll, at the safety net's delay: {deaf}"
    assert len(quiet) >= 3, f"no webhooks announced: polled from 0.25 s on: {quiet}"


def test_deliveries_that_fail_verification_are_refused(hooked: GatewayProcess) -> None:
    event = {"id": "evt_1", "object": "event", "created_at": 1, "type": "batch.completed", "data": {"id": "batch_x"}}
    before = outcomes(hooked).get("refused", 0)
    body, headers = delivery(event, secret="whsec_" + base64.b64encode(b"another key").decode())
    assert_error(post(hooked, "hooked", body, headers), 400, code="invalid_webhook_signature")
    body, headers = delivery(event, age_s=400)
    refused = assert_error(post(hooked, "hooked", body, headers), 400, code="invalid_webhook_signature")
    assert "too old" in refused["message"]
    body, headers = delivery(event)
    tampered = body.replace(b"batch_x", b"batch_y")
    assert_error(post(hooked, "hooked", tampered, headers), 400, code="invalid_webhook_signature")
    unsigned = {k: v for k, v in headers.items() if k != "webhook-signature"}
    assert_error(post(hooked, "hooked", body, unsigned), 400, code="invalid_webhook_signature")
    body, headers = delivery([1, 2])  # type: ignore[arg-type]
    assert_error(post(hooked, "hooked", body, headers), 400, code="invalid_webhook_event")
    assert outcomes(hooked)["refused"] == before + 5
    assert hooked.log_path is not None and "refused a webhook" in hooked.log_path.read_text()
    assert SECRET not in hooked.log_path.read_text()


def test_providers_that_take_no_webhooks_answer_404(hooked: GatewayProcess) -> None:
    body, headers = delivery({"type": "batch.completed", "data": {"id": "batch_x"}})
    quiet, nobody = (assert_error(post(hooked, name, body, headers), 404) for name in ("quiet", "nobody"))
    assert quiet["message"] == "No provider 'quiet' takes webhooks here."
    assert nobody["message"] == quiet["message"].replace("quiet", "nobody"), "the provider names are not revealed"


def test_other_events_and_batches_nothing_waits_for_are_acknowledged_and_ignored(hooked: GatewayProcess) -> None:
    for event in (
        {"id": "evt_2", "type": "response.completed", "created_at": 1, "data": {"id": "resp_1"}},
        {"id": "evt_3", "type": "batch.completed", "created_at": 1, "data": {"id": "batch_of_someone_else"}},
    ):
        body, headers = delivery(event)
        started = time.monotonic()
        answered = post(hooked, "hooked", body, headers)
        assert answered.status_code == 200 and answered.json() == {"status": "ignored"}
        assert time.monotonic() - started < 1.5, "no create call is under way: nothing to wait for"


def test_the_route_is_documented(hooked: GatewayProcess) -> None:
    schema = loopback.get(f"{hooked.base_url}/schema/openapi.json").json()
    operation = schema["paths"]["/webhooks/providers/{provider}"]["post"]
    assert {"400", "404"} <= set(operation["responses"])
    assert not operation.get("security"), "providers sign their deliveries: no client key"
