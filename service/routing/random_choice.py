"""`random`: any routable node, uniformly."""

from __future__ import annotations

import random
from collections.abc import Sequence

from service.node_state import NodeState
from service.routing.policy import Decision, Policy
from service.routing.request import RouteRequest


class RandomPolicy(Policy):
    name = "random"

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest, now: float) -> Decision:
        return Decision(random.choice(list(candidates)), "random", "random")
