"""Admin API (guarded by the admin key): providers with health and prices, batches across teams with
their shards and routing decisions (keys: :mod:`gateway.api.admin_keys`)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import Parameter

from gateway.api.auth import require_admin
from gateway.api.objects import batch_object, list_object
from gateway.api.openapi import ADMIN_SECURITY, admin_errors, page_size
from gateway.billing.estimate import cost_usd
from gateway.context import GatewayContext
from gateway.db import abandoned as abandoned_db
from gateway.db import billing as billing_db
from gateway.db import repo
from gateway.db import routing as routing_db
from gateway.db import shards as shard_db
from gateway.db.models import AbandonedProviderBatch, Batch, ProviderHealth, RoutingDecision, Shard
from gateway.db.unit_of_work import reading
from gateway.errors import bad_request, not_found
from gateway.pipeline import lifecycle
from gateway.routing.health import percentile, provider_states
from gateway.routing.offers import PricedOffer


def shard_view(shard: Shard) -> dict[str, Any]:
    """A shard as the admin API shows it (no provider credentials, ever)."""
    return {
        "id": shard.id,
        "seq": shard.seq,
        "provider": shard.provider,
        "model": shard.model,
        "provider_model": shard.provider_model,
        "mode": shard.mode,
        "state": shard.state,
        "end_reason": shard.end_reason,
        "generation": shard.generation,
        "parent_id": shard.parent_id,
        "pinned": shard.pinned,
        "canary": shard.canary,
        "provider_batch_id": shard.provider_batch_id,
        "provider_status": shard.provider_status,
        "request_count": shard.request_count,
        "completed": shard.result_completed + shard.progress_completed,
        "failed": shard.result_failed + shard.progress_failed,
        "moved": shard.result_moved,
        "attempts": shard.attempts,
        "estimated_cost_usd": round(shard.estimated_cost_usd, 6),
        "cost_usd": round(cost_usd(shard.input_tokens, shard.output_tokens, shard_rates(shard)), 6),
        "last_error": shard.last_error,
        "waiting": {"code": shard.wait_code, "detail": shard.wait_detail} if shard.wait_code else None,
        "step_attempts": shard.stage_attempts,
        "attempt_log": shard.attempt_log or [],
        "created_at": shard.created_at,
        "submitted_at": shard.submitted_at,
        "finished_at": shard.finished_at,
    }


def shard_rates(shard: Shard) -> tuple[float, float]:
    """The USD per MTok a shard pays."""
    return shard.input_per_mtok, shard.output_per_mtok


def admin_batch_view(row: Batch, team: str | None, waiting: tuple[str, str] | None = None) -> dict[str, Any]:
    """A batch as operators see it: the API object plus team, stage, policy, providers, money and why it waits."""
    finished = row.completed_at or row.failed_at or row.expired_at or row.cancelled_at
    return batch_object(row, waiting) | {
        "team_id": row.team_id,
        "team": team,
        "stage": row.stage,
        "policy": row.policy,
        "models": sorted({row.model} if row.model else set()),
        "providers": row.providers.split(",") if row.providers else [],
        "estimated_cost_usd": row.estimated_cost_usd,
        "projected_cost_usd": row.projected_cost_usd,
        "cost_usd": round(row.cost_usd, 6),
        "savings_usd": round(row.list_cost_usd - row.cost_usd, 6),
        "paid_twice_usd": round(row.abandoned_cost_usd, 6),
        "turnaround_s": (finished - row.created_at) if finished else None,
        "waiting": {"code": waiting[0], "detail": waiting[1]} if waiting else None,
        "hold": (
            {"reason": row.hold_reason, "detail": row.hold_detail, "canary_projected_usd": row.canary_projected_usd}
            if row.hold_reason
            else None
        ),
        "stage_attempts": row.stage_attempts,
        "attempt_log": row.attempt_log or [],
    }


def abandoned_view(row: AbandonedProviderBatch) -> dict[str, Any]:
    """A provider batch the gateway moved work off, and what became of it."""
    return {
        "provider": row.provider,
        "provider_batch_id": row.provider_batch_id,
        "origin": row.origin,
        "reason": row.reason,
        "state": row.state,
        "cancel_sent_at": row.cancel_sent_at,
        "provider_status": row.provider_status,
        "requests_billed": row.requests_billed,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost_usd": round(row.cost_usd, 6),
        "last_error": row.last_error,
        "created_at": row.created_at,
        "settled_at": row.settled_at,
    }


def decision_view(decision: RoutingDecision) -> dict[str, Any]:
    """A routing decision as the admin API shows it."""
    return {
        "id": decision.id,
        "kind": decision.kind,
        "model": decision.model,
        "policy": decision.policy,
        "chosen_provider": decision.chosen_provider,
        "reason": decision.reason,
        "cause": decision.cause,
        "shard_id": decision.shard_id,
        "request_count": decision.request_count,
        "candidates": decision.candidates,
        "created_at": decision.created_at,
    }


def health_view(row: ProviderHealth | None) -> dict[str, Any]:
    """A provider's circuit breaker (closed when nothing was ever recorded)."""
    if row is None:
        return {
            "circuit": "closed",
            "consecutive_failures": 0,
            "opened_at": None,
            "last_error": None,
            "last_failure_at": None,
            "last_success_at": None,
        }
    return {
        "circuit": row.circuit,
        "consecutive_failures": row.consecutive_failures,
        "opened_at": row.opened_at,
        "last_error": row.last_error,
        "last_failure_at": row.last_failure_at,
        "last_success_at": row.last_success_at,
    }


