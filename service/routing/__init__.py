"""Routing: which routable node gets a request. One module per policy; the
proxy talks to a policy only through service.routing.policy.Policy."""

from __future__ import annotations

from typing import Any

from service.routing.least_inflight import LeastInflightPolicy
from service.routing.load import LoadPolicy
from service.routing.policy import Decision, Estimate, Policy
from service.routing.random_choice import RandomPolicy
from service.routing.request import RouteRequest
from service.routing.round_robin import RoundRobinPolicy

POLICIES: dict[str, type[Policy]] = {
    "load": LoadPolicy,
    "round_robin": RoundRobinPolicy,
    "random": RandomPolicy,
    "least_inflight": LeastInflightPolicy,
}

__all__ = ["POLICIES", "Decision", "Estimate", "Policy", "RouteRequest", "make_policy"]


def make_policy(name: str, **options: Any) -> Policy:
    """A policy by name (config.ROUTING_POLICIES); options go to `load` only."""
    if name == "load":
        return LoadPolicy(**options)
    return POLICIES[name]()
