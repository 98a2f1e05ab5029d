"""`round_robin`: each node in turn, in node-id order."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from service.node_state import NodeState
from service.routing.policy import Decision, Policy
from service.routing.request import RouteRequest


class RoundRobinPolicy(Policy):
    name = "round_robin"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest, now: float) -> Decision:
        ordered = sorted(candidates, key=lambda s: s.node_id)
        return Decision(ordered[next(self._counter) % len(ordered)], "round_robin", "round_robin")
