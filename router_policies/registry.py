"""Finding policies by name, and turning a client's batch metadata into validated :class:`Hints`.

Built-in policies are registered here directly. Third-party packages add policies through the
entry-point group ``batch_gateway.policies``; the entry point's name is the policy's name and its
object is a policy instance or a class constructible without arguments::

    [project.entry-points."batch_gateway.policies"]
    greenest = "my_package.policies:GreenestPolicy"

A third-party policy cannot replace a built-in one of the same name (the built-in wins). A
third-party policy that fails to load is left out; asking for it by name reports why.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points

from router_policies.base import Hints, Policy, PolicyError
from router_policies.cheapest import CheapestPolicy
from router_policies.deadline import DeadlinePolicy
from router_policies.offpeak import OffpeakPolicy
from router_policies.prefer import PreferPolicy
from router_policies.spread import SpreadPolicy

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "batch_gateway.policies"
DEFAULT_POLICY = "cheapest"
BUILTIN_POLICIES: Mapping[str, Callable[[], Policy]] = {
    "cheapest": CheapestPolicy,
    "deadline": DeadlinePolicy,
    "prefer": PreferPolicy,
    "spread": SpreadPolicy,
    "offpeak": OffpeakPolicy,
}
HINT_KEYS = ("policy", "deadline", "providers", "weights", "max_cost_usd", "tier")
SERVICES = ("batch", "standard", "flex", "priority")
"""Metadata keys the gateway reads as routing hints; any other key passes through in ``Hints.extra``."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_DEADLINE_S = 30 * 86400.0


class UnknownPolicy(PolicyError):
    """No policy has the name asked for."""


class PolicyRegistry:
    """Policies by name: the built-ins plus those found through entry points.

    ``policies`` adds or replaces policies by name (for embedding and tests); ``discover=False``
    skips the entry points.
    """

    def __init__(self, policies: Mapping[str, Policy] | None = None, *, discover: bool = True) -> None:
        self._policies: dict[str, Policy] = {}
        self._broken: dict[str, str] = {}
        if discover:
            self._discover()
        for name, factory in BUILTIN_POLICIES.items():
            self._policies[name] = factory()
        for name, policy in (policies or {}).items():
            self._policies[name] = policy

    def _discover(self) -> None:
        for point in entry_points(group=ENTRY_POINT_GROUP):
            if point.name in BUILTIN_POLICIES:
                log.warning(
                    "entry point %s shadows the built-in policy %r; the built-in is kept", point.value, point.name
                )
                continue
            try:
                loaded = point.load()
                policy = loaded() if isinstance(loaded, type) else loaded
            except Exception as exc:  # any failure inside third-party code must not stop the gateway
                log.warning("policy %r from entry point %s failed to load: %s", point.name, point.value, exc)
                self._broken[point.name] = f"{type(exc).__name__}: {exc}"
                continue
            if not isinstance(policy, Policy):
                self._broken[point.name] = f"{point.value} has no 'name' and 'rank'"
                log.warning("policy %r from entry point %s is not a policy", point.name, point.value)
                continue
            self._policies[point.name] = policy

    def names(self) -> list[str]:
        """Every usable policy name, sorted."""
        return sorted(self._policies)

    def get(self, name: str | None = None) -> Policy:
        """The policy called ``name`` (default :data:`DEFAULT_POLICY`)."""
        key = DEFAULT_POLICY if name is None else name.strip()
        policy = self._policies.get(key)
        if policy is not None:
            return policy
        if key in self._broken:
            raise UnknownPolicy(f"policy {key!r} is installed but failed to load ({self._broken[key]})")
        raise UnknownPolicy(f"unknown policy {key!r}; known policies: {', '.join(self.names())}")


_default: PolicyRegistry | None = None


def default_registry(refresh: bool = False) -> PolicyRegistry:
    """The process-wide registry, discovered once (again with ``refresh=True``)."""
    global _default
    if _default is None or refresh:
        _default = PolicyRegistry()
    return _default


def get_policy(name: str | None = None, registry: PolicyRegistry | None = None) -> Policy:
    """The policy called ``name``; raises :class:`UnknownPolicy` listing the known names."""
    return (registry or default_registry()).get(name)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90m``, ``1h``, ``1h30m``, ``2d`` or ``1.5h``."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION_PART.sub("", compact):
        raise PolicyError(f"deadline {text!r} is not a duration such as '90m', '1h', '24h' or '2d'")
    seconds = sum(float(number) * _UNIT_S[unit] for number, unit in _DURATION_PART.findall(compact))
    if seconds <= 0:
        raise PolicyError(f"deadline {text!r} must be longer than zero")
    if seconds > MAX_DEADLINE_S:
        raise PolicyError(f"deadline {text!r} is longer than the 30d maximum")
    return seconds


def _parse_number(key: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise PolicyError(f"{key} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise PolicyError(f"{key} {text!r} must be a finite number >= 0")
    return value


def _parse_providers(text: str) -> tuple[str, ...]:
    names = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not name for name in names):
        raise PolicyError(f"providers {text!r} must be a comma-separated list of names, e.g. 'groq,together'")
    for name in names:
        if not _PROVIDER_NAME.match(name):
            raise PolicyError(f"providers: {name!r} is not a valid provider name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PolicyError(f"providers lists {', '.join(duplicates)} more than once")
    return tuple(names)


def _parse_weights(text: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise PolicyError(f"weights {text!r} must look like 'groq=2,together=1'")
        if not _PROVIDER_NAME.match(name):
            raise PolicyError(f"weights: {name!r} is not a valid provider name")
        if name in weights:
            raise PolicyError(f"weights names {name!r} more than once")
        weights[name] = _parse_number(f"weight of {name}", value)
    if not any(weight > 0 for weight in weights.values()):
        raise PolicyError(f"weights {text!r} needs at least one weight above 0")
    return weights


def parse_hints(metadata: Mapping[str, str] | None, registry: PolicyRegistry | None = None) -> Hints:
    """Validate the routing keys of a batch's ``metadata`` (``policy``, ``deadline``, ``providers``,
    ``weights``, ``max_cost_usd``, ``tier``); raise :class:`PolicyError` with a message fit for the client.

    ``policy`` is checked against ``registry`` (default: the process-wide one).
    """
    metadata = metadata or {}
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise PolicyError(f"metadata value of {key!r} must be a string, got {type(value).__name__}")
    policy = metadata.get("policy")
    if policy is not None:
        policy = policy.strip()
        get_policy(policy, registry)
    deadline = metadata.get("deadline")
    providers = metadata.get("providers")
    weights = metadata.get("weights")
    max_cost = metadata.get("max_cost_usd")
    max_cost_usd = None if max_cost is None else _parse_number("max_cost_usd", max_cost)
    if max_cost_usd == 0:
        raise PolicyError("max_cost_usd must be above 0")
    tier = metadata.get("tier")
    if tier is not None and tier.strip() not in SERVICES:
        raise PolicyError(f"tier {tier!r} is not one of {', '.join(SERVICES)}")
    return Hints(
        policy=policy,
        deadline_s=None if deadline is None else parse_duration(deadline),
        providers=() if providers is None else _parse_providers(providers),
        weights={} if weights is None else _parse_weights(weights),
        max_cost_usd=max_cost_usd,
        tier=None if tier is None else tier.strip(),  # type: ignore[arg-type]
        extra={key: value for key, value in metadata.items() if key not in HINT_KEYS},
    )
