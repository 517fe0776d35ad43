"""OpenAI-compatible Models API: the models this gateway routes, with their offers under ``batch_gateway``."""

from __future__ import annotations

import calendar
from typing import Any

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import Provide

from gateway.api.auth import Principal, provide_principal
from gateway.api.openapi import CLIENT_SECURITY, errors
from gateway.context import GatewayContext
from gateway.routing.offers import PricedOffer

OWNER = "batch-gateway"


def model_object(context: GatewayContext, model: str) -> dict[str, Any]:
    """A Model object (``id``, ``object``, ``created``, ``owned_by``) and, under ``batch_gateway``, the offers
    behind it: provider, provider model, how it runs, and its prices in USD per million tokens."""
    offers = context.offers.offers(model)
    dates = [o.source.as_of for o in offers if o.source is not None]
    entry = context.offers.catalog.data.models.get(model)
    return {
        "id": model,
        "object": "model",
        # When its prices were first seen (the catalog's dates), 0 when none is priced.
        "created": calendar.timegm(min(dates).timetuple()) if dates else 0,
        "owned_by": OWNER,
        "batch_gateway": {
            "description": entry.description if entry is not None else None,
            "aliases": sorted(entry.aliases) if entry is not None else [],
            "offers": [_offer_view(o) for o in offers],
        },
    }


def _offer_view(priced: PricedOffer) -> dict[str, Any]:
    offer = priced.offer
    paid_in, paid_out = priced.paid_rates
    return {
        "provider": offer.provider,
        "provider_model": offer.provider_model,
        "mode": offer.run_mode,
        "input_per_mtok": paid_in,
        "output_per_mtok": paid_out,
        "sync_input_per_mtok": offer.input_per_mtok,
        "sync_output_per_mtok": offer.output_per_mtok,
        "priced": priced.source is not None,
    }


class ModelsController(Controller):
    """``/v1/models``"""

    path = "/models"
    dependencies = {"principal": Provide(provide_principal)}
    tags = ["models"]
    security = CLIENT_SECURITY

    @get("/", summary="List models", responses=errors())
    async def list_models(self, state: State, principal: Principal) -> dict[str, Any]:
        """Every model some configured provider serves, by the name clients use, sorted."""
        context: GatewayContext = state.context
        return {"object": "list", "data": [model_object(context, m) for m in context.offers.models()]}

    @get("/{model:str}", summary="Retrieve a model", responses=errors(404))
    async def retrieve_model(self, state: State, principal: Principal, model: str) -> dict[str, Any]:
        """One model by its name or an alias of it; 404 ``model_not_found`` with close names otherwise."""
        context: GatewayContext = state.context
        return model_object(context, context.offers.resolve(model).model)
