"""The client's provider order first (``providers`` hint), then everything else by cost.

Within one preferred provider its offers go cheapest first. A preferred provider that is unusable
right now is skipped and the skip is named in the first candidate's reason. Naming a provider the
gateway does not know is a client error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from router_policies.base import Candidate, JobFacts, Offer, PolicyError, ProviderState, is_usable
from router_policies.cheapest import cost_order
from router_policies.helpers import within_cap


def check_known_providers(
    hint: str, names: Sequence[str], offers: Sequence[Offer], states: Mapping[str, ProviderState]
) -> None:
    """Raise :class:`PolicyError` for provider names neither an offer nor a state mentions."""
    known = {offer.provider for offer in offers} | set(states)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise PolicyError(
            f"the {hint!r} hint names unknown provider(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


class PreferPolicy:
    """Providers in the client's order, then the cheapest of the rest."""

    name = "prefer"

    def rank(self, job: JobFacts, offers: Sequence[Offer], states: Mapping[str, ProviderState]) -> list[Candidate]:
        """Preferred providers' offers in hint order, then the others by cost."""
        order = job.hints.providers
        if not order:
            raise PolicyError("policy 'prefer' needs the 'providers' hint, e.g. providers=groq,together")
        check_known_providers("providers", order, offers, states)

        by_cost = cost_order(job, offers, states)
        skipped = [name for name in order if not is_usable(states.get(name))]
        absent = [name for name in order if is_usable(states.get(name)) and all(o.provider != name for o in offers)]
        ranked: list[Candidate] = []
        for position, name in enumerate(order, start=1):
            for candidate in by_cost:
                if candidate.offer.provider == name:
                    why = f"preferred #{position}; {candidate.reason}"
                    ranked.append(Candidate(candidate.offer, candidate.estimated_cost_usd, why))
        rest = [c for c in by_cost if c.offer.provider not in order]
        ranked += [Candidate(c.offer, c.estimated_cost_usd, f"not preferred; {c.reason}") for c in rest]

        notes = []
        if skipped:
            notes.append(f"skipped unusable preferred provider(s) {', '.join(skipped)}")
        if absent:
            notes.append(f"{', '.join(absent)} do(es) not serve {job.model!r}")
        if ranked and notes:
            first = ranked[0]
            ranked[0] = Candidate(first.offer, first.estimated_cost_usd, f"{first.reason}; {'; '.join(notes)}")
        return within_cap(job, ranked)
