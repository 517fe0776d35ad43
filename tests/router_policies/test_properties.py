"""Properties over random catalogs and provider states."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from router_policies.base import Hints, JobFacts, Offer, PriceWindow, ProviderState, is_usable
from router_policies.cheapest import CheapestPolicy
from router_policies.deadline import DeadlinePolicy
from router_policies.helpers import estimate_duration, job_cost
from router_policies.offpeak import OffpeakPolicy
from router_policies.prefer import PreferPolicy
from router_policies.spread import SpreadPolicy

PROVIDERS = ["a", "b", "c", "d"]
price = st.floats(min_value=0, max_value=20, allow_nan=False, allow_infinity=False)
hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))


@st.composite
def windows(draw: st.DrawFn) -> tuple[PriceWindow, ...]:
    start, end = draw(hhmm), draw(hhmm)
    if start == end or not draw(st.booleans()):
        return ()
    return (PriceWindow(start, end, draw(price), draw(price), "w"),)


@st.composite
def offers(draw: st.DrawFn) -> list[Offer]:
    made = []
    for index in range(draw(st.integers(1, 6))):
        batch = draw(st.one_of(st.none(), st.tuples(price, price)))
        made.append(
            Offer(
                provider=draw(st.sampled_from(PROVIDERS)),
                model="m",
                provider_model=f"pm{index}",
                input_per_mtok=draw(price),
                output_per_mtok=draw(price),
                batch_input_per_mtok=None if batch is None else batch[0],
                batch_output_per_mtok=None if batch is None else batch[1],
                mode=draw(st.sampled_from(["batch", "sync"])),
                price_windows=draw(windows()),
            )
        )
    return made


@st.composite
def provider_states(draw: st.DrawFn) -> dict[str, ProviderState]:
    result = {}
    for name in draw(st.lists(st.sampled_from(PROVIDERS), unique=True)):
        cap = draw(st.one_of(st.none(), st.integers(0, 3)))
        result[name] = ProviderState(
            provider=name,
            healthy=draw(st.booleans()),
            circuit=draw(st.sampled_from(["closed", "open", "half_open"])),
            in_flight=draw(st.integers(0, 3)),
            max_in_flight=cap,
            max_requests_per_batch=draw(st.one_of(st.none(), st.integers(1, 500))),
            requests_per_minute=draw(st.one_of(st.none(), st.floats(1, 1000))),
            turnaround_p90_s={f"pm{i}": draw(st.floats(60, 200_000)) for i in range(draw(st.integers(0, 3)))},
        )
    return result


@st.composite
def jobs(draw: st.DrawFn) -> JobFacts:
    start = datetime(2026, 11, 24, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 24 * 60)))
    return JobFacts(
        model="m",
        request_count=draw(st.integers(0, 5000)),
        est_input_tokens=draw(st.integers(0, 10_000_000)),
        est_output_tokens=draw(st.integers(0, 5_000_000)),
        deadline_s=draw(st.one_of(st.none(), st.floats(60, 3 * 86400))),
        now=start,
    )


@settings(max_examples=100, deadline=None)
@given(job=jobs(), offers=offers(), states=provider_states())
def test_cheapest_never_picks_a_costlier_offer_than_a_usable_alternative(
    job: JobFacts, offers: list[Offer], states: dict[str, ProviderState]
) -> None:
    ranked = CheapestPolicy().rank(job, offers, states)
    usable = [o for o in offers if is_usable(states.get(o.provider))]
    assert len(ranked) == len(usable)
    if not ranked:
        return
    costs = [job_cost(job, o, estimate_duration(job, o, states[o.provider]).seconds) for o in usable]
    assert ranked[0].estimated_cost_usd <= min(costs)
    assert [c.estimated_cost_usd for c in ranked] == sorted(c.estimated_cost_usd for c in ranked)


@settings(max_examples=100, deadline=None)
@given(
    job=jobs(),
    offers=offers(),
    states=provider_states(),
    order=st.lists(st.sampled_from(PROVIDERS), min_size=1, unique=True),
    weights=st.dictionaries(st.sampled_from(PROVIDERS), st.integers(1, 5)),
)
def test_no_policy_puts_an_unusable_or_unknown_provider_first(
    job: JobFacts,
    offers: list[Offer],
    states: dict[str, ProviderState],
    order: list[str],
    weights: dict[str, int],
) -> None:
    known = {o.provider for o in offers} | set(states)
    hinted = JobFacts(
        model=job.model,
        request_count=job.request_count,
        est_input_tokens=job.est_input_tokens,
        est_output_tokens=job.est_output_tokens,
        deadline_s=job.deadline_s,
        now=job.now,
        hints=Hints(
            providers=tuple(p for p in order if p in known) or (next(iter(known)),),
            weights={p: float(w) for p, w in weights.items() if p in known},
        ),
    )
    for policy in (CheapestPolicy(), DeadlinePolicy(), PreferPolicy(), SpreadPolicy(), OffpeakPolicy()):
        ranked = policy.rank(hinted, offers, states)
        for candidate in ranked:
            assert is_usable(states.get(candidate.offer.provider)), policy.name
            assert candidate.start_at is None or candidate.start_at >= hinted.now
        if any(c.share < 1.0 for c in ranked):
            assert math.isclose(math.fsum(c.share for c in ranked), 1.0, abs_tol=1e-12), policy.name