def offer_view(priced: PricedOffer) -> dict[str, Any]:
    """A priced offer with where its price comes from."""
    offer, source = priced.offer, priced.source
    return {
        "model": offer.model,
        "provider_model": offer.provider_model,
        "mode": offer.run_mode,
        "input_per_mtok": offer.input_per_mtok,
        "output_per_mtok": offer.output_per_mtok,
        "batch_input_per_mtok": offer.batch_input_per_mtok,
        "batch_output_per_mtok": offer.batch_output_per_mtok,
        "priced": source is not None,
        "source": source.source if source else None,
        "as_of": source.as_of.isoformat() if source else None,
    }


class AdminController(Controller):
    """``/admin``: operator endpoints; every route needs ``Authorization: Bearer <admin key>``."""

    path = "/admin"
    dependencies = {"_admin": Provide(require_admin)}
    tags = ["admin"]
    security = ADMIN_SECURITY

    @get(
        "/providers",
        responses=admin_errors(),
        summary="Providers: configuration, health, load, turnaround and prices (no secrets)",
    )
    async def providers(self, state: State, _admin: None) -> dict[str, Any]:
        """Each provider's kind, base URL, models and limits (keys named by variable only), its circuit
        breaker, shards in flight, observed turnaround per model and its priced offers."""
        context: GatewayContext = state.context
        states = await provider_states(context)
        async with reading(context.sessions) as session:
            rows = await routing_db.health_rows(session)
            samples = await routing_db.turnaround_samples(session, context.settings.routing.turnaround_samples)
        data = []
        for adapter in context.providers:
            name = adapter.name
            row = rows.get(name)
            turnaround = {
                provider_model: {
                    "p50_s": round(percentile(values, 50), 3),
                    "p90_s": round(percentile(values, 90), 3),
                    "samples": len(values),
                }
                for (provider, provider_model), values in samples.items()
                if provider == name and values
            }
            data.append(
                adapter.config.public_dict()
                | {
                    "mode": "sync" if adapter.executes_locally else "batch",
                    "health": health_view(row),
                    "in_flight": states[name].in_flight,
                    "max_batches_in_flight": adapter.config.limits.max_batches_in_flight,
                    "turnaround": turnaround,
                    "offers": [offer_view(o) for o in context.offers.all_offers() if o.offer.provider == name],
                }
            )
        return {
            "data": data,
            "policies": context.policies.names(),
            "default_policy": context.settings.routing.default_policy,
        }

    @get("/batches", summary="Batches of every team", responses=admin_errors(404))
    async def batches(
        self,
        state: State,
        _admin: None,
        after: str | None = None,
        limit: Annotated[int, Parameter(**page_size(100, "Batches per page, 1 to 100."))] = 20,
        status: str | None = None,
        team: str | None = None,
        provider: str | None = None,
        since: float | None = None,
    ) -> dict[str, Any]:
        """Newest first, with cursor pagination; filters by status, team name, provider and creation time."""
        context: GatewayContext = state.context
        if not 1 <= limit <= 100:
            raise bad_request("'limit' must be between 1 and 100.", param="limit")
        async with reading(context.sessions) as session:
            cursor = await repo.get_batch(session, None, after) if after else None
            if after and cursor is None:
                raise not_found("batch", after, param="after")
            team_id = None
            if team:
                found = await billing_db.team_by_name(session, team)
                if found is None:
                    return list_object([], has_more=False)
                team_id = found.id
            rows = await repo.list_batches(
                session,
                team_id,
                after=cursor,
                limit=limit + 1,
                statuses=[status] if status else (),
                provider=provider,
                since=since,
            )
            names = await repo.team_names(session, [r.team_id for r in rows])
            waits = {r.id: await lifecycle.batch_waiting(session, r) for r in rows[:limit]}
        data = [admin_batch_view(r, names.get(r.team_id), waits[r.id]) for r in rows[:limit]]
        return list_object(data, has_more=len(rows) > limit)

    @get(
        "/batches/{batch_id:str}",
        summary="One batch with its shards and routing decisions",
        responses=admin_errors(404),
    )
    async def batch_detail(self, state: State, _admin: None, batch_id: str) -> dict[str, Any]:
        """The batch object plus the engine's view: every shard and every routing decision with its
        candidates, estimated costs, choice, reason and (for failovers and retries) cause."""
        context: GatewayContext = state.context
        async with reading(context.sessions) as session:
            row = await repo.get_batch(session, None, batch_id)
            if row is None:
                raise not_found("batch", batch_id)
            shards = await shard_db.batch_shards(session, batch_id)
            decisions = await routing_db.batch_decisions(session, batch_id)
            names = await repo.team_names(session, [row.team_id])
            waiting = await lifecycle.batch_waiting(session, row)
            abandoned = await abandoned_db.for_batch(session, batch_id)
        return admin_batch_view(row, names.get(row.team_id), waiting) | {
            "shards": [shard_view(s) for s in shards],
            "decisions": [decision_view(d) for d in decisions],
            "abandoned_provider_batches": [abandoned_view(a) for a in abandoned],
        }
