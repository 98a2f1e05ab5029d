"""The interface between the proxy and a routing policy.

The proxy asks `choose` for a node and gets a Decision back, a value. It then
tells the policy what happened to the request, by ticket, with times from the
proxy's clock: `sent`, then `answered` (the node accepted it: its status line
came and it is not retried elsewhere), `first_token` and `progress` for a
stream, `failed` when the attempt is abandoned (a connect error, or a status
retried on another node), and always `done` once at the end. The fleet view
tells it each node report (`report`) and each node gone (`forget`). A policy
keeps whatever it learns from these to itself; the proxy never reads it.

A request another worker of the same server routed reaches the policy as the
same events, its Decision rebuilt by `decided_elsewhere`
(service/routing/mirror.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from service.node_state import NodeState
from service.routing.request import RouteRequest


class Estimate(NamedTuple):  # a tuple: one is made per candidate per decision
    ttft: float  # seconds until the first token
    end: float  # seconds until the last token
    prefill: float  # seconds of the node's prefill this request adds
    cost: float  # what the load policy minimizes
    queued: bool = False  # it would wait for a batch slot


@dataclass(frozen=True)
class Decision:
    state: NodeState
    reason: str  # for X-NVLLM-Route and logs: the kind, then the figures
    kind: str  # the reason's kind alone, for metrics: affinity, load, tie, round_robin, ...
    estimate: Estimate | None = None
    memo: Any = None  # the policy's own: handed back with `sent`

    @property
    def node_id(self) -> str:
        return self.state.node_id


class Policy:
    """A routing policy: `choose` plus the events, which do nothing here."""

    name = "policy"

    def choose(self, candidates: Sequence[NodeState], request: RouteRequest, now: float) -> Decision:
        raise NotImplementedError

    def decided_elsewhere(self, state: NodeState, request: RouteRequest, estimate: Estimate | None) -> Decision:
        """The Decision `choose` would have handed back had it picked `state`
        for this request: another worker picked it, and `sent` follows."""
        return Decision(state, "sibling", "sibling", estimate)

    def sent(self, ticket: int, decision: Decision, request: RouteRequest, *, stream: bool, now: float) -> None:
        """The request is on its way to the decision's node."""

    def answered(self, ticket: int, now: float) -> None:
        """The node took it: its answer (or the stream's headers) came, and it
        is not retried elsewhere."""

    def first_token(self, ticket: int, now: float) -> None:
        """A stream's first token came."""

    def progress(self, ticket: int, tokens: int, now: float) -> None:
        """A stream has relayed `tokens` tokens so far."""

    def failed(self, ticket: int, now: float) -> None:
        """The attempt is abandoned before the client saw any of it."""

    def done(self, ticket: int, now: float) -> None:
        """The request is over, however it ended (after `failed` too)."""

    def report(self, node_id: str, running: int, waiting: int, kv_usage: float | None, now: float) -> None:
        """A node's load as it reported it (heartbeat, poll or in-band header)."""

    def forget(self, node_id: str) -> None:
        """The node left the fleet."""
