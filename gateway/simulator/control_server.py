"""The control server's API: list providers, switch faults, reset, read logs and counters, shift clocks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request, get, post

from gateway.simulator.errors import ApiError
from gateway.simulator.openai_protocol import OpenAIDriver
from gateway.simulator.provider_server import ProviderRunner, exception_handlers

if TYPE_CHECKING:
    from gateway.simulator.server import SimulatorCluster

Req = Request[Any, Any, Any]


def build_control_app(cluster: SimulatorCluster) -> Litestar:
    """The control API: list providers, switch faults, reset, read logs and counters, shift clocks."""

    def runner(request: Req) -> ProviderRunner:
        name = request.path_params["name"]
        if name not in cluster.names():
            raise ApiError(404, f"No emulated provider named {name!r}.", param="name")
        return cluster.runner(name)

    async def json_object(request: Req) -> dict[str, Any]:
        try:
            return msgspec.json.decode(await request.body() or b"{}", type=dict[str, Any])
        except msgspec.MsgspecError:
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_json") from None

    @get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @get("/providers")
    async def providers() -> list[dict[str, Any]]:
        return [cluster.runner(name).describe() for name in cluster.names()]

    @get("/providers/{name:str}")
    async def provider(request: Req) -> dict[str, Any]:
        return runner(request).describe()

    @post("/providers/{name:str}/faults", status_code=200)
    async def set_faults(request: Req) -> Any:
        target = runner(request)
        try:
            faults = target.state.update_faults(await json_object(request))
        except msgspec.ValidationError as exc:
            raise ApiError(400, f"Invalid faults: {exc}", code="invalid_value") from None
        await target.reconcile()
        return msgspec.to_builtins(faults)

    @post("/providers/{name:str}/reset", status_code=200)
    async def reset(request: Req) -> dict[str, Any]:
        target = runner(request)
        target.state.reset()
        await target.reconcile()
        return target.describe()

    @get("/providers/{name:str}/log")
    async def request_log(request: Req) -> dict[str, Any]:
        return {"object": "list", "data": msgspec.to_builtins(list(runner(request).state.log))}

    @get("/providers/{name:str}/stats")
    async def stats(request: Req) -> dict[str, Any]:
        state = runner(request).state
        statuses: dict[str, int] = {}
        for job in state.jobs.values():
            statuses[job.status] = statuses.get(job.status, 0) + 1
        counts = msgspec.to_builtins(state.stats)
        live = {
            "files_stored": len(state.files.files),
            "calls_in_flight": state.calls_in_flight,
            "most_calls_in_flight": state.most_calls_in_flight,
        }
        return {**counts, **live, "batches": statuses}

    @get("/providers/{name:str}/invoice")
    async def invoice(request: Req) -> dict[str, Any]:
        """What the provider would bill: per batch, the requests that ran to a successful answer and their tokens
        (completed requests of cancelled and expired batches are billed too, as real providers do). Providers
        that bill a cost of their own (OpenRouter's ``usage.cost``) add ``cost_usd``, per batch and in total."""
        state = runner(request).state
        costed = state.kind == "openrouter"
        batches = [
            {
                "id": job.id,
                "status": job.status,
                "metadata": job.metadata,
                "requests_billed": job.completed,
                "input_tokens": job.input_tokens,
                "output_tokens": job.output_tokens,
                **({"cost_usd": job.extra.get("cost_usd", 0.0)} if costed else {}),
            }
            for job in state.jobs.values()
        ]
        jobs = list(state.jobs.values())
        totals = {
            "requests_billed": sum(job.completed for job in jobs),
            "input_tokens": sum(job.input_tokens for job in jobs),
            "output_tokens": sum(job.output_tokens for job in jobs),
            **({"cost_usd": sum(batch["cost_usd"] for batch in batches)} if costed else {}),
        }
        by_tier = state.stats.usage_by_tier  # synchronous chat answers, by the service tier that served them
        return {"object": "invoice", "provider": state.name, "batches": batches, **totals, "sync_by_tier": by_tier}

    @post("/providers/{name:str}/clock", status_code=200)
    async def clock(request: Req) -> dict[str, Any]:
        state = runner(request).state
        advance = (await json_object(request)).get("advance_s", 0)
        if isinstance(advance, bool) or not isinstance(advance, int | float):
            raise ApiError(400, "'advance_s' must be a number of seconds.", param="advance_s")
        state.clock.advance(float(advance))
        return {"now": state.clock.now(), "offset_s": state.clock.offset_s}

    return Litestar(
        route_handlers=[health, providers, provider, set_faults, reset, request_log, stats, invoice, clock],
        exception_handlers=exception_handlers(OpenAIDriver().error_body),
        openapi_config=None,
        logging_config=None,
    )
