"""``GET /v1/models`` on a real gateway with two emulated providers, judged by the official SDK: every model
a provider serves is listed once, by the name clients use, with its offers under ``batch_gateway``; a model
is retrieved by its name or an alias; an unknown one is OpenAI's 404 with close names."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gateway.simulator import SimulatorCluster
from tests.conftest import GatewayProcess, simulated_provider_env
from tests.engine import write_catalog

PROVIDERS = {
    "cheap": {"emulator": "fast", "models": {"gpt-4o-mini": "gpt-4o-mini", "llama-3.3-70b": "llama-3.3-70b"}},
    "pricey": {"emulator": "other", "models": {"gpt-4o-mini": "gpt-4o-mini"}},
}
PRICES = {
    "cheap": {"batch": (0.075, 0.30), "sync": (0.15, 0.60)},
    "pricey": {"batch": (1.25, 5.0), "sync": (2.5, 10.0)},
}


@pytest.fixture(scope="module")
def served(
    gateway_factory: Any, simulator: SimulatorCluster, tmp_path_factory: pytest.TempPathFactory
) -> GatewayProcess:
    folder = tmp_path_factory.mktemp("models")
    env = simulated_provider_env(simulator, folder, PROVIDERS)
    env["BATCHGW_CATALOG__FILE"] = str(write_catalog(folder, PRICES))
    started: GatewayProcess = gateway_factory(env).start()
    return started


@pytest.fixture(scope="module")
def sdk(served: GatewayProcess) -> openai.OpenAI:
    return served.client(served.create_key("acme"))


def test_every_served_model_is_listed_once_with_its_offers(sdk: openai.OpenAI) -> None:
    models = {m.id: m for m in sdk.models.list()}
    assert sorted(models) == ["gpt-4o-mini", "llama-3.3-70b"]
    mini = models["gpt-4o-mini"]
    assert mini.object == "model" and mini.owned_by == "batch-gateway" and mini.created > 0
    offers = {o["provider"]: o for o in (mini.model_extra or {})["batch_gateway"]["offers"]}
    assert sorted(offers) == ["cheap", "pricey"]
    assert offers["cheap"]["mode"] == "batch" and offers["cheap"]["priced"]
    assert (offers["cheap"]["input_per_mtok"], offers["cheap"]["output_per_mtok"]) == PRICES["cheap"]["batch"]
    pricey = offers["pricey"]
    assert (pricey["sync_input_per_mtok"], pricey["sync_output_per_mtok"]) == PRICES["pricey"]["sync"]
    llama = {o["provider"] for o in (models["llama-3.3-70b"].model_extra or {})["batch_gateway"]["offers"]}
    assert llama == {"cheap"}


def test_a_model_is_retrieved_by_name_and_an_unknown_one_is_a_404_with_close_names(sdk: openai.OpenAI) -> None:
    model = sdk.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini" and model.object == "model"
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("gpt-4o-mni")
    assert caught.value.code == "model_not_found"
    assert "gpt-4o-mini" in caught.value.message


def test_the_models_list_needs_a_key(served: GatewayProcess) -> None:
    with pytest.raises(openai.AuthenticationError):
        served.client("bgw-not-a-key").models.list()
