"""`least_inflight`: the node with the fewest requests in flight from every
instance; ties spread at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from service.node_state import NodeState
from service.routing.policy import Decision, Policy
from service.routing.request import RouteRequest


class LeastInflightPolicy(Policy):
    name = "least_inflight"

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest, now: float) -> Decision:
        fewest = min(s.inflight for s in candidates)
        chosen = random.choice([s for s in candidates if s.inflight == fewest])
        return Decision(chosen, f"least_inflight inflight={fewest}", "least_inflight")
